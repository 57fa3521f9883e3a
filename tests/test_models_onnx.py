"""The ONNX adapter: input description, layer discovery, pooled taps, fixed batch sizes."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx_models import tiny_cnn

from reportgen.errors import UserError
from reportgen.models import default_layers, last_spatial_layer, load_model


def _reference_run(path: Path, x: np.ndarray, names: list[str]) -> dict[str, np.ndarray]:
    """Full intermediate maps straight from ONNX Runtime, with no reportgen code."""
    model = onnx.load(str(path))
    for name in names:
        model.graph.output.append(onnx.ValueInfoProto(name=name))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    outs = sess.run(None, {sess.get_inputs()[0].name: x})
    return dict(zip([o.name for o in sess.get_outputs()], outs, strict=True))


def test_layers_defaults_and_pooled_features(tmp_path: Path) -> None:
    path = tiny_cnn(tmp_path / "m.onnx", size=None)
    adapter = load_model(path, device="cpu")
    assert adapter.info.input_size_hint is None and adapter.info.channels == 3
    adapter.prepare((24, 20))
    names = [layer.name for layer in adapter.layers()]
    assert names == ["conv1/out", "relu1/out", "pool1/out", "conv2/out", "relu2/out", "gap/out", "flat/out"]
    shapes = {layer.name: layer.shape for layer in adapter.layers()}
    assert shapes["relu1/out"] == (8, 24, 20) and shapes["relu2/out"] == (16, 12, 10)
    assert default_layers(adapter.layers(), adapter.num_outputs) == [
        "input",
        "relu1/out",
        "relu2/out",
        "flat/out",
        "logits",
    ]
    assert last_spatial_layer(adapter.layers()) == "relu2/out"
    x = np.random.default_rng(1).standard_normal((5, 3, 24, 20)).astype(np.float32)
    scores, feats = adapter.extract(x, ["relu1/out", "relu2/out", "flat/out"])
    ref = _reference_run(path, x, ["relu1/out", "relu2/out", "flat/out"])
    assert np.allclose(scores, ref["logits/raw"], atol=1e-5)
    assert np.allclose(feats["relu1/out"], ref["relu1/out"].mean(axis=(2, 3)), atol=1e-5)
    assert np.allclose(feats["relu2/out"], ref["relu2/out"].mean(axis=(2, 3)), atol=1e-5)
    assert np.allclose(feats["flat/out"], ref["flat/out"], atol=1e-6)


def test_fixed_batch_of_one_runs_any_batch(tmp_path: Path) -> None:
    path = tiny_cnn(tmp_path / "b1.onnx", batch=1)
    adapter = load_model(path, device="cpu")
    assert adapter.info.fixed_batch == 1 and adapter.info.input_size_hint == (32, 32)
    adapter.prepare((32, 32))
    x = np.random.default_rng(2).standard_normal((3, 3, 32, 32)).astype(np.float32)
    scores, feats = adapter.extract(x, ["relu2/out"])
    ref = np.concatenate([_reference_run(path, x[i : i + 1], [])["logits/raw"] for i in range(3)])
    assert scores.shape == (3, 4) and np.allclose(scores, ref, atol=1e-5)
    assert feats["relu2/out"].shape == (3, 16)


def test_nchw_output_and_slashes_in_input_name(tmp_path: Path) -> None:
    path = tiny_cnn(tmp_path / "m.onnx", output_4d=True, input_name="images/input:0")
    adapter = load_model(path, device="cpu")
    adapter.prepare((32, 32))
    x = np.zeros((2, 3, 32, 32), np.float32)
    scores, _ = adapter.extract(x, [])
    assert scores.shape == (2, 4)


def test_metadata_is_read_and_untrusted(tmp_path: Path) -> None:
    meta = {
        "reportgen": '{"classes": ["a", "b", "c", "d"], "input_size": [32, 32], "mean": "oops"}',
        "author": "<b>x</b>",
    }
    adapter = load_model(tiny_cnn(tmp_path / "m.onnx", metadata=meta), device="cpu")
    assert adapter.info.embedded.classes == ["a", "b", "c", "d"]
    assert adapter.info.embedded.mean is None  # wrong type dropped
    assert adapter.info.properties["metadata.author"] == "<b>x</b>"  # kept verbatim; escaped at render


def test_unknown_layer_and_bad_files(tmp_path: Path) -> None:
    adapter = load_model(tiny_cnn(tmp_path / "m.onnx"), device="cpu")
    adapter.prepare((32, 32))
    with pytest.raises(UserError, match="no layer named"):
        adapter.extract(np.zeros((1, 3, 32, 32), np.float32), ["nope"])
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"definitely not protobuf")
    with pytest.raises(UserError, match="cannot read ONNX"):
        load_model(bad)
    with pytest.raises(UserError, match="not found"):
        load_model(tmp_path / "missing.onnx")


def test_two_input_model_is_refused(tmp_path: Path) -> None:
    path = tiny_cnn(tmp_path / "m.onnx")
    model = onnx.load(str(path))
    extra = copy.deepcopy(model.graph.input[0])
    extra.name = "second"
    model.graph.input.append(extra)
    onnx.save(model, str(path))
    with pytest.raises(UserError, match="2 inputs"):
        load_model(path)


def _with_extra_nodes(path: Path, nodes: list, inits: list, output_from: str | None = None) -> Path:
    """tiny_cnn with nodes added (and, optionally, its output replaced by ``output_from``)."""
    model = onnx.load(str(path))
    model.graph.node.extend(nodes)
    model.graph.initializer.extend(inits)
    if output_from is not None:
        del model.graph.output[:]
        model.graph.output.append(onnx.helper.make_tensor_value_info(output_from, onnx.TensorProto.FLOAT, None))
    onnx.save(model, str(path))
    return path


def test_a_tensor_whose_first_size_is_the_probe_batch_is_no_layer(tmp_path: Path) -> None:
    """Swin's (2, 7) coordinate tables: a tensor that depends on the input but whose first
    size is a constant 2 must not be taken for a per-image tensor (it crashed extraction
    with a numpy broadcasting error at batch 32)."""
    from onnx import helper, numpy_helper

    path = tiny_cnn(tmp_path / "m.onnx", size=None, opset=13)
    table = np.arange(14, dtype=np.float32).reshape(2, 7)
    nodes = [
        helper.make_node("ReduceMean", ["input"], ["table/scalar"], keepdims=0),
        helper.make_node("Mul", ["table/scalar", "table/const"], ["table/out"]),
        helper.make_node("ReduceSum", ["table/out"], ["table/sum"], keepdims=0),
        helper.make_node("Mul", ["table/sum", "zero_f"], ["table/zero"]),
        helper.make_node("Add", ["logits/raw", "table/zero"], ["logits/final"]),
    ]
    inits = [numpy_helper.from_array(table, "table/const"), numpy_helper.from_array(np.float32(0.0), "zero_f")]
    _with_extra_nodes(path, nodes, inits, output_from="logits/final")
    adapter = load_model(path, device="cpu")
    adapter.prepare((16, 16))
    assert "table/out" not in {layer.name for layer in adapter.layers()}
    assert adapter.batch is None
    x = np.random.default_rng(0).standard_normal((32, 3, 16, 16)).astype(np.float32)
    scores, feats = adapter.extract(x, [layer.name for layer in adapter.layers()])
    assert scores.shape == (32, 4) and all(f.shape[0] == 32 for f in feats.values())


def test_a_graph_baked_at_its_export_batch_runs_at_that_batch(tmp_path: Path) -> None:
    """Declared dynamic, but a Reshape holds the export's literal batch of 2: found at
    load, and every batch is then run in chunks of 2."""
    from onnx import helper, numpy_helper

    path = tiny_cnn(tmp_path / "m.onnx", size=None, opset=13)
    nodes = [helper.make_node("Reshape", ["logits/raw", "baked/shape"], ["logits/baked"])]
    inits = [numpy_helper.from_array(np.array([2, 4], np.int64), "baked/shape")]
    _with_extra_nodes(path, nodes, inits, output_from="logits/baked")
    adapter = load_model(path, device="cpu")
    assert adapter.info.fixed_batch is None
    adapter.prepare((16, 16))
    assert adapter.batch == 2
    # The report is told, with the reason the free batch size failed (ORT's, at batch 3).
    (note,) = adapter.notes
    assert "runs only at batch 2" in note and "at batch 3:" in note and "{3,4}" in note
    x = np.random.default_rng(0).standard_normal((5, 3, 16, 16)).astype(np.float32)
    scores, _ = adapter.extract(x, [])
    reference = _reference_run(path, x[:2], [])["logits/baked"]
    assert scores.shape == (5, 4) and np.allclose(scores[:2], reference, atol=1e-5)


def test_a_graph_that_runs_at_no_batch_says_why_it_failed_first(tmp_path: Path) -> None:
    """Baked at a batch of 7: every probe fails; the error is the first one (batch 3),
    not the last."""
    from onnx import helper, numpy_helper

    path = tiny_cnn(tmp_path / "m.onnx", size=None, opset=13)
    nodes = [helper.make_node("Reshape", ["logits/raw", "baked/shape"], ["logits/baked"])]
    inits = [numpy_helper.from_array(np.array([7, 4], np.int64), "baked/shape")]
    _with_extra_nodes(path, nodes, inits, output_from="logits/baked")
    adapter = load_model(path, device="cpu")
    with pytest.raises(UserError, match=r"at every batch size tried \(3, 2, 1\)") as info:
        adapter.prepare((16, 16))
    assert "{3,4}" in str(info.value) and "{1,4}" not in str(info.value)
