"""Feature visualisation: activation maximisation, guided backpropagation, the torch twin
of ONNX graphs, `reportgen visualize`, and the report section."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from conftest import SAMPLE, load_json, run_cli
from onnx_models import tiny_cnn
from PIL import Image

from reportgen.analyses.visualize import (
    Prior,
    best_blocks,
    energy_in_box,
    guided_projection,
    synthesize,
    unit_evaluator,
)
from reportgen.data import Preprocess, discover, iter_batches, load_one
from reportgen.errors import UserError
from reportgen.models import load_model
from reportgen.models.base import LOGITS_LAYER
from reportgen.models.onnx_torch import OnnxTorchTwin

ZOO = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"


@pytest.fixture(scope="module", params=["model.onnx", "model.ts"])
def sample_model(request):
    adapter = load_model(SAMPLE / request.param, device="cpu")
    adapter.prepare((64, 64))
    return adapter


@pytest.fixture(scope="module")
def sample_probs() -> np.ndarray:
    adapter = load_model(SAMPLE / "model.onnx", device="cpu")
    adapter.prepare((64, 64))
    ds = discover(SAMPLE / "images")
    logits = np.concatenate([adapter.extract(b.pixels, [])[0] for b in iter_batches(ds, Preprocess((64, 64)), 64)])
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_every_class_is_excited_five_times_its_mean(sample_model, sample_probs: np.ndarray) -> None:
    """The synthesised image's probability of its class is at least 5 x that class's mean
    probability over the sample images."""
    classes = np.arange(6)
    synth = synthesize(
        sample_model.differentiable(),
        LOGITS_LAYER,
        classes,
        (64, 64),
        3,
        (0.485, 0.456, 0.406),
        (0.229, 0.224, 0.225),
        seed=0,
        evaluate=unit_evaluator(sample_model, LOGITS_LAYER),
    )
    pre = Preprocess((64, 64))
    x = ((synth.images - np.array(pre.mean)) / np.array(pre.std)).transpose(0, 3, 1, 2).astype(np.float32)
    probs = _softmax(sample_model.extract(x, [])[0])
    for c in classes:
        assert probs[c, c] >= 5 * sample_probs[:, c].mean(), (c, probs[c, c], sample_probs[:, c].mean())
    assert np.all(synth.values > synth.start)  # the final image beats the start
    assert synth.responded.all()


def test_a_unit_that_cannot_respond_is_reported(tmp_path: Path) -> None:
    """A dead channel (all its weights zero) is constant: no run can raise it, and after
    its restarts it is reported as not responding rather than shown as a success."""
    path = tiny_cnn(tmp_path / "m.onnx", classes=3)
    model = onnx.load(str(path))
    for init in model.graph.initializer:
        if init.name in ("w2", "b2"):
            w = onnx.numpy_helper.to_array(init).copy()
            w[0] = 0.0
            init.CopyFrom(onnx.numpy_helper.from_array(w, init.name))
    onnx.save(model, str(path))
    adapter = load_model(path, device="cpu")
    adapter.prepare((32, 32))
    prior = Prior(steps=12, restarts=2)
    synth = synthesize(
        adapter.differentiable(),
        "relu2/out",
        np.array([0, 1]),
        (32, 32),
        3,
        (0.5, 0.5, 0.5),
        (0.25, 0.25, 0.25),
        prior=prior,
        seed=0,
        evaluate=unit_evaluator(adapter, "relu2/out"),
    )
    assert list(synth.responded) == [False, True]
    assert list(synth.runs) == [3, 1]
    assert synth.values[0] == synth.start[0] == 0.0


def test_the_cue_class_draws_its_cue(sample_model, manifest) -> None:
    """The triangle unit paints the magenta corner mark: its synthesised image has most of
    its deviation from grey in the 16x16 cue corner (1/16 of the image), and the corner is
    magenta (red and blue above green)."""
    cue = manifest["spurious_cue"]
    target = manifest["classes"].index(cue["class"])
    synth = synthesize(
        sample_model.differentiable(),
        LOGITS_LAYER,
        np.array([target]),
        (64, 64),
        3,
        (0.485, 0.456, 0.406),
        (0.229, 0.224, 0.225),
        seed=0,
        evaluate=unit_evaluator(sample_model, LOGITS_LAYER),
    )
    share = energy_in_box(synth.images, tuple(cue["region"]))[0]
    assert share > 3 * (16 * 16) / (64 * 64), share
    x0, y0, x1, y1 = cue["region"]
    corner = synth.images[0, y0:y1, x0:x1].reshape(-1, 3).mean(axis=0)
    assert corner[0] > corner[1] + 0.1 and corner[2] > corner[1] + 0.1, corner


def test_block_search_finds_the_cue(sample_model, manifest) -> None:
    """The foothold of the cue class is a magenta block inside the cue's corner."""
    cue = manifest["spurious_cue"]
    target = manifest["classes"].index(cue["class"])
    ((top, left, colour),) = best_blocks(
        unit_evaluator(sample_model, LOGITS_LAYER),
        np.array([target]),
        (64, 64),
        3,
        (0.485, 0.456, 0.406),
        (0.229, 0.224, 0.225),
        False,
    )
    x0, y0, x1, y1 = cue["region"]
    assert x0 <= left < x1 and y0 <= top < y1 and list(colour) == [1.0, 0.0, 1.0]


def test_deterministic_for_a_seed(sample_model) -> None:
    model = sample_model.differentiable()
    prior = Prior(steps=20)
    args = (model, LOGITS_LAYER, np.array([1, 2]), (64, 64), 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
    evaluate = unit_evaluator(sample_model, LOGITS_LAYER)
    a = synthesize(*args, prior=prior, seed=4, evaluate=evaluate).images
    b = synthesize(*args, prior=prior, seed=4, evaluate=evaluate).images
    c = synthesize(*args, prior=prior, seed=5, evaluate=evaluate).images
    assert np.array_equal(a, b) and not np.array_equal(a, c)


def test_guided_projection_finds_the_cue(sample_model, manifest) -> None:
    cue = manifest["spurious_cue"]
    files = sorted((SAMPLE / "images" / cue["class"]).glob("*.jpg"))[:8]
    files = [f for f in files if f"{cue['class']}/{f.name}" not in manifest["cue_missing"]]
    pre = Preprocess((64, 64))
    x = np.stack([load_one(f, pre)[0] for f in files])
    proj = guided_projection(
        sample_model.differentiable(), x, LOGITS_LAYER, np.full(len(x), manifest["classes"].index(cue["class"]))
    )
    assert proj.shape == (len(x), 64, 64, 3) and proj.min() >= 0 and proj.max() <= 1
    assert np.median(energy_in_box(proj, tuple(cue["region"]))) > 3 * (16 * 16) / (64 * 64)


def test_channel_units_and_torch_twin_gradients_agree() -> None:
    """The ONNX twin's input gradients equal TorchScript's autograd on the same weights."""
    onnx_model = load_model(SAMPLE / "model.onnx", device="cpu")
    ts_model = load_model(SAMPLE / "model.ts", device="cpu")
    for m in (onnx_model, ts_model):
        m.prepare((64, 64))
    ds = discover(SAMPLE / "images")
    x = next(iter_batches(ds, Preprocess((64, 64)), 6)).pixels
    for layer, units in (("relu_3", np.arange(6) * 7), (LOGITS_LAYER, np.arange(6))):
        va, ga = onnx_model.differentiable().gradient(x, layer, units)
        vb, gb = ts_model.differentiable().gradient(x, layer, units)
        assert np.allclose(va, vb, rtol=1e-4, atol=1e-5) and np.allclose(ga, gb, rtol=1e-3, atol=1e-6)


@pytest.mark.parametrize("name", ["light_squeezenet", "light_densenet121", "light_inception_v1", "light_shufflenet"])
def test_torch_twin_matches_onnx_runtime_on_zoo_graphs(name: str) -> None:
    """Opset-9 model-zoo graphs whose weights come from ConstantOfShape nodes."""
    path = ZOO / f"{name}.onnx"
    adapter = load_model(path, device="cpu")
    adapter.prepare(adapter.info.input_size_hint)
    twin = OnnxTorchTwin(adapter.fixed, adapter.input_name, adapter.output_name, torch.device("cpu"))
    x = np.random.default_rng(0).standard_normal((1, 3, *adapter.info.input_size_hint)).astype(np.float32)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    expected = sess.run(None, {adapter.input_name: x})[0].reshape(1, -1)
    with torch.inference_mode():
        got = twin.run(torch.from_numpy(x))[0].numpy().reshape(1, -1)
    assert np.allclose(got, expected, rtol=1e-3, atol=1e-4 * (np.abs(expected).max() + 1))


def test_unsupported_operator_is_reported(tmp_path: Path) -> None:
    path = tiny_cnn(tmp_path / "m.onnx", classes=3)
    model = onnx.load(str(path))
    for node in model.graph.node:
        if node.op_type == "Relu" and node.output[0] == "relu2/out":
            node.op_type = "Softsign"  # a real ONNX operator the twin does not implement
    onnx.save(model, str(path))
    adapter = load_model(path, device="cpu")
    adapter.prepare((32, 32))
    with pytest.raises(UserError, match=r"cannot be differentiated.*Softsign"):
        adapter.differentiable()
    result = run_cli("visualize", path, "--target", "1", "-o", tmp_path / "v.png")
    assert result.code == 2 and "cannot be differentiated" in result.err and "Traceback" not in result.err


@pytest.mark.parametrize("model", ["model.onnx", "model.ts", "model.pt2"])
def test_visualize_command(tmp_path: Path, model: str) -> None:
    out = tmp_path / "unit.png"
    result = run_cli("visualize", SAMPLE / model, "--target", "5", "--steps", "40", "-o", out)
    assert result.code == 0, result.err
    assert Image.open(out).size == (64, 64)
    result = run_cli("visualize", SAMPLE / model, "--layer", "relu_3", "--channel", "3", "--steps", "20", "-o", out)
    assert result.code == 0, result.err
    for args, message in (
        ([], "either --layer"),
        (["--target", "5", "--layer", "relu_3", "--channel", "1"], "either --layer"),
        (["--layer", "relu_3", "--channel", "999"], "out of range"),
        (["--channel", "1"], "--channel needs --layer"),
    ):
        result = run_cli("visualize", SAMPLE / model, *args, "-o", out)
        assert result.code == 2 and message in result.err, (args, result.err)


def test_units_section_in_the_report(tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    result = run_cli(
        "audit",
        SAMPLE / "model.onnx",
        SAMPLE / "images",
        "-o",
        out,
        "-q",
        "--no-tsne",
        "--units",
        "2",
        "--unit-steps",
        "40",
    )
    assert result.code == 0, result.err
    units = load_json(out)["units"]
    assert [g["heading"] for g in units["groups"]][-1] == "Classes"
    assert len(units["groups"]) == 3 and len(units["groups"][-1]["units"]) == 6
    assert all(len(u["top"]) == 4 for g in units["groups"] for u in g["units"])
    html = out.read_text()
    assert 'id="units"' in html and html.count('data-thumb="unit:') == 2 + 2 + 6 and 'data-thumb="gbp:' in html


@pytest.mark.parametrize(
    "options",
    [
        {"opset": 9, "softmax": True},
        {"output_4d": True, "input_name": "a/b:0"},
        {"batch": 1},
        {"opset": 17, "nan_above": 5.0},
    ],
)
def test_torch_twin_matches_onnx_runtime_on_odd_graphs(tmp_path: Path, options: dict) -> None:
    path = tiny_cnn(tmp_path / "m.onnx", **options)
    adapter = load_model(path, device="cpu")
    adapter.prepare((32, 32))
    model = adapter.differentiable()  # checks the twin against ONNX Runtime itself
    x = np.random.default_rng(1).standard_normal((1, 3, 32, 32)).astype(np.float32)
    _, grad = model.gradient(x, LOGITS_LAYER, np.array([1]))
    assert grad.shape == x.shape and np.isfinite(grad).all()
    # Finite differences of ONNX Runtime itself along the gradient agree with it.  A
    # softmax-ended model's output units are its logits (the input of the softmax).
    assert (adapter.score_layer is not None) == bool(options.get("softmax"))

    def score(z: np.ndarray) -> float:
        outputs, taps = adapter.extract(z, [adapter.score_layer] if adapter.score_layer else [])
        return float((taps[adapter.score_layer] if adapter.score_layer else outputs)[0, 1])

    direction = grad / np.linalg.norm(grad)
    h = 1e-2
    assert (score(x + h * direction) - score(x - h * direction)) / (2 * h) == pytest.approx(
        np.linalg.norm(grad), rel=0.05
    )


def test_torch_twin_on_an_exported_resnet(tmp_path: Path) -> None:
    import torchvision

    torch.manual_seed(0)
    net = torchvision.models.resnet18(num_classes=4).eval()
    path = tmp_path / "r18.onnx"
    torch.onnx.export(
        net,
        (torch.zeros(1, 3, 64, 64),),
        str(path),
        dynamo=False,
        input_names=["x"],
        dynamic_axes={"x": {0: "n"}},
        opset_version=17,
    )
    adapter = load_model(path, device="cpu")
    adapter.prepare((64, 64))
    x = np.random.default_rng(2).standard_normal((2, 3, 64, 64)).astype(np.float32)
    _, grad = adapter.differentiable().gradient(x, LOGITS_LAYER, np.array([0, 3]))
    xt = torch.from_numpy(x).requires_grad_(True)
    out = net(xt)
    (ref,) = torch.autograd.grad(out[0, 0] + out[1, 3], xt)
    assert np.allclose(grad, ref.numpy(), rtol=1e-3, atol=1e-5)
