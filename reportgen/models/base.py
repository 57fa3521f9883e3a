"""The one interface over every model runtime, and the layer choices shared by all.

A *layer* here is a tensor of the model's graph (not a module): a tap on the output of
one node.  Each adapter lists the tensors that depend on the input, with their shapes
for the chosen input size; :func:`default_layers` and :func:`last_spatial_layer` pick
from that list by shape alone, so an ONNX export and a TorchScript export of the same
network pick the same tensors.

Two pseudo-layers exist in every model: :data:`INPUT_LAYER` (the input pixels,
area-downsampled to at most 16x16, like the ``data`` layer of the MATLAB examples) and
:data:`LOGITS_LAYER` (the model's output).
"""

from __future__ import annotations

import json
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

INPUT_LAYER = "input"
LOGITS_LAYER = "logits"
INPUT_GRID = 16  # side of the downsampled pixel layer


@dataclass(frozen=True)
class LayerInfo:
    """One tensor of the graph that can be tapped.

    ``shape`` is per image (batch dimension removed): ``(C, H, W)`` for feature maps,
    ``(L, D)`` for token sequences, ``(D,)`` for vectors.
    """

    name: str
    shape: tuple[int, ...]
    op: str = ""

    @property
    def spatial(self) -> bool:
        return len(self.shape) == 3 and self.shape[1] * self.shape[2] > 1

    @property
    def dim(self) -> int:
        """Length of the pooled feature vector (maps and sequences are averaged)."""
        if len(self.shape) == 3:
            return int(self.shape[0])
        return int(self.shape[-1]) if self.shape else 1

    def describe(self) -> str:
        return "x".join(str(s) for s in self.shape)


def input_layer_info(channels: int, size: tuple[int, int]) -> LayerInfo:
    h, w = (min(INPUT_GRID, size[0]), min(INPUT_GRID, size[1]))
    return LayerInfo(INPUT_LAYER, (channels * h * w,), f"pixels, {channels}x{h}x{w} area-averaged")


def downsample_pixels(pixels: np.ndarray, channels_last: bool = False) -> np.ndarray:
    """Area-average an input batch to at most 16x16 and flatten it: the pixel layer."""
    x = pixels.transpose(0, 3, 1, 2) if channels_last else pixels
    n, c, h, w = x.shape
    gh, gw = min(INPUT_GRID, h), min(INPUT_GRID, w)
    # Bin edges that cover every pixel exactly once, even when sides don't divide evenly.
    rows = np.linspace(0, h, gh + 1).astype(int)
    cols = np.linspace(0, w, gw + 1).astype(int)
    summed = np.add.reduceat(np.add.reduceat(x, rows[:-1], axis=2), cols[:-1], axis=3)
    counts = np.outer(np.diff(rows), np.diff(cols)).astype(np.float32)
    return (summed / counts).reshape(n, c * gh * gw).astype(np.float32)


def run_in_batches_of(
    fn: Callable[[list[np.ndarray]], list[np.ndarray]],
    arrays: list[np.ndarray],
    batch: int | None,
) -> list[np.ndarray]:
    """Call ``fn`` on row-aligned ``arrays``; for a model hard-wired to batch size ``batch``,
    in chunks of exactly that size, the last one zero-padded and the padding cut off."""
    n = arrays[0].shape[0]
    if not batch or n == batch:
        return fn(arrays)
    pieces: list[list[np.ndarray]] = []
    for start in range(0, n, batch):
        part = [a[start : start + batch] for a in arrays]
        m = part[0].shape[0]
        if m < batch:
            part = [np.concatenate([a, np.zeros((batch - m, *a.shape[1:]), a.dtype)]) for a in part]
        pieces.append([out[:m] for out in fn(part)])
    return [np.concatenate([p[j] for p in pieces]) for j in range(len(pieces[0]))]


def default_layers(layers: list[LayerInfo], num_outputs: int) -> list[str]:
    """The layers audited when the user names none.

    The input, the end of each spatial stage (the last tensor before the resolution
    changes), the penultimate vector (the last non-spatial tensor before the output
    whose length differs from the number of outputs) and the logits.
    """
    chosen = [INPUT_LAYER]
    spatial = [layer for layer in layers if layer.spatial]
    for i, layer in enumerate(spatial):
        following = spatial[i + 1] if i + 1 < len(spatial) else None
        if following is None or following.shape[1:] != layer.shape[1:]:
            chosen.append(layer.name)
    penultimate = penultimate_layer(layers, num_outputs)
    if penultimate is not None and penultimate not in chosen:
        chosen.append(penultimate)
    chosen.append(LOGITS_LAYER)
    return chosen


def penultimate_layer(layers: list[LayerInfo], num_outputs: int) -> str | None:
    last_spatial = max((i for i, layer in enumerate(layers) if layer.spatial), default=-1)
    for layer in reversed(layers[last_spatial + 1 :]):
        if layer.dim != num_outputs and layer.dim > 1:
            return layer.name
    return None


def last_spatial_layer(layers: list[LayerInfo]) -> str | None:
    """The last tensor with spatial extent: Grad-CAM's default target (for a CNN, the
    input of its global pooling)."""
    spatial = [layer for layer in layers if layer.spatial]
    return spatial[-1].name if spatial else None


@dataclass
class EmbeddedMetadata:
    """Optional hints a model may carry: ONNX ``metadata_props['reportgen']`` or a
    TorchScript extra file ``reportgen.json``, holding a JSON object with any of
    ``classes`` (list of names), ``input_size`` ([H, W]), ``mean``, ``std``.

    The JSON comes from the model file and is untrusted: anything of the wrong type is
    dropped, never executed or trusted for more than these four values.
    """

    classes: list[str] | None = None
    input_size: tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None

    @classmethod
    def parse(cls, text: str | bytes | None) -> EmbeddedMetadata:
        if not text:
            return cls()
        try:
            raw = json.loads(text)
        except (ValueError, UnicodeDecodeError):
            return cls()
        if not isinstance(raw, dict):
            return cls()
        out = cls()
        classes = raw.get("classes")
        if isinstance(classes, list) and classes and all(isinstance(c, str) for c in classes):
            out.classes = [c[:200] for c in classes]
        size = raw.get("input_size")
        if isinstance(size, list) and len(size) == 2 and all(isinstance(s, int) and 0 < s <= 8192 for s in size):
            out.input_size = (size[0], size[1])
        for key in ("mean", "std"):
            vals = raw.get(key)
            if (
                isinstance(vals, list)
                and len(vals) in (1, 3)
                and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals)
            ):
                setattr(out, key, tuple(float(v) for v in vals))
        if out.std is not None and any(v <= 0 for v in out.std):
            out.std = None
        return out


@dataclass
class ModelInfo:
    """What the report says about the model file."""

    path: Path
    format: str  # "onnx", "torchscript", "torch.export", "state_dict", "pickle"
    runtime: str  # "onnxruntime 1.x (CPUExecutionProvider)", "torch 2.x"
    device: str
    channels: int
    channels_last: bool
    input_size_hint: tuple[int, int] | None  # (H, W) read from the model, or its usual size
    fixed_batch: int | None  # a batch size the model is hard-wired to, if any
    static_size: bool = False  # True when the graph accepts only input_size_hint
    embedded: EmbeddedMetadata = field(default_factory=EmbeddedMetadata)
    properties: dict[str, str] = field(default_factory=dict)  # e.g. ONNX metadata, opset


class ModelAdapter(ABC):
    """A loaded model: lists its tensors, runs batches, and splits itself for Grad-CAM.

    Life cycle: the loader builds the adapter; the pipeline resolves the input size and
    calls :meth:`prepare` once; after that :meth:`layers`, :meth:`extract` and the CAM
    methods may be used.
    """

    info: ModelInfo
    #: The tensor of class scores before the graph's final softmax (or log-softmax), when
    #: the output is one; None when the output is already the scores (or no softmax is
    #: found).  Grad-CAM and feature visualisation explain this tensor, never the
    #: probability: a saturated softmax has no gradient, so the images a model is surest
    #: of would get blank maps.  Set by :meth:`prepare`.
    score_layer: str | None = None

    @abstractmethod
    def prepare(self, size: tuple[int, int]) -> None:
        """Fix the input size and discover the tapped tensors and their shapes."""

    @abstractmethod
    def layers(self) -> list[LayerInfo]:
        """Candidate tensors in execution order (the pseudo-layers excluded)."""

    @property
    @abstractmethod
    def num_outputs(self) -> int:
        """Length of the output vector."""

    @abstractmethod
    def extract(self, pixels: np.ndarray, layers: list[str]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Run one batch; return the outputs (N, K) and the pooled features of ``layers``
        (names from :meth:`layers`; the pseudo-layers are handled by the caller)."""

    # --- Grad-CAM support: a model split at one tensor -------------------------------

    @abstractmethod
    def split(self, layer: str) -> SplitModel:
        """The model cut at tensor ``layer``: a body (input -> layer) and a head."""

    def differentiable(self) -> Differentiable:
        """Gradients of any unit with respect to the input (feature visualisation).

        Raises ``UserError`` when the model cannot be differentiated.
        """
        raise NotImplementedError

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release runtime resources."""


class Differentiable(ABC):
    """A model that gives the gradient of one unit per image with respect to its input.

    A *unit* is a channel of a layer (its spatial mean, or its spatial maximum with
    ``reduce="max"``) or, for :data:`LOGITS_LAYER`, one output.  ``guided`` replaces every
    ReLU's backward pass by guided backpropagation's.
    """

    route: str  # how the gradient is obtained, for the report

    @abstractmethod
    def gradient(
        self, pixels: np.ndarray, layer: str, units: np.ndarray, *, reduce: str = "mean", guided: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        """(values (N,), d value / d pixels (same shape as ``pixels``))."""


class SplitModel(ABC):
    """A model cut at one tensor A: ``body(x) -> (A, rest)``, ``head(A, rest) -> scores``.

    The head ends at the class scores the maps explain: the model's output, or the logits
    before its final softmax where it has one (:attr:`ModelAdapter.score_layer`).

    ``rest`` holds whatever else the head needs from the body (skip connections taken
    before A); it is opaque to the caller and must be indexed with :meth:`take`.
    """

    layer: str
    differentiable: bool  # True when :meth:`head_gradient` is exact (autograd)

    @abstractmethod
    def body(self, pixels: np.ndarray) -> tuple[np.ndarray, Any]:
        """Run input -> (A as float32 array (N, C, H, W), rest)."""

    @abstractmethod
    def head(self, activations: np.ndarray, rest: Any) -> np.ndarray:
        """Run (A, rest) -> class scores (N, K); ``rest`` must match ``activations`` in N."""

    @abstractmethod
    def take(self, rest: Any, index: np.ndarray) -> Any:
        """Select (and repeat) rows of ``rest``, as ``activations[index]`` does."""

    def head_gradient(self, activations: np.ndarray, rest: Any, targets: np.ndarray) -> np.ndarray:
        """d output[i, targets[i]] / dA for each row, by autograd; only when differentiable."""
        raise NotImplementedError
