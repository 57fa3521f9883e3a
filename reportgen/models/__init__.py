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
    POOL_VALUES,
    Differentiable,
    LayerInfo,
    ModelAdapter,
    ModelInfo,
    SplitModel,
    channel_means,
    default_layers,
    downsample_pixels,
    graph_gap,
    input_layer_info,
    last_spatial_layer,
    missing_layer_message,
    pool_cells,
    pooling,
    with_cells,
)
from reportgen.models.cuda_knn import cuda_ready, knn_search_cuda
from reportgen.models.hub import HubHints, apply_hub_hints, hub_hints
from reportgen.models.layouts import CHW, HWC, TOKENS, VECTOR

__all__ = [
    "CHW",
    "HWC",
    "INPUT_LAYER",
    "LOGITS_LAYER",
    "POOL_VALUES",
    "TOKENS",
    "VECTOR",
    "Differentiable",
    "HubHints",
    "LayerInfo",
    "ModelAdapter",
    "ModelHandle",
    "ModelInfo",
    "SplitModel",
    "channel_means",
    "cuda_ready",
    "default_cam_layer",
    "default_layers",
    "detect_format",
    "downsample_pixels",
    "graph_gap",
    "hub_hints",
    "input_layer_info",
    "knn_search_cuda",
    "last_spatial_layer",
    "load_model",
    "missing_layer_message",
    "pool_cells",
    "pooling",
    "resolve_layers",
    "with_cells",
]


def default_cam_layer(adapter: ModelAdapter) -> str | None:
    """The tensor activation maps explain unless told otherwise (``--cam-layer``,
    ``--layer``): the last one with spatial extent that is a feature map or a token grid
    (for a CNN, the input of its global pooling; for a ViT, the last block's attention
    input). The one rule every map of reportgen follows; None when there is none, or when
    the graph's layouts are lost on the way (``graph_gap``): then the last labelled map
    would be an early layer, not the one the family's maps explain."""
    layers = adapter.layers()
    return None if graph_gap(layers) else last_spatial_layer(layers)


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
    from reportgen.models.torch_adapter import sniff_torch_format

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

        adapter: ModelAdapter = load_onnx_model(path, device=device)
    else:
        from reportgen.models.torch_adapter import load_torch_model

        adapter = load_torch_model(path, fmt, arch=arch, trust_pickle=trust_pickle, device=device)
    apply_hub_hints(adapter.info, hub_hints(path))
    return adapter


class ModelHandle:
    """Loads and prepares the model on first use, so a cached run may never load it."""

    def __init__(self, path: Path, *, device: str = "auto", arch: str | None = None, trust_pickle: bool = False):
        self.path = path
        self.options = {"device": device, "arch": arch, "trust_pickle": trust_pickle}
        self._adapter: ModelAdapter | None = None
        self.size: tuple[int, int] | None = None

    @property
    def loaded(self) -> bool:
        return self._adapter is not None

    def open(self) -> ModelAdapter:
        if self._adapter is None:
            self._adapter = load_model(self.path, **self.options)
        return self._adapter

    def prepared(self, size: tuple[int, int]) -> ModelAdapter:
        adapter = self.open()
        if self.size != size:
            adapter.prepare(size)
            self.size = size
        return adapter


def resolve_layers(
    requested: list[str] | None,
    adapter: ModelAdapter,
    channels: int,
    size: tuple[int, int],
    pool_values: int = POOL_VALUES,
) -> list[LayerInfo]:
    """The audited layers in graph order, the pixel layer first and the logits last, each
    spatial one with the grid it is pooled to at ``pool_values`` (0: the global mean);
    ``channels`` and ``size`` are the model input's (the pixel layer's)."""
    available = adapter.layers()
    by_name = {layer.name: layer for layer in available}
    names = [adapter.resolve(n) for n in requested] if requested else default_layers(available, adapter.num_outputs)
    unknown = [n for n in names if n not in by_name and n not in (INPUT_LAYER, LOGITS_LAYER)]
    if unknown:
        raise UserError(missing_layer_message(unknown[0], available))
    order = {layer.name: i for i, layer in enumerate(available)}
    chosen: list[LayerInfo] = []
    if INPUT_LAYER in names:
        chosen.append(input_layer_info(channels, size))
    chosen += with_cells(
        [by_name[n] for n in sorted({n for n in names if n in by_name}, key=order.__getitem__)], pool_values
    )
    if LOGITS_LAYER in names:
        chosen.append(LayerInfo(LOGITS_LAYER, (adapter.num_outputs,), "output"))
    return chosen
