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
