"""The benchmark's own workload: a seeded ResNet-18 and seeded synthetic JPEGs.

Everything is generated here (no download): a torchvision ResNet-18 with seeded random
weights and 10 outputs, exported to ONNX and TorchScript, and N images of about
400x300 pixels in 10 class folders -- shapes of a class-dependent kind and colour on
gradients and clutter, saved as JPEG.
"""

from __future__ import annotations

import io
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

CLASSES = [f"class_{i:02d}" for i in range(10)]
SIZE = (400, 300)


def build_models(folder: Path, seed: int = 0) -> dict[str, Path]:
    """ResNet-18 (10 outputs, seeded weights) as ONNX and TorchScript; reused if present."""
    import torch
    import torchvision

    folder.mkdir(parents=True, exist_ok=True)
    paths = {
        "onnx": folder / "resnet18.onnx",
        "torchscript": folder / "resnet18.ts",
        "state_dict": folder / "resnet18.pth",
    }
    if all(p.exists() for p in paths.values()):
        return paths
    torch.manual_seed(seed)
    model = torchvision.models.resnet18(num_classes=10).eval()
    example = torch.zeros(2, 3, 224, 224)
    torch.save(model.state_dict(), paths["state_dict"])
    _export_files(model, example, paths["onnx"], paths["torchscript"])
    return paths


def build_resnet50(folder: Path, seed: int = 0) -> Path:
    """ResNet-50 (10 outputs, seeded weights) as traced TorchScript; reused if present."""
    import torch
    import torchvision

    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "resnet50.ts"
    if not path.exists():
        torch.manual_seed(seed)
        model = torchvision.models.resnet50(num_classes=10).eval()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.jit.save(torch.jit.trace(model, torch.zeros(2, 3, 224, 224), check_trace=False), str(path))
    return path


def _export_files(model: Any, example: Any, onnx_path: Path, ts_path: Path) -> None:
    """ONNX (opset 17, TorchScript-based exporter, dynamic batch) and traced TorchScript."""
    import torch

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(model, example, check_trace=False), str(ts_path))
        torch.onnx.export(
            model,
            (example,),
            str(onnx_path),
            dynamo=False,
            input_names=["input"],
            output_names=["logits"],
            dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
            opset_version=17,
        )


def _image(cls: int, rng: np.random.Generator) -> Image.Image:
    w, h = SIZE
    c0, c1 = rng.uniform(30, 225, 3), rng.uniform(30, 225, 3)
    t = np.linspace(0, 1, w)[None, :] * 0.6 + np.linspace(0, 1, h)[:, None] * 0.4
    bg = c0 * (1 - t[..., None]) + c1 * t[..., None] + rng.normal(0, 8, (h, w, 3))
    img = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(img)
    for _ in range(rng.integers(3, 8)):
        draw.line(
            [tuple(rng.uniform(0, w, 2)), tuple(rng.uniform(0, h, 2))],
            fill=tuple(int(v) for v in rng.uniform(0, 255, 3)),
            width=2,
        )
    # The class: a polygon with (cls % 5) + 3 corners, in a class-tinted colour.
    sides = cls % 5 + 3
    cx, cy, r = rng.uniform(120, 280), rng.uniform(90, 210), rng.uniform(45, 80)
    angle = rng.uniform(0, 2 * math.pi)
    pts = [
        (cx + r * math.cos(angle + k * 2 * math.pi / sides), cy + r * math.sin(angle + k * 2 * math.pi / sides))
        for k in range(sides)
    ]
    tint = np.array([(cls * 53) % 255, (cls * 97) % 255, (cls * 151) % 255], float)
    draw.polygon(pts, fill=tuple(int(v) for v in np.clip(tint + rng.normal(0, 25, 3), 0, 255)))
    return img.filter(ImageFilter.GaussianBlur(0.7))


def build_images(folder: Path, n: int, seed: int = 0) -> Path:
    """``n`` JPEGs in 10 class folders (reused when the folder already holds them)."""
    marker = folder / f".complete-{n}-{seed}"
    if marker.exists():
        return folder
    rng = np.random.default_rng(seed)
    for name in CLASSES:
        (folder / name).mkdir(parents=True, exist_ok=True)
    for i in range(n):
        cls = i % len(CLASSES)
        buf = io.BytesIO()
        _image(cls, rng).save(buf, "JPEG", quality=90)
        (folder / CLASSES[cls] / f"img_{i:06d}.jpg").write_bytes(buf.getvalue())
    marker.write_text("")
    return folder


def synthetic_features(n: int, dim: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Clustered, non-negative (ReLU-like) float32 features and their labels."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    centres = rng.standard_normal((10, dim)) * 2.0
    x = np.maximum(centres[labels] + rng.standard_normal((n, dim)), 0).astype(np.float32)
    return x, labels


def manifold_features(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Rows on a curved 6-d sheet lifted into ``dim`` dims, with a little noise: features
    of low intrinsic dimension, as a network's are (isotropic noise in every dimension
    would make every neighbour list arbitrary)."""
    rng = np.random.default_rng(seed)
    latent = rng.uniform(-1, 1, (n, 6))
    lift = rng.standard_normal((12, dim)).astype(np.float32)
    out = np.empty((n, dim), np.float32)
    for s in range(0, n, 65536):
        part = latent[s : s + 65536]
        block = np.concatenate([part, np.sin(2.5 * part)], axis=1).astype(np.float32) @ lift
        out[s : s + 65536] = block + 0.01 * rng.standard_normal(block.shape).astype(np.float32)
    return out


def build_modern_models(folder: Path, quick: bool, seed: int = 0) -> dict[str, dict[str, Path]]:
    """ViT-B/16 and ConvNeXt-T (10 outputs, seeded random weights) as ONNX and TorchScript,
    at 224 px; ``quick`` builds small members of the two families at 64 px instead.  Each
    entry also holds ``eager``: the ``torch.save``'d module the grad-cam package runs."""
    import torch
    import torchvision
    from torchvision.models.convnext import CNBlockConfig

    folder.mkdir(parents=True, exist_ok=True)
    size = 64 if quick else 224
    builders = {
        "vit_b_16": lambda: (
            torchvision.models.VisionTransformer(
                image_size=size, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32, mlp_dim=64, num_classes=10
            )
            if quick
            else torchvision.models.vit_b_16(num_classes=10)
        ),
        "convnext_tiny": lambda: (
            torchvision.models.convnext.ConvNeXt([CNBlockConfig(16, 32, 1), CNBlockConfig(32, None, 1)], num_classes=10)
            if quick
            else torchvision.models.convnext_tiny(num_classes=10)
        ),
    }
    out: dict[str, dict[str, Path]] = {}
    for name, make in builders.items():
        paths = {k: folder / f"{name}.{k}" for k in ("onnx", "ts", "eager")}
        out[name] = {"onnx": paths["onnx"], "torchscript": paths["ts"], "eager": paths["eager"]}
        if all(p.exists() for p in paths.values()):
            continue
        torch.manual_seed(seed)
        model = make().eval()
        if name == "vit_b_16":  # torchvision starts the head at zero: every gradient would be 0
            torch.nn.init.normal_(model.heads.head.weight, std=0.05)
        example = torch.zeros(2, 3, size, size)
        torch.save(model, paths["eager"])
        _export_files(model, example, paths["onnx"], paths["ts"])
    return out
