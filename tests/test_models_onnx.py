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
