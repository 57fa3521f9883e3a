"""Model loading: one entry point, one interface (:class:`ModelAdapter`) for every format.

torch and onnxruntime are imported only inside their adapters, and only when a model of
that kind is loaded.
"""

from __future__ import annotations

from pathlib import Path

from reportgen.errors import UserError
from reportgen.models.base import (
    INPUT_LAYER,
    LOGITS_LAYER,
    LayerInfo,
    ModelAdapter,
    ModelInfo,
    SplitModel,
    default_layers,
    last_spatial_layer,
)

__all__ = [
    "INPUT_LAYER",
    "LOGITS_LAYER",
    "LayerInfo",
    "ModelAdapter",
    "ModelInfo",
    "SplitModel",
    "default_layers",
    "detect_format",
    "last_spatial_layer",
    "load_model",
]


def _looks_like_onnx(path: Path) -> bool:
    try:
        with open(path, "rb") as fh:
            head = fh.read(64)
    except OSError:
        return False
    # An ONNX file is a protobuf ModelProto; field 1 (ir_version, varint) comes first.
    return len(head) > 2 and head[0] == 0x08


def detect_format(path: Path) -> str:
    """``onnx``, ``torchscript``, ``torch.export``, ``torch.save`` or ``legacy``, from the
    file's content (the extension only decides for ``.onnx``)."""
    if path.suffix.lower() == ".onnx":
        return "onnx"
    try:
        from reportgen.models.torch_adapter import sniff_torch_format
    except ImportError:  # torch not installed: only ONNX can be read
        sniffed = None
    else:
        sniffed = sniff_torch_format(path)
    if sniffed:
        return sniffed
    if _looks_like_onnx(path):
        return "onnx"
    raise UserError(
        f"cannot tell what kind of model {path.name} is: expected ONNX (.onnx), TorchScript, "
        "a torch.export program (.pt2) or a torch.save'd state_dict"
    )


def load_model(
    path: str | Path,
    *,
    device: str = "auto",
    arch: str | None = None,
    trust_pickle: bool = False,
) -> ModelAdapter:
    """Open a model file of any supported format.

    Parameters
    ----------
    path
        ONNX, TorchScript, ``torch.export`` (.pt2) or ``torch.save`` file.
    device
        ``auto`` (CUDA when the runtime sees one), ``cpu`` or ``cuda``.
    arch
        torchvision architecture name, needed for a bare state_dict.
    trust_pickle
        Allow unpickling a whole ``nn.Module``; never done without it.
    """
    path = Path(path)
    if not path.exists():
        raise UserError(f"model file not found: {path}")
    if not path.is_file():
        raise UserError(f"model path is not a file: {path}")
    fmt = detect_format(path)
    if fmt == "onnx":
        from reportgen.models.onnx_adapter import load_onnx_model

        return load_onnx_model(path, device=device)
    from reportgen.models.torch_adapter import load_torch_model

    return load_torch_model(path, fmt, arch=arch, trust_pickle=trust_pickle, device=device)
