"""Layout rules on small hand-written graphs: the cases the hub families brought in
(transformers' Swin pooling its tokens through a transpose, EVA-02's SwiGLU split, the
dynamo exporter's identity ``as_strided``, a stage that starts without a residual add).
No model runs here: each graph is a list of steps and the per-image shapes a probe would
have measured."""

from __future__ import annotations

import numpy as np

from reportgen.models import graph_gap
from reportgen.models.base import LayerInfo, annotate_layers
from reportgen.models.layouts import TOKENS, GraphStep, ProbedCopies, attention_entries, attention_inputs
from reportgen.models.layouts import infer_layouts as infer

C, SIDE = 12, 4  # channels differ from the token count, so no axis is taken for another
T = SIDE * SIDE


def _tokens_from_pixels() -> tuple[list[GraphStep], dict[str, tuple[int, ...]]]:
    """A patch embedding: (3, 8, 8) pixels -> (C, 4, 4) map -> (C, T) -> (T, C) tokens."""
    steps = [
        GraphStep("Conv", ["x", "w"], ["map"]),
        GraphStep("reshape", ["map"], ["ct0"]),
        GraphStep("permute", ["ct0"], ["tok"], perm=(0, 2, 1)),
    ]
    shapes = {"x": (3, 8, 8), "map": (C, SIDE, SIDE), "ct0": (C, T), "tok": (T, C)}
    return steps, shapes


def _annotated(
    steps: list[GraphStep], shapes: dict[str, tuple[int, ...]], copy_of: ProbedCopies | None = None
) -> list[LayerInfo]:
    names = [o for step in steps for o in step.outputs if o in shapes]
    candidates = [LayerInfo(name, shapes[name]) for name in names]
    return annotate_layers(candidates, steps, shapes, set(shapes) | {"flat"}, "x", False, copy_of)


def test_tokens_pooled_through_a_transpose_are_followed_to_a_vector() -> None:
    """transformers' Swin: norm -> transpose to (C, T) -> 1-D average pooling to (C, 1)
    -> flatten.  Every tensor is followed: no gap, the pooled vector is a vector."""
    steps, shapes = _tokens_from_pixels()
    steps += [
        GraphStep("LayerNormalization", ["tok"], ["norm"]),
        GraphStep("permute", ["norm"], ["ct"], perm=(0, 2, 1)),
        GraphStep("GlobalAveragePool", ["ct"], ["pooled"]),
        GraphStep("reshape", ["pooled"], ["vec"]),
    ]
    shapes |= {"norm": (T, C), "ct": (C, T), "pooled": (C, 1), "vec": (C,)}
    layouts = infer(steps, shapes, "x")
    assert layouts["norm"].kind == TOKENS and layouts["norm"].grid == (SIDE, SIDE)
    assert layouts["pooled"].axes == ("C", "1") and layouts["vec"].kind == "vector"
    layers = _annotated(steps, shapes)
    by_name = {layer.name: layer for layer in layers}
    assert graph_gap(layers) == ""
    assert by_name["ct"].followed and by_name["ct"].layout == ""  # followed, but no layer of its own
    # A pooling to a size the rules do not know (T -> 3) is still a lost thread.
    lost = [*steps[:-2], GraphStep("MaxPool", ["ct"], ["odd"])]
    assert "could not follow" in graph_gap(_annotated(lost, {**shapes, "odd": (C, 3)}))


def test_each_output_of_a_split_keeps_its_labels() -> None:
    """EVA-02's SwiGLU: fc1 -> Split in two halves along the channels (one step, two
    outputs).  Both halves stay tokens, so the MLP is not taken for an attention and
    the block's norm before it is not an attention input."""
    steps, shapes = _tokens_from_pixels()
    steps += [
        GraphStep("LayerNormalization", ["tok"], ["norm2"]),
        GraphStep("MatMul", ["norm2", "w1"], ["fc1"]),
        GraphStep("Split", ["fc1"], ["a", "b"]),
        GraphStep("Mul", ["a", "b"], ["glu"]),
        GraphStep("MatMul", ["glu", "w2"], ["fc2"]),
        GraphStep("add", ["tok", "fc2"], ["out"]),
    ]
    shapes |= {"norm2": (T, C), "fc1": (T, 4 * C), "a": (T, 2 * C), "b": (T, 2 * C), "glu": (T, 2 * C)}
    shapes |= {"fc2": (T, C), "out": (T, C)}
    layouts = infer(steps, shapes, "x")
    assert layouts["a"].kind == layouts["b"].kind == TOKENS
    assert attention_inputs(steps, shapes, layouts, set(shapes)) == []


def test_a_copy_the_rules_cannot_follow_takes_the_labels_of_its_original() -> None:
    """The dynamo exporter's identity ``as_strided``: the pooled map flattened with the
    batch (not per-image) and gathered back at computed indices.  Probed values say the
    result is the pooled map itself; a constant tensor proves nothing."""
    steps, shapes = _tokens_from_pixels()
    steps += [
        GraphStep("ReduceMean", ["map"], ["mean"]),
        GraphStep("reshape", ["mean"], ["flat"]),  # (N * C,): not per-image
        GraphStep("Gather", ["flat", "idx"], ["strided"]),
        GraphStep("reshape", ["strided"], ["vec"]),
    ]
    del shapes["ct0"], shapes["tok"]
    steps = [s for s in steps if s.outputs[0] not in ("ct0", "tok")]
    shapes |= {"mean": (C, 1, 1), "strided": (C, 1, 1), "vec": (C,)}
    rng = np.random.default_rng(0)
    mean = rng.standard_normal((2, C, 1, 1)).astype(np.float32)
    values = {"map": rng.standard_normal((2, C, SIDE, SIDE)).astype(np.float32), "mean": mean}
    values |= {"strided": mean.copy(), "vec": mean.reshape(2, C), "zeros": np.zeros((2, C)), "zeros2": np.zeros((2, C))}
    copy_of = ProbedCopies(values, ["map", "mean", "strided", "vec", "zeros", "zeros2"])
    assert copy_of("strided") == "mean"
    assert copy_of("mean") is None and copy_of("vec") is None  # the first of its values; another shape
    assert copy_of("zeros2") is None  # one value throughout: equal by chance
    values["other"] = mean + np.float32(1e-3)
    assert ProbedCopies(values, ["mean", "other"])("other") is None
    assert "could not follow" in graph_gap(_annotated(steps, shapes))
    layers = _annotated(steps, shapes, copy_of)
    assert graph_gap(layers) == ""
    assert {layer.name: layer.layout for layer in layers}["strided"] == "chw"
    # The flattened batch feeds nothing but the copy: the map is no attention input.
    assert all(layer.role == "" for layer in layers if layer.name == "map")


def test_the_entry_of_a_stage_s_first_attention_is_its_norm_not_the_stream() -> None:
    """A stage that starts with a patch merging (transformers' Swin), not a residual add:
    the merged tokens feed the block's skip connection and its norm; the norm is where
    the attention starts (the grad-cam package's target), the merged tokens are the
    stream."""
    steps, shapes = _tokens_from_pixels()
    steps += [
        GraphStep("MatMul", ["tok", "wr"], ["merged"]),
        GraphStep("LayerNormalization", ["merged"], ["ln"]),
        GraphStep("reshape", ["ln"], ["heads"]),  # channels split into heads: unknown
        GraphStep("matmul", ["heads", "heads"], ["scores"]),
        GraphStep("matmul", ["scores", "heads"], ["mixed"]),
        GraphStep("reshape", ["mixed"], ["attn"]),
        GraphStep("add", ["merged", "attn"], ["out"]),
    ]
    shapes |= {"merged": (T, C), "ln": (T, C), "heads": (T, 2, C // 2), "scores": (2, T, T)}
    shapes |= {"mixed": (2, T, C // 2), "attn": (T, C), "out": (T, C)}
    layouts = infer(steps, shapes, "x")
    feeding = attention_inputs(steps, shapes, layouts, set(shapes))
    assert "merged" in feeding and "ln" in feeding
    assert attention_entries(steps, shapes, layouts, feeding) == ["ln"]
    # A post-norm block (the attention reads the stream itself): the stream is the entry.
    post = [s for s in steps if s.outputs[0] not in ("ln",)]
    post = [GraphStep(s.op, ["merged" if i == "ln" else i for i in s.inputs], s.outputs, s.perm) for s in post]
    layouts = infer(post, shapes, "x")
    assert attention_entries(post, shapes, layouts, attention_inputs(post, shapes, layouts, set(shapes))) == ["merged"]
