"""Small, seeded members of today's classifier families, for tests at 64 px.

Each family comes with the Grad-CAM target the field recommends for it (the ``grad-cam``
package's documentation) and the reshape transform that package needs for tokens and
channels-last maps, so reportgen's default maps can be checked against it.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torchvision.models.convnext import CNBlockConfig

SIZE = 64
CLASSES = 5


@dataclass
class Family:
    name: str
    build: Callable[[], torch.nn.Module]
    target: Callable[[torch.nn.Module], torch.nn.Module]  # the recommended Grad-CAM target
    reshape: Callable[[torch.Tensor], torch.Tensor] | None = None  # the package's reshape_transform
    arch: str | None = None  # torchvision name, for the state_dict + --arch format
    module: str = ""  # a module path that must resolve to a tensor on every format


def _vit() -> torch.nn.Module:
    model = torchvision.models.VisionTransformer(
        image_size=SIZE, patch_size=8, num_layers=4, num_heads=4, hidden_dim=64, mlp_dim=128, num_classes=CLASSES
    )
    # torchvision starts the head at zero (every logit 0, every gradient 0): give it weights.
    torch.nn.init.normal_(model.heads.head.weight, std=0.5)
    return model


def _swin() -> torch.nn.Module:
    return torchvision.models.SwinTransformer(
        patch_size=[4, 4], embed_dim=32, depths=[2, 2], num_heads=[2, 4], window_size=[4, 4], num_classes=CLASSES
    )


def _convnext() -> torch.nn.Module:
    settings = [CNBlockConfig(32, 64, 2), CNBlockConfig(64, 128, 2), CNBlockConfig(128, None, 2)]
    return torchvision.models.convnext.ConvNeXt(settings, num_classes=CLASSES)


def _tokens_to_maps(t: torch.Tensor) -> torch.Tensor:
    side = int((t.shape[1] - 1) ** 0.5)
    return t[:, 1:, :].reshape(t.shape[0], side, side, t.shape[2]).permute(0, 3, 1, 2)


FAMILIES = [
    Family("vit", _vit, lambda m: m.encoder.layers[-1].ln_1, _tokens_to_maps, module="encoder.layers.encoder_layer_2"),
    Family("swin", _swin, lambda m: m.norm, lambda t: t.permute(0, 3, 1, 2), module="features.1"),
    Family("convnext", _convnext, lambda m: m.features[-1], module="features.3"),
    Family(
        "efficientnet",
        lambda: torchvision.models.efficientnet_b0(num_classes=CLASSES),
        lambda m: m.features[-1],
        arch="efficientnet_b0",
        module="features.6",
    ),
    Family(
        "mobilenet_v3",
        lambda: torchvision.models.mobilenet_v3_small(num_classes=CLASSES),
        lambda m: m.features[-1],
        arch="mobilenet_v3_small",
        module="features.5",
    ),
    Family(
        "regnet",
        lambda: torchvision.models.regnet_y_400mf(num_classes=CLASSES),
        lambda m: m.trunk_output[-1],
        arch="regnet_y_400mf",
        module="trunk_output.block3",
    ),
    Family(
        "resnet",
        lambda: torchvision.models.resnet18(num_classes=CLASSES),
        lambda m: m.layer4[-1],
        arch="resnet18",
        module="layer4",
    ),
]


def build(family: Family) -> torch.nn.Module:
    torch.manual_seed(0)
    return family.build().eval()


SUFFIX = {"onnx": ".onnx", "onnx-dynamo": ".onnx", "torchscript": ".ts", "torch.export": ".pt2", "state_dict": ".pth"}


def export(model: torch.nn.Module, fmt: str, folder: Path, arch: str | None = None) -> Path:
    """Write ``model`` in format ``fmt`` (``onnx`` by the TorchScript-based exporter,
    ``onnx-dynamo`` by the ``torch.export``-based one, ``torchscript``, ``torch.export``,
    ``state_dict``) into ``folder`` and return the file."""
    path = folder / f"model{SUFFIX[fmt]}"
    example = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if fmt == "onnx":
            torch.onnx.export(
                model,
                (example,),
                str(path),
                input_names=["input"],
                output_names=["logits"],
                dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
                dynamo=False,
                opset_version=17,
            )
        elif fmt == "onnx-dynamo":
            batch = torch.export.Dim("batch", min=1, max=1024)
            torch.onnx.export(
                model, (example,), str(path), dynamo=True, dynamic_shapes=({0: batch},), input_names=["input"]
            )
        elif fmt == "torchscript":
            # Traced with gradients on, as a training script would: under no_grad, torch's
            # attention takes an inference-only fast path that has no derivative.
            torch.jit.save(torch.jit.trace(model, example, check_trace=False), str(path))
        elif fmt == "torch.export":
            batch = torch.export.Dim("batch", min=1, max=1024)
            program = torch.export.export(model, (example,), dynamic_shapes=({0: batch},))
            torch.export.save(program, str(path))
        elif fmt == "state_dict":
            assert arch is not None
            torch.save(model.state_dict(), str(path))
        else:
            raise ValueError(fmt)
    return path
