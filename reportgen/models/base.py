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

import difflib
import json
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from reportgen.models.layouts import (
    CHW,
    HWC,
    TOKENS,
    VECTOR,
    GraphStep,
    attention_entries,
    attention_inputs,
    infer_layouts,
    residual_test,
)
from reportgen.util import ROW_BLOCK, release

INPUT_LAYER = "input"
LOGITS_LAYER = "logits"
INPUT_GRID = 16  # side of the downsampled pixel layer
# Values per image a spatial layer keeps (channels x grid cells).  A global mean throws
# away where things are, which early layers mostly encode (the pixel layer keeps 16x16 for
# the same reason); about a thousand values keep the layout of a 16-channel layer at 8x8
# and of a 64-channel layer at 4x4, while exact kNN over them costs what a 1024-d
# feature vector costs.  A layer with more than a quarter of this many channels has room
# for one cell only: it keeps its global mean, as a CNN's head reads its last stage.
POOL_VALUES = 1024
MAX_CELLS = 8  # a finer grid than 8x8 adds pixels' detail, not layout


@dataclass(frozen=True)
class LayerInfo:
    """One tensor of the graph that can be tapped.

    ``shape`` is per image (batch dimension removed).  ``layout`` says what its axes mean,
    as recognised from the graph (see ``models/layouts.py``): ``chw`` (C, H, W), ``hwc``
    (H, W, C), ``tokens`` (T, C) with ``prefix`` tokens (class, distillation, register)
    before the patch tokens of an (h, w) ``grid``, ``vector`` (C,), or "" when unknown
    (attention internals and the like: never a default layer or Grad-CAM target).
    ``module`` is the module path the tensor belongs to (``layer4.1``), where known.
    ``role`` marks the tensors :func:`default_layers` and :func:`last_spatial_layer` look
    for: a residual add's output, or the input of an attention block.
    """

    name: str
    shape: tuple[int, ...]
    op: str = ""
    layout: str = ""
    prefix: int = 0
    grid: tuple[int, int] | None = None
    module: str = ""
    # "residual" (re-joins the residual stream), "attention_input" (the input of an
    # attention, what a ViT's maps explain), "attention_detour" (computed from it for the
    # attention: projections, a window's padded copy), or ""
    role: str = ""
    cells: tuple[int, int] | None = None  # grid of means kept per channel (see pool_cells)
    # Axes followed from the input although they are none of the layouts above (tokens
    # transposed to (C, T) for a 1-D pooling, as transformers' Swin pools): not offered
    # as a layer of its own, but not a place where the thread was lost either.
    followed: bool = False

    @property
    def spatial(self) -> bool:
        """A map or a token grid with more than one position."""
        if self.layout == CHW:
            return self.shape[1] * self.shape[2] > 1
        if self.layout == HWC:
            return self.shape[0] * self.shape[1] > 1
        if self.layout == TOKENS and self.grid is not None:
            return self.grid[0] * self.grid[1] > 1
        return False

    @property
    def resolution(self) -> tuple[int, ...]:
        """The spatial or token grid, for telling stages apart."""
        if self.layout == CHW:
            return self.shape[1:]
        if self.layout == HWC:
            return self.shape[:2]
        return self.grid or ()

    @property
    def dim(self) -> int:
        """Length of the pooled feature vector (see :func:`pooling`): the channels, times
        the grid cells where the layer keeps a grid."""
        if self.cells is not None:
            return self.channels * self.cells[0] * self.cells[1]
        return self.channels

    @property
    def channels(self) -> int:
        """Values per position: the length of the layer's global mean."""
        if self.layout in (CHW, VECTOR):
            return int(self.shape[0])
        if self.layout in (HWC, TOKENS):
            return int(self.shape[-1])
        if len(self.shape) == 3:
            return int(self.shape[0])
        return int(self.shape[-1]) if self.shape else 1

    def describe(self) -> str:
        text = "x".join(str(s) for s in self.shape)
        if self.layout == HWC:
            return f"{text} (HWC)"
        if self.layout == TOKENS and self.grid is not None:
            extra = f" + {self.prefix}" if self.prefix else ""
            return f"{text} (tokens: {self.grid[0]}x{self.grid[1]}{extra})"
        return text


def pool_cells(layer: LayerInfo, budget: int = POOL_VALUES) -> tuple[int, int] | None:
    """The grid a spatial layer is averaged to: the largest square of at most
    :data:`MAX_CELLS` a side with channels x cells <= ``budget``, cut to the layer's own
    resolution; None (the global mean) where only one cell fits, for layers that are no
    map or token grid, and for token sequences with a class token (the head reads that
    token, and attention has already mixed every position into it)."""
    if budget <= 0 or not layer.spatial or (layer.layout == TOKENS and layer.prefix):
        return None
    side = min(MAX_CELLS, int(np.sqrt(budget / max(layer.channels, 1))))
    h, w = layer.resolution
    cells = (min(side, int(h)), min(side, int(w)))
    return cells if cells[0] * cells[1] > 1 else None


def with_cells(layers: list[LayerInfo], budget: int) -> list[LayerInfo]:
    """``layers`` with the grid each keeps at ``budget`` values (0: the global mean)."""
    return [replace(layer, cells=pool_cells(layer, budget)) for layer in layers]


def cell_edges(size: int, cells: int) -> np.ndarray:
    """Bin edges that cover every position exactly once, even when sides don't divide
    evenly (the pixel layer's rule, so every grid is cut the same way)."""
    return np.linspace(0, size, cells + 1).astype(int)


@lru_cache(maxsize=64)
def cell_weights(resolution: tuple[int, ...], cells: tuple[int, int]) -> np.ndarray:
    """(H*W, cells) matrix whose product with a row-major flattened map gives the mean of
    each cell: the grid pooling, one matrix product in any runtime."""
    h, w = int(resolution[0]), int(resolution[1])
    rows, cols = cell_edges(h, cells[0]), cell_edges(w, cells[1])
    out = np.zeros((h, w, cells[0], cells[1]), np.float64)
    for i in range(cells[0]):
        for j in range(cells[1]):
            area = (rows[i + 1] - rows[i]) * (cols[j + 1] - cols[j])
            out[rows[i] : rows[i + 1], cols[j] : cols[j + 1], i, j] = 1.0 / area
    weights = out.reshape(h * w, cells[0] * cells[1]).astype(np.float32)
    weights.flags.writeable = False  # shared by every call (cached)
    return weights


def channel_means(features: np.ndarray, layer: LayerInfo) -> np.ndarray:
    """(N, channels) global means of a layer's pooled features: the features themselves,
    or, for a grid, its cells weighted by their areas (exactly the mean over positions)."""
    if layer.cells is None:
        return features
    h, w = int(layer.resolution[0]), int(layer.resolution[1])
    rows, cols = cell_edges(h, layer.cells[0]), cell_edges(w, layer.cells[1])
    share = (np.outer(np.diff(rows), np.diff(cols)) / (h * w)).reshape(-1)
    out = np.empty((features.shape[0], layer.channels), np.float32)
    for s in range(0, len(out), ROW_BLOCK):  # a block at a time: the layer may be memory-mapped
        block = np.asarray(features[s : s + ROW_BLOCK], np.float64)
        out[s : s + ROW_BLOCK] = block.reshape(len(block), layer.channels, share.size) @ share
    release(features)
    return out


def pooling(layer: LayerInfo) -> str:
    """How a layer becomes one vector per image, in words (the report says it).

    Feature maps and token grids: the mean of each cell of a small grid (see
    :func:`pool_cells`), or over all of space where one cell is all the budget allows,
    whatever the channel axis.  Token sequences: the class token where the model has
    prefix tokens (what its head reads), otherwise as maps.  Tensors of unknown layout:
    the mean over every axis but the first (a legacy rule kept for layers asked for by
    name).
    """
    if layer.cells is not None:
        what = "map" if layer.layout in (CHW, HWC) else "token grid"
        return f"{layer.cells[0]}x{layer.cells[1]} grid of {what} means"
    if layer.layout in (CHW, HWC):
        return "spatial mean"
    if layer.layout == TOKENS:
        return "class token" if layer.prefix else "token mean"
    if len(layer.shape) == 3:
        return "mean over the last two axes"
    if len(layer.shape) == 2:
        return "mean over the first axis"
    return "as is"


def annotate_layers(
    candidates: list[LayerInfo],
    steps: list[GraphStep],
    shapes: dict[str, tuple[int, ...]],
    floats: set[str],
    input_name: str,
    channels_last: bool,
    copy_of: Callable[[str], str | None] | None = None,
) -> list[LayerInfo]:
    """The candidate layers with their layouts and roles, recognised from the graph
    (``copy_of``: see :class:`~reportgen.models.layouts.ProbedCopies`)."""
    layouts = infer_layouts(steps, shapes, input_name, channels_last, copy_of)
    feeding = attention_inputs(steps, shapes, layouts, floats, copy_of)
    entries = set(attention_entries(steps, shapes, layouts, feeding))
    attention = set(feeding)
    is_residual = residual_test(shapes)
    residual = {o for step in steps if is_residual(step) for o in step.outputs if o in layouts}
    out = []
    for layer in candidates:
        lay = layouts.get(layer.name)
        role = (
            "residual"
            if layer.name in residual
            else "attention_input"
            if layer.name in entries
            else "attention_detour"
            if layer.name in attention
            else ""
        )
        if lay is None and len(layer.shape) == 1:
            # One axis per image: whatever the ops on the way, a feature vector.
            out.append(replace(layer, layout=VECTOR, role=""))
        elif lay is None or not lay.kind:
            out.append(replace(layer, layout="", role="", followed=lay is not None))
        else:
            out.append(replace(layer, layout=lay.kind, prefix=lay.prefix, grid=lay.grid, role=role))
    return out


def resolve_layer_name(name: str, layers: list[LayerInfo]) -> str:
    """See :meth:`ModelAdapter.resolve`."""
    if name in (INPUT_LAYER, LOGITS_LAYER) or any(layer.name == name for layer in layers):
        return name
    inside = [layer for layer in layers if layer.module == name or layer.module.startswith(name + ".")]
    return inside[-1].name if inside else name


def missing_layer_message(name: str, layers: list[LayerInfo]) -> str:
    """What to tell a user whose layer ``name`` names no tensor of the model.

    A module path whose parent is in the graph most likely names a module the export
    removed: torch's ONNX exporter folds a batch norm into the convolution before it, so
    ``blocks.0.0.bn2`` of the PyTorch model is ``blocks.0.0.conv_pw`` there.  The
    parent's modules are listed; otherwise the closest names are suggested."""
    modules = list(dict.fromkeys(layer.module for layer in layers if layer.module))
    parent = name.rpartition(".")[0]
    while parent and not any(m == parent or m.startswith(parent + ".") for m in modules):
        parent = parent.rpartition(".")[0]
    if parent:
        depth = parent.count(".") + 1
        inside = list(dict.fromkeys(".".join(m.split(".")[: depth + 1]) for m in modules if m.startswith(parent + ".")))
        shown = ", ".join(inside[:8]) + (", ..." if len(inside) > 8 else "")
        return (
            f"no layer named {name!r} in this model: nothing in its graph is computed inside that module "
            f"(an export may fold a module into the op before it, as torch's ONNX exporter folds a batch norm "
            f"into its convolution); {parent!r} holds {shown or 'no named modules'}"
        )
    hint = difflib.get_close_matches(name, modules + [layer.name for layer in layers], n=3)
    extra = f"; did you mean {', '.join(hint)}?" if hint else "; `reportgen layers MODEL` lists them"
    return f"no layer named {name!r} in this model{extra}"


def module_from_scope(scope: str) -> str:
    """``/features/features.1/features.1.0/attn/Slice_1`` (a node name of torch's ONNX
    exporter) -> ``features.1.0.attn``; the last part is the operator.

    Each folder names a module by its path relative to some module above it, so its
    leading parts repeat the end of the path so far: ``features.1.0`` after
    ``features.1``, ``downsample.0`` after ``stages.1.downsample`` (timm's ConvNeXt),
    ``block.0.2`` after ``features.2.0.block.0`` (torchvision's EfficientNet).  The
    overlap is taken once: the paths come out as the module's own
    (``stages.1.downsample.0``, ``features.2.0.block.0.2``), as on every other format."""
    path: list[str] = []
    for part in [p for p in scope.split("/") if p][:-1]:
        pieces = part.split(".")
        overlap = next(
            (k for k in range(min(len(pieces) - 1, len(path)), 0, -1) if path[-k:] == pieces[:k]),
            0,
        )
        path += pieces[overlap:]
    return ".".join(path)


def input_layer_info(channels: int, size: tuple[int, int]) -> LayerInfo:
    h, w = (min(INPUT_GRID, size[0]), min(INPUT_GRID, size[1]))
    return LayerInfo(INPUT_LAYER, (channels * h * w,), f"pixels, {channels}x{h}x{w} area-averaged")


def downsample_pixels(pixels: np.ndarray, channels_last: bool = False) -> np.ndarray:
    """Area-average an input batch to at most 16x16 and flatten it: the pixel layer."""
    x = pixels.transpose(0, 3, 1, 2) if channels_last else pixels
    n, _, h, w = x.shape
    gh, gw = min(INPUT_GRID, h), min(INPUT_GRID, w)
    rows, cols = cell_edges(h, gh), cell_edges(w, gw)
    if h % gh == 0 and w % gw == 0:
        # Equal cells: strided slices added in place, 8x faster than reduceat (1.5 against
        # 13 ms for 256 images of 3 x 32 x 32, the cost of a forward pass of a small CNN).
        fh, fw = h // gh, w // gw
        by_col = x.reshape(n, -1, h, gw, fw)
        across = by_col[..., 0].copy()
        for j in range(1, fw):
            across += by_col[..., j]
        by_row = across.reshape(n, -1, gh, fh, gw)
        summed = by_row[:, :, :, 0].copy()
        for i in range(1, fh):
            summed += by_row[:, :, :, i]
    else:
        summed = np.add.reduceat(np.add.reduceat(x, rows[:-1], axis=2), cols[:-1], axis=3)
    counts = np.outer(np.diff(rows), np.diff(cols)).astype(np.float32)
    return (summed / counts).reshape(n, -1).astype(np.float32)


def run_in_batches_of(
    fn: Callable[[list[np.ndarray]], list[np.ndarray]],
    arrays: list[np.ndarray],
    batch: int | None,
    min_batch: int = 1,
) -> list[np.ndarray]:
    """Call ``fn`` on row-aligned ``arrays``; for a model hard-wired to batch size ``batch``,
    in chunks of exactly that size, the last one zero-padded and the padding cut off.  A
    model that runs only batches of at least ``min_batch`` gets fewer rows padded with
    copies of the first (images are independent: the copies change no other row)."""
    n = arrays[0].shape[0]
    if not batch:
        if n >= min_batch or n == 0:
            return fn(arrays)
        padded = [np.concatenate([a, np.repeat(a[:1], min_batch - n, axis=0)]) for a in arrays]
        return [out[:n] for out in fn(padded)]
    if n == batch:
        return fn(arrays)
    pieces: list[list[np.ndarray]] = []
    for start in range(0, n, batch):
        part = [a[start : start + batch] for a in arrays]
        m = part[0].shape[0]
        if m < batch:
            part = [np.concatenate([a, np.zeros((batch - m, *a.shape[1:]), a.dtype)]) for a in part]
        pieces.append([out[:m] for out in fn(part)])
    return [np.concatenate([p[j] for p in pieces]) for j in range(len(pieces[0]))]


MAX_DEFAULT_GRID_LAYERS = 7  # spatial or token layers audited by default: with input, penultimate and logits, ten


def _thin(names: list[str], keep: int) -> list[str]:
    """At most ``keep`` of ``names``, evenly spread, the last always kept."""
    if len(names) <= keep:
        return names
    picks = {round(i * (len(names) - 1) / (keep - 1)) for i in range(keep)}
    return [names[i] for i in sorted(picks)]


def default_layers(layers: list[LayerInfo], num_outputs: int) -> list[str]:
    """The layers audited when the user names none: about ten at most.

    The input; the end of each stage -- the last tensor before the spatial or token grid
    changes -- or, for a model whose grid never changes (a ViT), the outputs of its
    blocks (the residual adds of ``block_ends``); thinned evenly to
    :data:`MAX_DEFAULT_GRID_LAYERS`; the penultimate vector; the logits.  Only tensors of
    recognised layout count: attention internals never do.
    """
    chosen = [INPUT_LAYER]
    # Tensors that feed attention are detours (a Swin window's padded input has its own
    # size), not the end of a stage.
    grid = [layer for layer in layers if layer.spatial and not layer.role.startswith("attention")]
    ends = [
        layer.name for i, layer in enumerate(grid) if i + 1 == len(grid) or grid[i + 1].resolution != layer.resolution
    ]
    if len(ends) > len({layer.resolution for layer in grid}):
        # A resolution that comes back later (a detour): one end per resolution, its last.
        last = {layer.resolution: layer.name for layer in grid}
        ends = [layer.name for layer in grid if last[layer.resolution] == layer.name]
    ends = [_stage_end(grid, name) for name in ends]
    if len(ends) <= 1:
        blocks = block_ends(layers)
        if len(blocks) > 1:
            ends = blocks
    chosen += _thin(ends, MAX_DEFAULT_GRID_LAYERS)
    penultimate = penultimate_layer(layers, num_outputs)
    if penultimate is not None and penultimate not in chosen:
        chosen.append(penultimate)
    chosen.append(LOGITS_LAYER)
    return chosen


def _stage_end(grid: list[LayerInfo], name: str) -> str:
    """The tensor that ends the stage whose last tensor at its resolution is ``name``:
    ``name``, unless the tensors at the end of that stretch already belong to the module
    that changes the resolution (the next stage's downsampling norm in timm's and
    torchvision's ConvNeXt, the expansion of EfficientNet's next block): those are left
    to the next stage, and the stage ends at the tensor before them.  Told by module
    paths: such a tensor and the first one at the new resolution lie inside one container
    (``stages.1.downsample.0`` and ``stages.1.downsample.1``; RegNet's ``s2.b1.conv1`` and
    ``s2.b1.conv2.conv``, the block whose second convolution strides)."""
    end = next(i for i, layer in enumerate(grid) if layer.name == name)
    if end + 1 >= len(grid) or not grid[end + 1].module or not grid[end].module:
        return name
    # The deepest container of both, when it is a block of its own (two parts at least:
    # ``stages.1.downsample``, not ``features``, which holds every stage).
    container = _common_module(grid[end].module, grid[end + 1].module)
    if "." not in container:
        return name
    # Back over the container's tensors (a shortcut branch already at the new resolution
    # among them, as in MaxViT's MBConv), to the tensor before it: the stage's end when it
    # is still at the stage's resolution.
    i = end
    while i > 0 and grid[i].module.startswith(container + "."):
        i -= 1
    if grid[i].module.startswith(container + ".") or grid[i].resolution != grid[end].resolution:
        return name
    return grid[i].name


def _common_module(a: str, b: str) -> str:
    """The deepest module path that holds both (``s2.b1`` for ``s2.b1.conv1.bn`` and
    ``s2.b1.conv2.conv``); "" when they share none."""
    common = []
    for x, y in zip(a.split("."), b.split("."), strict=False):
        if x != y:
            break
        common.append(x)
    return ".".join(common)


def block_ends(layers: list[LayerInfo]) -> list[str]:
    """The outputs of residual blocks, in a model whose grid never changes.

    A transformer block re-joins its residual stream twice (after attention, after the
    MLP); its output is the residual add that the next block's attention input follows,
    or the last one.  Where no attention input is marked, every residual add counts.
    """
    marked = [layer for layer in layers if layer.spatial and layer.role]
    out = []
    for i, layer in enumerate(marked):
        if layer.role != "residual":
            continue
        following = next((m for m in marked[i + 1 :] if m.role), None)
        if (
            following is None
            or following.role.startswith("attention")
            or not any(m.role.startswith("attention") for m in marked)
        ):
            out.append(layer.name)
    return out


def penultimate_layer(layers: list[LayerInfo], num_outputs: int) -> str | None:
    last_spatial = max((i for i, layer in enumerate(layers) if layer.spatial), default=-1)
    for layer in reversed(layers[last_spatial + 1 :]):
        if layer.dim != num_outputs and layer.dim > 1 and layer.layout in (VECTOR, ""):
            return layer.name
    return None


def graph_gap(layers: list[LayerInfo]) -> str:
    """Why the graph's layouts cannot be trusted past some point ("" when they can).

    Layouts are followed from the input; an op the rules do not know cuts the thread, and
    every tensor after it is unknown.  Attention internals are unknown too, but they
    rejoin the residual stream, and labelled tensors follow them.  So the graph is
    understood when no per-image map, grid or token tensor of unknown layout comes after
    the last one that is labelled; otherwise the defaults (layers and the CAM target)
    would stop at the cut, and a map of the last labelled tensor would explain a layer
    near the input while the report looked as usual."""
    ranked = [layer for layer in layers if len(layer.shape) >= 2]
    labelled = [i for i, layer in enumerate(ranked) if layer.layout in (CHW, HWC, TOKENS)]
    if not labelled:
        return ""
    last = labelled[-1]
    lost = [layer for layer in ranked[last + 1 :] if not layer.layout and not layer.followed]
    if not lost:
        return ""
    where = ranked[last].module or ranked[last].name
    return (
        f"reportgen could not follow what the axes of this graph mean past {where} ({len(lost)} tensors of unknown "
        f"layout follow it, from {lost[0].module or lost[0].name}): the default layers stop there and no default "
        "Grad-CAM target is chosen; name layers with --layers and a target with --cam-layer (--layer for "
        "`reportgen cam`; `reportgen layers` lists them)"
    )


def last_spatial_layer(layers: list[LayerInfo]) -> str | None:
    """Grad-CAM's default target, the one the grad-cam package recommends for each family.

    For a transformer on tokens (a ViT, transformers' Swin): the input of its last
    block's attention (``encoder.layers[-1].ln_1`` in torchvision, ``blocks[-1].norm1``
    in timm), marked ``attention_input`` by the adapter.  For everything else (CNNs,
    ConvNeXt, timm's channels-last Swin): the last feature map of the main stream -- for
    a CNN the input of its global pooling, channels-last maps included; an attention's
    detours (a Swin window's padded copy) never count.  Tokens without attention
    (MLP-Mixer): the last token grid.
    """
    spatial = [layer for layer in layers if layer.spatial and not layer.role.startswith("attention")]
    tokens = [layer for layer in spatial if layer.layout == TOKENS]
    maps = [layer for layer in spatial if layer.layout in (CHW, HWC)]
    attention = [
        layer for layer in layers if layer.layout == TOKENS and layer.spatial and layer.role == "attention_input"
    ]
    if attention and (not maps or layers.index(attention[-1]) > layers.index(maps[-1])):
        return attention[-1].name
    if maps:
        return maps[-1].name
    return tokens[-1].name if tokens else None


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
    classes_from: str = "model metadata"  # where ``classes`` came from, as the report names it

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
    resize_hint: str | None = None  # "crop" or "stretch", where the model's hub files say
    notes: list[str] = field(default_factory=list)  # what the report should say about the hints


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
    #: The function after :attr:`score_layer`: "softmax" (one class: the scores compete)
    #: or "sigmoid" (independent labels); None without a score layer.
    score_activation: str | None = None
    #: What the user should know about how the model runs (one line each, for the
    #: report's warnings), e.g. a graph declared with a free batch size that runs only at
    #: one.  Set by :meth:`prepare`.
    notes: tuple[str, ...] = ()
    min_batch: int = 1  # fewest images a forward pass may hold; fewer are padded with copies

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
    def extract(
        self, pixels: np.ndarray, layers: list[str], cells: Mapping[str, tuple[int, int]] | None = None
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """Run one batch; return the outputs (N, K) and the pooled features of ``layers``
        (names from :meth:`layers`; the pseudo-layers are handled by the caller): the
        global mean (see :func:`pooling`), or for a layer in ``cells`` the means of that
        grid's cells, channel-major ((C, cells) flattened, whatever the layout)."""

    # --- Grad-CAM support: a model split at one tensor -------------------------------

    @abstractmethod
    def split(self, layer: str) -> SplitModel:
        """The model cut at tensor ``layer``: a body (input -> layer) and a head."""

    def resolve(self, name: str) -> str:
        """The tensor a user means by ``name``: a tensor name, or a module path
        (``layer4``, ``encoder.layers.encoder_layer_11``) -- the module's output, i.e.
        the last tensor computed inside it.  Unknown names come back unchanged, for the
        caller's "no layer named" message."""
        return resolve_layer_name(name, self.layers())

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
    differentiable: bool  # True when :meth:`gradcam_inputs` is available (autograd)
    min_batch: int = 1  # fewest images a call may hold (see ``run_in_batches_of``)
    shuffled: int = 0  # weight values a :meth:`randomised` copy shuffled (0: the original, or no weights)

    @abstractmethod
    def body(self, pixels: np.ndarray) -> tuple[np.ndarray, Any]:
        """Run input -> (A as float32 array (N, C, H, W), rest)."""

    @abstractmethod
    def head(self, activations: np.ndarray, rest: Any) -> np.ndarray:
        """Run (A, rest) -> class scores (N, K); ``rest`` must match ``activations`` in N."""

    @abstractmethod
    def take(self, rest: Any, index: np.ndarray) -> Any:
        """Select (and repeat) rows of ``rest``, as ``activations[index]`` does."""

    def gradcam_inputs(self, pixels: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Activations A, d score[i, targets[i]] / dA and the scores, in one pass; only
        when :attr:`differentiable` (the gradient is exact, by autograd)."""
        raise NotImplementedError

    def randomised(self, seed: int) -> SplitModel:
        """The same cut with every float weight the head reads (tensors of two values or
        more) shuffled within its tensor, seeded: Adebayo et al.'s model-parameter
        randomisation.  A shuffle keeps each tensor's values, so scales, signs and
        positive variances survive while what was learned does not.  The body is shared."""
        raise NotImplementedError


def shuffled(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``values`` with its entries permuted (one seeded permutation of the flat array)."""
    return values.reshape(-1)[rng.permutation(values.size)].reshape(values.shape)


def shuffles(values: np.ndarray) -> bool:
    """Whether :meth:`SplitModel.randomised` shuffles a weight: float, two values or more
    (a scalar is an epsilon or a scale, not something learned per unit)."""
    return values.dtype.kind == "f" and values.size >= 2


class LayoutSplit(SplitModel):
    """A split at a channels-last map or a token sequence, seen as (N, C, h, w) maps.

    What the ``grad-cam`` package's ``reshape_transform`` does for a ViT or a Swin, for
    every format: channels-last maps are transposed; token sequences lose their prefix
    tokens (class, distillation, register), which have no place on the image, and the
    patch tokens are laid back onto their grid.  The head gets the whole tensor back,
    the prefix tokens as the body made them.
    """

    def __init__(self, inner: SplitModel, info: LayerInfo):
        if info.layout not in (HWC, TOKENS) or (info.layout == TOKENS and info.grid is None):
            raise ValueError(f"no map view of a {info.layout or 'unknown'} layout")
        self.inner = inner
        self.info = info
        self.layer = inner.layer
        self.differentiable = inner.differentiable
        self.min_batch = inner.min_batch
        self.shuffled = inner.shuffled

    def _to_maps(self, a: np.ndarray) -> np.ndarray:
        if self.info.layout == HWC:
            return np.ascontiguousarray(a.transpose(0, 3, 1, 2))
        assert self.info.grid is not None
        n, _, c = a.shape
        h, w = self.info.grid
        return np.ascontiguousarray(a[:, self.info.prefix :].reshape(n, h, w, c).transpose(0, 3, 1, 2))

    def _from_maps(self, maps: np.ndarray, prefix: np.ndarray | None) -> np.ndarray:
        if self.info.layout == HWC:
            return np.ascontiguousarray(maps.transpose(0, 2, 3, 1))
        n, c, h, w = maps.shape
        patches = maps.transpose(0, 2, 3, 1).reshape(n, h * w, c)
        if prefix is None or not prefix.shape[1]:
            return np.ascontiguousarray(patches)
        return np.concatenate([prefix.astype(patches.dtype, copy=False), patches], axis=1)

    def body(self, pixels: np.ndarray) -> tuple[np.ndarray, Any]:
        a, rest = self.inner.body(pixels)
        prefix = a[:, : self.info.prefix] if self.info.layout == TOKENS else None
        return self._to_maps(a), (rest, prefix)

    def head(self, activations: np.ndarray, rest: Any) -> np.ndarray:
        inner_rest, prefix = rest
        return self.inner.head(self._from_maps(activations, prefix), inner_rest)

    def take(self, rest: Any, index: np.ndarray) -> Any:
        inner_rest, prefix = rest
        return self.inner.take(inner_rest, index), None if prefix is None else prefix[index]

    def gradcam_inputs(self, pixels: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        a, grads, scores = self.inner.gradcam_inputs(pixels, targets)
        return self._to_maps(a), self._to_maps(grads), scores

    def randomised(self, seed: int) -> SplitModel:
        return LayoutSplit(self.inner.randomised(seed), self.info)


def map_view(split: SplitModel, info: LayerInfo) -> SplitModel:
    """The split as Grad-CAM reads it: (N, C, h, w) maps whatever the tensor's layout.

    Raises ``UserError`` for a tensor whose axes are no map or token grid (attention
    internals): a map of it would be drawn as if heads were channels.
    """
    from reportgen.errors import UserError

    if info.layout == CHW:
        return split
    if info.layout in (HWC, TOKENS) and info.spatial:
        return LayoutSplit(split, info)
    raise UserError(
        f"layer {info.name!r} ({info.describe()}) is neither a feature map nor a token grid "
        "(an attention internal, say), so no activation map can be drawn of it; "
        "`reportgen layers MODEL` marks the layers that can"
    )
