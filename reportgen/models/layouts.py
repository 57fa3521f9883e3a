"""What the axes of each tensor mean, recognised from the graph rather than guessed from
its rank.

A (64, 8, 8) tensor may be channels x height x width (a CNN), height x width x channels
(a ConvNeXt or Swin block, a TF/Keras export), or a piece of an attention computation
(heads x tokens x head-dim) that means nothing spatial at all.  Only the graph tells them
apart, so layouts are *propagated* from the input, node by node, by rules that hold
whatever the runtime:

* the input is (C, H, W) or (H, W, C);
* a permutation permutes the axis labels (NCHW -> NHWC and back);
* merging H and W into one axis makes **tokens** (T, C) on an (H, W) grid (a patch
  embedding); a concatenation along T in front of them adds **prefix tokens** (class,
  distillation, register); slicing them off or picking one token (the class token)
  follows;
* a node whose output has the shape of a labelled per-image input keeps its labels
  (elementwise ops, normalisation, the residual add that re-joins an attention branch);
* a node that only changes channel or spatial sizes keeps its labels (convolutions,
  pooling, linear layers over channels, patch merging), and one that removes the
  spatial or token axes leaves a **vector** (C,);
* axes pooled to size one, or of size one put in or taken out, read ``1``; what is left
  of a pooling once they go is a **vector**;
* a tensor the rules cannot follow that held, bit for bit, the values of an earlier one
  when the graph was probed is that tensor (the dynamo exporter's identity
  ``as_strided``), and takes its labels;
* anything else -- a product of two per-image tensors (attention scores), a reshape into
  heads, a tensor that is not per-image at all -- is **unknown**, and unknown tensors are
  never offered as default layers or Grad-CAM targets.

Each adapter describes its graph as a list of :class:`GraphStep` (canonical op names:
``permute`` with its ``perm``, ``reshape``, ``concat``, ``matmul``; anything else keeps its
own name) and the per-image shapes it measured; this module does the rest.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

CHW = "chw"
HWC = "hwc"
TOKENS = "tokens"
VECTOR = "vector"


@dataclass(frozen=True)
class Layout:
    """Labels of a per-image tensor's axes: ``C`` channels, ``H``/``W`` space, ``T`` tokens.

    ``prefix`` counts the tokens in front of the patch tokens (class token and the like);
    ``grid`` is the (h, w) the patch tokens were laid out on.
    """

    axes: tuple[str, ...]
    prefix: int = 0
    grid: tuple[int, int] | None = None

    @property
    def kind(self) -> str:
        """``chw``, ``hwc``, ``tokens``, ``vector``, or "" when the labels say none of them."""
        if self.axes == ("C", "H", "W"):
            return CHW
        if self.axes == ("H", "W", "C"):
            return HWC
        if self.axes == ("T", "C") and self.grid is not None:
            return TOKENS
        if self.axes == ("C",):
            return VECTOR
        return ""


@dataclass
class GraphStep:
    """One node of a graph, as layout inference sees it."""

    op: str  # "permute", "reshape", "concat", "matmul", "add", or the runtime's own op name
    inputs: list[str]
    outputs: list[str]
    perm: tuple[int, ...] | None = None  # for "permute": over all axes, batch first


def _same_rank_change(lay: Layout, src: tuple[int, ...], out: tuple[int, ...]) -> Layout | None:
    """Same rank, some sizes changed: kept when only channel or spatial sizes changed."""
    changed = {lay.axes[i] for i, (a, b) in enumerate(zip(src, out, strict=True)) if a != b}
    if lay.kind == VECTOR:
        return lay  # a linear layer, a classifier head
    if lay.kind in (CHW, HWC) and changed <= {"C", "H", "W"}:
        return Layout(lay.axes)
    if lay.kind == TOKENS and changed <= {"C"}:
        return lay
    if lay.kind == TOKENS and changed == {"T"} and lay.grid is not None:
        t = out[lay.axes.index("T")]
        if t == lay.grid[0] * lay.grid[1]:  # the prefix tokens sliced off
            return Layout(lay.axes, 0, lay.grid)
    if changed == {"T"} and out[lay.axes.index("T")] == 1:
        # Tokens pooled to one, or one picked (a 1-D average pooling of (C, T) tokens in
        # transformers' Swin; ``x[:, :1]``): the axis is left, of size one.
        return Layout(tuple("1" if a == "T" else a for a in lay.axes))
    return None


def _reshaped(lay: Layout, src: tuple[int, ...], out: tuple[int, ...]) -> Layout | None:
    """The reshapes with a meaning: patch grid <-> tokens, and dropping 1 x 1 space."""
    kind = lay.kind
    if kind == CHW and len(out) == 2 and out == (src[0], src[1] * src[2]):
        return Layout(("C", "T"), 0, (src[1], src[2]))
    if kind == HWC and len(out) == 2 and out == (src[0] * src[1], src[2]):
        return Layout(("T", "C"), 0, (src[0], src[1]))
    if lay.axes == ("C", "T") and lay.grid is not None and out == (src[0], *lay.grid):
        return Layout(("C", "H", "W"))
    if kind == TOKENS and lay.prefix == 0 and lay.grid is not None and out == (*lay.grid, src[1]):
        return Layout(("H", "W", "C"))
    if kind in (CHW, HWC) and out == (src[0] if kind == CHW else src[2],) and src[0] * src[1] * src[2] == out[0]:
        return Layout(("C",))
    return _split_or_merged(lay, src, out) or _unit_axes(lay, src, out)


def _unit_axes(lay: Layout, src: tuple[int, ...], out: tuple[int, ...]) -> Layout | None:
    """Axes of size one put in or taken out (an ``unsqueeze`` before a pooling, a
    ``squeeze`` after it): the other axes keep their labels, the new ones read ``1``."""
    core = [(label, size) for label, size in zip(lay.axes, src, strict=True) if size != 1]
    if [size for _, size in core] != [size for size in out if size != 1] or src == out:
        return None
    labels = iter(label for label, _ in core)
    axes = tuple("1" if size == 1 else next(labels) for size in out)
    return Layout(axes, lay.prefix, lay.grid) if "T" in axes else Layout(axes)


def _groups(src: tuple[int, ...], out: tuple[int, ...]) -> list[tuple[list[int], list[int]]] | None:
    """Pair consecutive source axes with consecutive output axes of equal product (how a
    reshape regroups axes); None when the two shapes do not decompose so."""
    groups: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(src) and j < len(out):
        a, b = [i], [j]
        pa, pb = src[i], out[j]
        while pa != pb:
            if pa < pb and i + len(a) < len(src):
                pa *= src[i + len(a)]
                a.append(i + len(a))
            elif pb < pa and j + len(b) < len(out):
                pb *= out[j + len(b)]
                b.append(j + len(b))
            else:
                return None
        groups.append((a, b))
        i, j = a[-1] + 1, b[-1] + 1
    return groups if i == len(src) and j == len(out) else None


def _split_or_merged(lay: Layout, src: tuple[int, ...], out: tuple[int, ...]) -> Layout | None:
    """A space-to-depth reshape, as timm's Swin patch merging writes it: an image axis
    split into (blocks, offset) -- labelled ``H`` and ``H'`` -- and, after a permutation,
    the offsets merged into the channels (``H' W' C`` -> ``C``) or back into their axis.
    Channels and tokens are never split here: splitting channels into heads is an
    attention's, and stays unknown."""
    if lay.prefix or len(src) != len(lay.axes):
        return None
    groups = _groups(src, out)
    if groups is None:
        return None
    labels: list[str] = []
    for a, b in groups:
        names = [lay.axes[k] for k in a]
        if len(a) == 1 and len(b) == 1:
            labels.append(names[0])
        elif len(a) == 1:  # a split
            if names[0] not in ("H", "W"):
                return None
            labels += [names[0]] + [names[0] + "'"] * (len(b) - 1)
        elif len(b) == 1:  # a merge
            bases = {n.rstrip("'") for n in names}
            if len(bases) == 1 and names[0] in ("H", "W"):
                labels.append(names[0])  # a split undone
            elif names[-1] == "C" and all(n.endswith("'") for n in names[:-1]):
                labels.append("C")  # the offsets folded into the channels
            else:
                return None
        else:
            return None
    return Layout(tuple(labels))


def _reduced(lay: Layout, src: tuple[int, ...], out: tuple[int, ...]) -> Layout | None:
    """Fewer axes, the others unchanged: which labels went, and what is left."""
    if len(out) >= len(src):
        return None
    # Match the output's sizes to the input's axes in order (a subsequence).
    kept: list[int] = []
    i = 0
    for size in out:
        while i < len(src) and src[i] != size:
            i += 1
        if i == len(src):
            return None
        kept.append(i)
        i += 1
    labels = tuple(lay.axes[k] for k in kept)
    # What is left of a pooling: the channels, with axes of size one or without.
    return Layout(labels) if "C" in labels and set(labels) <= {"C", "1"} else None


def _concatenated(lay: Layout, index: int, shapes: list[tuple[int, ...] | None], out: tuple[int, ...]) -> Layout | None:
    src = shapes[index]
    assert src is not None
    diff = [a for a, (x, y) in enumerate(zip(src, out, strict=True)) if x != y]
    if len(diff) != 1:
        return None
    axis = diff[0]
    if lay.axes[axis] == "C":
        return Layout(lay.axes, lay.prefix, lay.grid)
    if lay.kind == TOKENS and lay.axes[axis] == "T" and index == len(shapes) - 1:
        # Tokens put in front of the patch tokens: class, distillation, register tokens.
        before = sum(s[axis] for s in shapes[:index] if s is not None and len(s) == len(src))
        return Layout(lay.axes, lay.prefix + before, lay.grid)
    return None


def infer_layouts(
    steps: list[GraphStep],
    shapes: dict[str, tuple[int, ...]],
    input_name: str,
    channels_last: bool = False,
    copy_of: Callable[[str], str | None] | None = None,
) -> dict[str, Layout]:
    """The layout of every per-image tensor whose axes the rules can follow (see the module
    docstring); ``shapes`` holds the per-image shapes (batch removed) of per-image tensors.
    ``copy_of`` names the earlier tensor one held the very same values as when the graph
    was probed (:class:`ProbedCopies`): where the rules cannot follow a tensor, it takes
    that one's labels."""
    layouts: dict[str, Layout] = {input_name: Layout(("H", "W", "C") if channels_last else ("C", "H", "W"))}
    for step in steps:
        # A step of several outputs (ONNX's Split of a SwiGLU MLP's fc1 into its two
        # halves): each output by the same rules.
        for out_name in step.outputs:
            if out_name not in shapes:
                continue
            _infer_output(step, out_name, shapes, layouts)
            if out_name not in layouts and copy_of is not None:
                original = copy_of(out_name)
                if original in layouts:
                    layouts[out_name] = layouts[original]
    return layouts


class ProbedCopies:
    """Which tensor, of those the graph computed when it was probed, another one is a copy
    of: the same shape and the very same values, bit for bit.  The dynamo ONNX exporter
    writes an identity ``as_strided`` as a Gather from the flattened batch at computed
    indices, which no rule can follow, but its result is the tensor it started from.

    Asked lazily, only of the tensors the rules cannot follow, and compared only with
    earlier tensors of the same shape (a few values first): a graph's probe values run to
    gigabytes for a large ViT, too many to hash whole.  A tensor of one value throughout
    is nobody's copy: two of them agree by chance.
    """

    def __init__(self, values: dict[str, np.ndarray], order: list[str]):
        self._values = values
        self._rank = {name: i for i, name in enumerate(order)}
        self._by_shape: dict[tuple[Any, ...], list[str]] = {}
        for name in order:
            value = values.get(name)
            if isinstance(value, np.ndarray) and value.dtype.kind == "f" and value.size >= 2:
                self._by_shape.setdefault((value.shape, value.dtype.str), []).append(name)
        self._found: dict[str, str | None] = {}

    def __call__(self, name: str) -> str | None:
        """The earlier tensor ``name`` is a copy of, or None."""
        if name not in self._found:
            self._found[name] = self._original(name)
        return self._found[name]

    def _original(self, name: str) -> str | None:
        value = self._values.get(name)
        if not isinstance(value, np.ndarray) or name not in self._rank:
            return None
        head = value.reshape(-1)[:64]
        for other in self._by_shape.get((value.shape, value.dtype.str), []):
            if self._rank[other] >= self._rank[name]:
                break
            candidate = self._values[other]
            if np.array_equal(candidate.reshape(-1)[:64], head) and np.array_equal(candidate, value):
                return None if np.all(value == head[0]) else other
        return None


def _infer_output(
    step: GraphStep, out_name: str, shapes: dict[str, tuple[int, ...]], layouts: dict[str, Layout]
) -> None:
    """Label ``out_name``, one output of ``step``, in ``layouts`` when the rules follow it."""
    out = shapes[out_name]
    per_image = [(i, name) for i, name in enumerate(step.inputs) if name in shapes]
    if not per_image:
        return  # computed from what is not per-image: unknown
    known = [(i, name) for i, name in per_image if name in layouts]
    if not known:
        return
    result: Layout | None = None
    if step.op == "matmul" and len(per_image) >= 2:
        return  # a product of two per-image tensors: attention scores or their use
    if step.op == "permute" and step.perm is not None and step.perm[0] == 0:
        lay = layouts[known[0][1]]
        order = [p - 1 for p in step.perm[1:]]
        if sorted(order) == list(range(len(lay.axes))):
            result = Layout(tuple(lay.axes[p] for p in order), lay.prefix, lay.grid)
    else:
        for _, name in known:  # the shape of a labelled input: same labels
            if shapes[name] == out:
                result = layouts[name]
                break
        if result is None and (len(known) == 1 or step.op == "concat"):
            index, name = known[-1] if step.op == "concat" else known[0]
            lay, src = layouts[name], shapes[name]
            if step.op == "concat":
                all_shapes = [shapes.get(n) for n in step.inputs]
                result = _concatenated(lay, index, all_shapes, out) if len(src) == len(out) else None
            elif step.op == "reshape":
                result = _reshaped(lay, src, out)
            elif len(src) == len(out):
                result = _same_rank_change(lay, src, out)
            else:
                result = _reduced(lay, src, out)
    if result is not None:
        layouts[out_name] = result


def _consumers(steps: list[GraphStep]) -> dict[str, list[GraphStep]]:
    """The steps that read each tensor."""
    consumers: dict[str, list[GraphStep]] = {}
    for step in steps:
        for name in step.inputs:
            consumers.setdefault(name, []).append(step)
    return consumers


def residual_test(shapes: dict[str, tuple[int, ...]]) -> Callable[[GraphStep], bool]:
    """Whether a step is a residual join: an add of two or more same-shaped tensors."""

    def is_residual(step: GraphStep) -> bool:
        joined = [n for n in step.inputs if n in shapes]
        return step.op == "add" and len(joined) >= 2 and len({shapes[n] for n in joined}) == 1

    return is_residual


def attention_inputs(
    steps: list[GraphStep],
    shapes: dict[str, tuple[int, ...]],
    layouts: dict[str, Layout],
    floats: set[str],
    copy_of: Callable[[str], str | None] | None = None,
) -> list[str]:
    """Grid and token tensors that feed an attention computation, in graph order.

    A tensor feeds attention when, following its consumers through labelled
    tensors, one reaches a tensor the rules cannot label (a reshape into heads, a
    product of queries and keys, a tensor that is not per-image) before any residual
    add.  In a pre-norm transformer block that is the normalised input of the attention
    (``ln_1`` in torchvision, ``norm1`` in timm): the tensor Grad-CAM explains in a ViT.
    ``floats`` names every floating-point tensor the graph computed (per-image or not);
    other outputs (shapes, indices) are arithmetic on sizes and lead nowhere; nor does a
    tensor read only to make a copy of another (``copy_of``, see :class:`ProbedCopies`:
    the dynamo exporter's flattened batch behind its identity ``as_strided``).
    """
    consumers = _consumers(steps)
    is_residual = residual_test(shapes)

    def only_copied(name: str) -> bool:
        readers = consumers.get(name, [])
        return (
            copy_of is not None
            and bool(readers)
            and all(copy_of(o) is not None for step in readers for o in step.outputs)
        )

    def reaches_unknown(name: str) -> bool:
        stack, seen = [name], {name}
        while stack:
            for step in consumers.get(stack.pop(), []):
                if is_residual(step):
                    continue
                for out in step.outputs:
                    if out not in floats:
                        continue
                    if out not in layouts and not only_copied(out):
                        return True
                    if out not in seen:
                        seen.add(out)
                        stack.append(out)
        return False

    order = [o for step in steps for o in step.outputs]
    grids = (CHW, HWC, TOKENS)
    return [n for n in order if n in layouts and layouts[n].kind in grids and reaches_unknown(n)]


def attention_entries(
    steps: list[GraphStep], shapes: dict[str, tuple[int, ...]], layouts: dict[str, Layout], feeding: list[str]
) -> list[str]:
    """Of the tensors that feed attention (``attention_inputs``), the first of each
    attention after the residual stream: the block's normalised input.  The projections
    computed from it (timm's fused ``qkv``, transformers' separate ``q_proj``, ``k_proj``,
    ``v_proj``) and a window attention's padded and shifted copies feed the internals too,
    but they are already inside the attention, and not what the grad-cam package
    explains.  The residual adds that feed it are what they are, and count as no entry."""
    consumers = _consumers(steps)
    is_residual = residual_test(shapes)

    def below(name: str) -> set[str]:
        """The labelled tensors computed from ``name`` before the branch rejoins the stream."""
        stack, seen = [name], set()
        while stack:
            for step in consumers.get(stack.pop(), []):
                if is_residual(step):
                    continue
                for out in step.outputs:
                    if out in layouts and out not in seen:
                        seen.add(out)
                        stack.append(out)
        return seen

    joins = {out for step in steps if is_residual(step) for out in step.outputs}
    skips = {name for step in steps if is_residual(step) for name in step.inputs}
    starts = [n for n in feeding if n not in joins]
    # A stage's first tensors, before its first residual add (transformers' Swin: the
    # patch merging; a ViT: the embedded patches), are the stream itself: they feed the
    # block's skip connection, and the block's norm below them is the entry.  Where no
    # such norm lies below (a post-norm block reads the stream itself), the tensor the
    # skip connection carries is the entry, not the ones before it.
    reach = {n: below(n) for n in starts}
    proper = {n for n in starts if n not in skips and not reach[n] & skips}
    starts = [n for n in starts if n in proper or not reach[n] & proper]
    carried = skips & set(starts)
    starts = [n for n in starts if n in proper or n in carried or not reach[n] & carried]
    inside = set().union(*(reach[n] for n in starts)) if starts else set()
    return [n for n in starts if n not in inside]
