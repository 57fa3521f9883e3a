"""Tiny ONNX classifiers built with ``onnx.helper``, for tests of odd models.

Every variant is the same small CNN: Conv(3x3) -> Relu -> MaxPool(2) -> Conv(3x3) ->
Relu -> GlobalAveragePool -> Flatten -> Gemm, with seeded weights; options change the
input contract or the output.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def tiny_cnn(
    path: Path,
    *,
    channels: int = 3,
    size: tuple[int, int] | None = (32, 32),
    batch: int | None = None,
    classes: int = 4,
    opset: int = 13,
    softmax: bool = False,
    output_4d: bool = False,
    input_name: str = "input",
    nan_above: float | None = None,
    constant: bool = False,
    seed: int = 0,
    metadata: dict[str, str] | None = None,
) -> Path:
    """Write the model to ``path`` and return it.

    ``nan_above``: images whose mean input value exceeds it get NaN outputs.
    ``constant``: every weight is zero, so every feature is identical for every image.
    """
    rng = np.random.default_rng(seed)

    def weight(*shape: int) -> np.ndarray:
        if constant:
            return np.zeros(shape, np.float32)
        return (rng.standard_normal(shape) * 0.5).astype(np.float32)

    inits = [
        numpy_helper.from_array(weight(8, channels, 3, 3), "w1"),
        numpy_helper.from_array(weight(8), "b1"),
        numpy_helper.from_array(weight(16, 8, 3, 3), "w2"),
        numpy_helper.from_array(weight(16), "b2"),
        numpy_helper.from_array(weight(classes, 16), "w3"),
        numpy_helper.from_array(weight(classes), "b3"),
    ]
    if constant:
        inits[1] = numpy_helper.from_array(np.ones(8, np.float32), "b1")
    nodes = [
        helper.make_node("Conv", [input_name, "w1", "b1"], ["conv1/out"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv1/out"], ["relu1/out"]),
        helper.make_node("MaxPool", ["relu1/out"], ["pool1/out"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["pool1/out", "w2", "b2"], ["conv2/out"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv2/out"], ["relu2/out"]),
        helper.make_node("GlobalAveragePool", ["relu2/out"], ["gap/out"]),
        helper.make_node("Flatten", ["gap/out"], ["flat/out"], axis=1),
        helper.make_node("Gemm", ["flat/out", "w3", "b3"], ["logits/raw"], transB=1),
    ]
    last = "logits/raw"
    if nan_above is not None:
        inits.append(numpy_helper.from_array(np.array(nan_above, np.float32), "nan_threshold"))
        inits.append(numpy_helper.from_array(np.array(0.0, np.float32), "zero"))
        nodes += [
            helper.make_node("ReduceMean", [input_name], ["nan/mean"], axes=[1, 2, 3], keepdims=0),
            helper.make_node("Sub", ["nan_threshold", "nan/mean"], ["nan/diff"]),
            helper.make_node("Sqrt", ["nan/diff"], ["nan/sqrt"]),
            helper.make_node("Mul", ["nan/sqrt", "zero"], ["nan/zero"]),
            # Unsqueeze took its axes as an attribute before opset 13, as an input since.
            helper.make_node("Unsqueeze", ["nan/zero"], ["nan/col"], axes=[1])
            if opset < 13
            else helper.make_node("Unsqueeze", ["nan/zero", "axes1"], ["nan/col"]),
            helper.make_node("Add", [last, "nan/col"], ["logits/nan"]),
        ]
        if opset >= 13:
            inits.append(numpy_helper.from_array(np.array([1], np.int64), "axes1"))
        last = "logits/nan"
    if softmax:
        nodes.append(helper.make_node("Softmax", [last], ["probs"], axis=1))
        last = "probs"
    if output_4d:
        inits.append(numpy_helper.from_array(np.array([0, classes, 1, 1], np.int64), "shape4"))
        nodes.append(helper.make_node("Reshape", [last, "shape4"], ["out4d"]))
        last = "out4d"
    h, w = size if size is not None else ("height", "width")
    n = batch if batch is not None else "N"
    graph = helper.make_graph(
        nodes,
        "tiny_cnn",
        [helper.make_tensor_value_info(input_name, TensorProto.FLOAT, [n, channels, h, w])],
        [helper.make_tensor_value_info(last, TensorProto.FLOAT, [n, classes, 1, 1] if output_4d else [n, classes])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 4 if opset < 9 else min(model.ir_version, 8)
    for key, value in (metadata or {}).items():
        entry = model.metadata_props.add()
        entry.key = key
        entry.value = value
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def softmax_ended_cnn(path: Path, *, classes: int = 3, scale: float = 60.0, seed: int = 0, opset: int = 11) -> Path:
    """A PaddlePaddle-style export: input ``x`` stored as [-1, 3, -1, -1] (the literal -1
    for "any"), MatMul + Add head, then ``Softmax -> Identity``.  ``scale`` blows the
    logits up so that most images get probability 1.0 in float32.

    Returns the path; :func:`softmax_ended_weights` gives the weights for a torch rebuild.
    """
    w = softmax_ended_weights(classes, scale, seed)
    inits = [numpy_helper.from_array(v, k) for k, v in w.items()]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["conv1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv1"], ["relu1"]),
        helper.make_node("MaxPool", ["relu1"], ["pool1"], kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Conv", ["pool1", "w2", "b2"], ["conv2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["conv2"], ["relu2"]),
        helper.make_node("GlobalAveragePool", ["relu2"], ["gap"]),
        helper.make_node("Flatten", ["gap"], ["flat"], axis=1),
        helper.make_node("MatMul", ["flat", "fc_w"], ["linear"]),
        helper.make_node("Add", ["linear", "fc_b"], ["logit"]),
        helper.make_node("Softmax", ["logit"], ["softmax"], axis=1),
        helper.make_node("Identity", ["softmax"], ["save_infer_model/scale_0.tmp_1"]),
    ]
    graph = helper.make_graph(
        nodes,
        "paddle_like",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, -1, -1])],
        [helper.make_tensor_value_info("save_infer_model/scale_0.tmp_1", TensorProto.FLOAT, [-1, classes])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)], producer_name="PaddlePaddle")
    model.ir_version = 6
    onnx.save(model, str(path))
    return path


def softmax_ended_weights(classes: int = 3, scale: float = 60.0, seed: int = 0) -> dict[str, np.ndarray]:
    """The weights of :func:`softmax_ended_cnn` (ONNX layouts: ``fc_w`` is (in, out))."""
    rng = np.random.default_rng(seed)
    return {
        "w1": (rng.standard_normal((8, 3, 3, 3)) * 0.5).astype(np.float32),
        "b1": (rng.standard_normal(8) * 0.1).astype(np.float32),
        "w2": (rng.standard_normal((16, 8, 3, 3)) * 0.3).astype(np.float32),
        "b2": (rng.standard_normal(16) * 0.1).astype(np.float32),
        "fc_w": (rng.standard_normal((16, classes)) * scale).astype(np.float32),
        "fc_b": np.zeros(classes, np.float32),
    }


def size_sensitive_fpn(path: Path) -> Path:
    """A detector-like graph with free sides that only runs on sides divisible by 4: two
    stride-2 convolutions, upsampled x4 and added back to a full-resolution branch."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array((rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32), "w1"),
        numpy_helper.from_array((rng.standard_normal((4, 4, 3, 3)) * 0.3).astype(np.float32), "w2"),
        numpy_helper.from_array((rng.standard_normal((4, 3, 1, 1)) * 0.3).astype(np.float32), "w0"),
        numpy_helper.from_array(np.array([1, 1, 4, 4], np.float32), "scales"),
        numpy_helper.from_array(np.zeros(0, np.float32), "roi"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Conv", ["c1", "w2"], ["c2"], kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Resize", ["c2", "roi", "scales"], ["up"], mode="nearest"),
        helper.make_node("Conv", ["x", "w0"], ["skip"], kernel_shape=[1, 1]),
        helper.make_node("Add", ["up", "skip"], ["maps"]),
    ]
    graph = helper.make_graph(
        nodes,
        "fpn_like",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [-1, 3, -1, -1])],
        [helper.make_tensor_value_info("maps", TensorProto.FLOAT, [-1, 4, -1, -1])],
        initializer=inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 11)])
    model.ir_version = 6
    onnx.save(model, str(path))
    return path


def endless_loop_cnn(path: Path) -> Path:
    """:func:`tiny_cnn` whose logits pass through a ``Loop`` that never ends (no trip
    count, its condition always true): a model that hangs whoever runs it."""
    tiny_cnn(path)
    model = onnx.load(str(path))
    graph = model.graph
    out = graph.output[0].name
    body = helper.make_graph(
        [
            helper.make_node("Identity", ["cond_in"], ["cond_out"]),
            helper.make_node("Identity", ["carried_in"], ["carried_out"]),
        ],
        "forever",
        [
            helper.make_tensor_value_info("i", TensorProto.INT64, []),
            helper.make_tensor_value_info("cond_in", TensorProto.BOOL, []),
            helper.make_tensor_value_info("carried_in", TensorProto.FLOAT, None),
        ],
        [
            helper.make_tensor_value_info("cond_out", TensorProto.BOOL, []),
            helper.make_tensor_value_info("carried_out", TensorProto.FLOAT, None),
        ],
    )
    graph.initializer.append(numpy_helper.from_array(np.array(True), "always"))
    for node in graph.node:
        node.output[:] = [f"{o}/pre_loop" if o == out else o for o in node.output]
    graph.node.append(helper.make_node("Loop", ["", "always", f"{out}/pre_loop"], [out], body=body))
    onnx.save(model, str(path))
    return path
