"""Today's classifier families on every format: layouts, default layers, the default
Grad-CAM target against the ``grad-cam`` package's recommended one, module names.

Small seeded members of each family at 64 px (see ``architectures.py``); each format is
written by torch's own exporters, as a user would.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from architectures import FAMILIES, SIZE, Family, build, export
from conftest import assert_no_traceback, load_json, make_image, run_cli
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from reportgen.analyses.cam import compute_cam
from reportgen.errors import UserError
from reportgen.models import default_layers, last_spatial_layer, load_model
from reportgen.models.base import INPUT_LAYER, LOGITS_LAYER

FORMATS = ["onnx", "onnx-dynamo", "torchscript", "torch.export", "state_dict"]
# What torch itself cannot do with these files: reportgen must say so in one line.
UNSUPPORTED: dict[tuple[str, str], str] = {}


def _pixels() -> np.ndarray:
    return np.random.default_rng(0).standard_normal((3, 3, SIZE, SIZE)).astype(np.float32)


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return min(float(np.corrcoef(u.ravel(), v.ravel())[0, 1]) for u, v in zip(a, b, strict=True))


@pytest.fixture(scope="module")
def references() -> dict[str, tuple[torch.nn.Module, np.ndarray, np.ndarray]]:
    """Per family: the eager model, the explained classes, and the grad-cam package's maps
    at the recommended target (with its reshape transform)."""
    x = _pixels()
    out = {}
    for family in FAMILIES:
        model = build(family)
        with torch.no_grad():
            targets = model(torch.from_numpy(x)).argmax(1).numpy()
        with GradCAM(model=model, target_layers=[family.target(model)], reshape_transform=family.reshape) as cam:
            maps = cam(input_tensor=torch.from_numpy(x), targets=[ClassifierOutputTarget(int(t)) for t in targets])
        out[family.name] = (model, targets, maps)
    return out


CASES = [(f, fmt) for f in FAMILIES for fmt in FORMATS if fmt != "state_dict" or f.arch]


@pytest.mark.slow
@pytest.mark.parametrize(("family", "fmt"), CASES, ids=[f"{f.name}-{fmt}" for f, fmt in CASES])
def test_family_on_format(family: Family, fmt: str, references: dict, tmp_path: Path) -> None:
    model, targets, reference = references[family.name]
    path = export(model, fmt, tmp_path, family.arch)
    adapter = load_model(path, device="cpu", arch=family.arch if fmt == "state_dict" else None)
    if (family.name, fmt) in UNSUPPORTED:
        with pytest.raises(UserError, match=UNSUPPORTED[(family.name, fmt)]) as info:
            adapter.prepare((SIZE, SIZE))
        assert "\n" not in str(info.value)
        return
    adapter.prepare((SIZE, SIZE))
    layers = adapter.layers()
    order = {layer.name: i for i, layer in enumerate(layers)}
    chosen = default_layers(layers, adapter.num_outputs)
    assert chosen[0] == INPUT_LAYER and chosen[-1] == LOGITS_LAYER
    assert 4 <= len(chosen) <= 10, chosen
    inner = [order[name] for name in chosen[1:-1]]
    assert inner == sorted(inner)
    # Attention internals are never defaults; every default has a recognised layout.
    by_name = {layer.name: layer for layer in layers}
    assert all(by_name[name].layout for name in chosen[1:-1])
    target = last_spatial_layer(layers)
    assert target is not None
    ours = compute_cam("gradcam", adapter.split(target), _pixels(), targets, (SIZE, SIZE)).maps
    assert _corr(ours, reference) >= (0.98 if fmt.startswith("onnx") else 0.99)
    resolved = adapter.resolve(family.module)
    assert resolved != family.module and resolved in by_name
    assert by_name[resolved].module.startswith(family.module)


def test_vit_layers_and_pooling(references: dict, tmp_path: Path) -> None:
    """A ViT's defaults are its block outputs and its class token; tokens are pooled by the
    class token and explained on their 8 x 8 grid without it."""
    model = references["vit"][0]
    adapter = load_model(export(model, "onnx", tmp_path), device="cpu")
    adapter.prepare((SIZE, SIZE))
    layers = {layer.name: layer for layer in adapter.layers()}
    chosen = default_layers(adapter.layers(), adapter.num_outputs)
    blocks = [layers[n] for n in chosen[1:-2]]
    assert [b.module for b in blocks] == [f"encoder.layers.encoder_layer_{i}" for i in range(4)]
    assert all(b.layout == "tokens" and b.prefix == 1 and b.grid == (8, 8) for b in blocks)
    assert layers[chosen[-2]].layout == "vector" and layers[chosen[-2]].shape == (64,)
    target = layers[last_spatial_layer(adapter.layers())]
    assert target.module == "encoder.layers.encoder_layer_3.ln_1"
    # Pooling: the class token of the block output, checked against the eager model.
    x = _pixels()
    _, feats = adapter.extract(x, [chosen[1]])
    captured = {}
    hook = model.encoder.layers[0].register_forward_hook(lambda m, i, o: captured.setdefault("out", o))
    with torch.no_grad():
        model(torch.from_numpy(x))
    hook.remove()
    assert np.allclose(feats[chosen[1]], captured["out"][:, 0].numpy(), atol=1e-4)


def test_swin_onnx_audit_completes(references: dict, tmp_path: Path) -> None:
    """The Swin crash: batch-dependent tables, channels-last stages."""
    model = references["swin"][0]
    path = export(model, "onnx", tmp_path)
    images = tmp_path / "images"
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        for i in range(6):
            make_image(images / c / f"{i}.png", (SIZE, SIZE), tuple(int(v) for v in rng.integers(0, 255, 3)))
    out = tmp_path / "out" / "report.html"
    result = run_cli("audit", path, images, "-o", out, "-q", "--size", str(SIZE), "--no-tsne", "--batch-size", "5")
    assert_no_traceback(result)
    assert result.code == 0, result.err
    report = load_json(out)
    layers = report["layers"]
    assert len(layers) <= 10
    # Stage 1 ends channels-last; the last stage ends in the permute back to (C, H, W).
    assert [layer["layout"] for layer in layers[1:-2]] == ["hwc", "chw"]
    # Each stage keeps a grid of means (channels x cells <= 1024, at most its own size),
    # whatever its channel axis.
    for layer in layers[1:-2]:
        shape = layer["shape"]
        channels, (h, w) = (shape[2], shape[:2]) if layer["layout"] == "hwc" else (shape[0], shape[1:])
        side = min(8, int((1024 / channels) ** 0.5))
        assert layer["pooling"] == f"{min(side, h)}x{min(side, w)} grid of map means", layer
        assert layer["dim"] == channels * min(side, h) * min(side, w)
    assert report["cam"]["layer"] == "/permute/Transpose_output_0"
    # The layer names the user knows work as --layers and --cam-layer.
    again = run_cli(
        "audit", path, images, "-o", tmp_path / "o2" / "r.html", "-q", "--size", str(SIZE), "--no-tsne",
        "--layers", "features.1,norm", "--cam-layer", "features.1", "--gallery-size", "1", "--channels", "0",
    )  # fmt: skip
    assert again.code == 0, again.err
    second = load_json(tmp_path / "o2" / "r.json")
    assert [layer["module"] for layer in second["layers"]] == ["features.1.1", "norm"]
    assert second["cam"]["layer"] == second["layers"][0]["name"]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["resnet", "swin", "vit"])
def test_module_name_is_the_same_tensor_on_onnx_and_torchscript(name: str, references: dict, tmp_path: Path) -> None:
    """One module path names the same tensor in the ONNX and the TorchScript export: the
    pooled features there agree. Swin's TorchScript goes through the size-folding route."""
    family = next(f for f in FAMILIES if f.name == name)
    model = references[name][0]
    x = _pixels()
    features = []
    for fmt in ("onnx", "torchscript"):
        folder = tmp_path / fmt
        folder.mkdir()
        adapter = load_model(export(model, fmt, folder), device="cpu")
        adapter.prepare((SIZE, SIZE))
        layer = adapter.resolve(family.module)
        _, feats = adapter.extract(x, [layer])
        features.append(feats[layer])
    assert features[0].shape == features[1].shape
    assert np.allclose(features[0], features[1], atol=1e-4), np.abs(features[0] - features[1]).max()
