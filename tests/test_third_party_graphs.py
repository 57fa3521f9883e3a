"""Graphs nobody here wrote: PaddlePaddle-style -1 sizes, softmax-ended outputs, size errors.

The models are built to reproduce what a real PaddlePaddle export (the text-orientation
classifier of ``rapidocr-onnxruntime``) does: input stored as [-1, 3, -1, -1], output
``Softmax -> Identity`` with logits so large that most images get probability 1.0.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from conftest import assert_no_traceback, load_json, run_cli
from onnx_models import size_sensitive_fpn, softmax_ended_cnn, softmax_ended_weights
from PIL import Image
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
from scipy.special import log_softmax

from reportgen.analyses.cam import compute_cam
from reportgen.analyses.metrics import log_odds
from reportgen.data import Preprocess, load_one
from reportgen.models import last_spatial_layer, load_model

SIZE = (32, 32)


class SoftmaxNet(torch.nn.Module):
    """The ONNX graph of :func:`softmax_ended_cnn` in eager torch, with the ReLUs as
    modules so the grad-cam package can hook the tensor reportgen targets."""

    def __init__(self, weights: dict[str, np.ndarray], softmax: bool = True):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = torch.nn.Conv2d(8, 16, 3, padding=1)
        self.fc = torch.nn.Linear(16, weights["fc_w"].shape[1])
        self.relu1 = torch.nn.ReLU()
        self.relu2 = torch.nn.ReLU()
        self.softmax = softmax
        with torch.no_grad():
            self.conv1.weight.copy_(torch.from_numpy(weights["w1"]))
            self.conv1.bias.copy_(torch.from_numpy(weights["b1"]))
            self.conv2.weight.copy_(torch.from_numpy(weights["w2"]))
            self.conv2.bias.copy_(torch.from_numpy(weights["b2"]))
            self.fc.weight.copy_(torch.from_numpy(weights["fc_w"].T.copy()))
            self.fc.bias.copy_(torch.from_numpy(weights["fc_b"]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.max_pool2d(self.relu1(self.conv1(x)), 2)
        x = self.relu2(self.conv2(x))
        logits = self.fc(x.mean((2, 3)))
        return torch.softmax(logits, dim=1) if self.softmax else logits


def _pixels(n: int = 48, seed: int = 3) -> np.ndarray:
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, 3, *SIZE)).astype(np.float32)
    # Blobs of different colours and places, so classes and maps differ between images.
    for i in range(n):
        y0, x0 = rng.integers(0, 20, 2)
        x[i, i % 3, y0 : y0 + 12, x0 : x0 + 12] += 3.0
    return x


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.corrcoef(a.ravel(), b.ravel())[0, 1])


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The same softmax-ended network as ONNX (Paddle-style), TorchScript and torch.export."""
    base = tmp_path_factory.mktemp("softmax_models")
    out = {"onnx": softmax_ended_cnn(base / "cls.onnx")}
    net = SoftmaxNet(softmax_ended_weights()).eval()
    example = torch.from_numpy(_pixels(2))
    torch.jit.save(torch.jit.trace(net, example), str(base / "cls.ts"))
    out["torchscript"] = base / "cls.ts"
    program = torch.export.export(net, (example,), dynamic_shapes=({0: torch.export.Dim("batch", min=1)},))
    torch.export.save(program, str(base / "cls.pt2"))
    out["torch.export"] = base / "cls.pt2"
    return out


def test_minus_one_sizes_are_free_sizes(models: dict[str, Path]) -> None:
    adapter = load_model(models["onnx"], device="cpu")
    assert adapter.info.fixed_batch is None and adapter.info.input_size_hint is None
    assert not adapter.info.static_size
    adapter.prepare(SIZE)
    scores, _ = adapter.extract(_pixels(5), [])  # a batch of 5: not hard-wired to any batch
    assert scores.shape == (5, 3)


@pytest.mark.parametrize("fmt", ["onnx", "torchscript", "torch.export"])
def test_confident_images_get_the_logit_map(models: dict[str, Path], fmt: str) -> None:
    """Maps of images at probability 1.0 are real maps, equal to Grad-CAM of the logit."""
    adapter = load_model(models[fmt], device="cpu")
    adapter.prepare(SIZE)
    assert adapter.score_layer is not None, "the softmax at the end was not found"
    x = _pixels()
    probs, _ = adapter.extract(x, [])
    targets = probs.argmax(axis=1)
    confident = np.flatnonzero(probs[np.arange(len(x)), targets] == np.float32(1.0))
    assert len(confident) >= 10, "the fixture must saturate the softmax"
    ours = compute_cam("gradcam", adapter.split(last_spatial_layer(adapter.layers())), x, targets, SIZE)
    # Independent: the grad-cam package on the same network without its softmax (the logit).
    net = SoftmaxNet(softmax_ended_weights(), softmax=False).eval()
    with GradCAM(model=net, target_layers=[net.relu2]) as cam:
        ref = cam(input_tensor=torch.from_numpy(x), targets=[ClassifierOutputTarget(int(t)) for t in targets])
    with torch.no_grad():
        logits = net(torch.from_numpy(x)).numpy()
    assert np.allclose(ours.scores, logits[np.arange(len(x)), targets], rtol=1e-4, atol=1e-3)
    for i in confident:
        assert ours.maps[i].std() > 0, f"image {i}: constant map"
        if ref[i].std() > 0:
            assert _corr(ours.maps[i], ref[i]) >= 0.99, i


def _noise_folder(root: Path, per_class: int = 12) -> Path:
    rng = np.random.default_rng(7)
    for c, name in enumerate(("left", "right")):
        for i in range(per_class):
            arr = rng.integers(0, 80, (32, 32, 3)).astype(np.uint8)
            y0 = rng.integers(0, 16)
            x0 = (0 if c == 0 else 16) + rng.integers(0, 4)
            arr[y0 : y0 + 14, x0 : x0 + 12, (i + c) % 3] = 255
            path = root / name / f"img{i:02d}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr).save(path)
    return root


def _logits_session(model: Path) -> ort.InferenceSession:
    """ONNX Runtime on the same file, its output moved to the logits (before the softmax)."""
    proto = onnx.load(str(model))
    del proto.graph.output[:]
    proto.graph.output.append(onnx.helper.make_tensor_value_info("logit", onnx.TensorProto.FLOAT, None))
    for value in proto.graph.input:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_value < 0:
                dim.Clear()
                dim.dim_param = "any"
    return ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])


def test_audit_of_a_paddle_style_model_ranks_by_logit(tmp_path: Path) -> None:
    model = softmax_ended_cnn(tmp_path / "cls.onnx", classes=2, scale=80.0, seed=1)
    images = _noise_folder(tmp_path / "images")
    out = tmp_path / "out" / "report.html"
    result = run_cli(
        "audit", model, images, "-o", out, "-q", "--size", "32", "--no-tsne", "--gallery-size", "4", "--channels", "0"
    )
    assert_no_traceback(result)
    assert result.code == 0, result.err
    report = load_json(out)
    assert report["cam"]["explains"] == "logits before softmax"
    assert report["cam"]["blank_maps"] == 0
    pre = Preprocess.from_fingerprint(report["preprocessing"])
    files = [p["file"] for p in report["predictions"]]
    x = np.stack([load_one(images / f, pre)[0] for f in files])
    (logits,) = _logits_session(model).run(None, {"x": x})
    saturated = 0
    for c, name in enumerate(report["classes"]):
        own = [i for i, p in enumerate(report["predictions"]) if p["label"] == name]
        margin = logits[own, c] - logits[own, 1 - c]
        expected = [files[own[j]] for j in np.argsort(-margin, kind="stable")[:4]]
        shown = report["galleries"][name]["max"]
        assert [t["file"] for t in shown] == expected
        assert all(not t["blank_map"] for t in shown)
        saturated += sum(t["score"] == 1.0 for t in shown)
    # The test means something only if the old ranking (by probability) would have tied.
    assert saturated >= 4
    html = out.read_text()
    assert "logit, taken before the model" in html


def test_log_odds_order_saturated_rows() -> None:
    logits = np.array([[40.0, 0.0, -3.0], [900.0, 0.0, 1.0], [47.0, 1.0, 2.0], [0.0, 3.0, 0.5]], np.float32)
    odds = log_odds(logits)
    # Independent: log(p / (1 - p)) by scipy where p is representable, the margin beyond.
    lp = log_softmax(logits.astype(np.float64), axis=1)
    p = np.exp(lp)
    fine = p < 1 - 1e-9
    assert np.allclose(odds[fine], lp[fine] - np.log1p(-p[fine]), rtol=1e-9)
    assert odds[1, 0] == pytest.approx(900.0 - np.logaddexp(0.0, 1.0))
    assert list(np.argsort(-odds[:, 0])) == [1, 2, 0, 3]


def test_a_blank_map_is_said_to_be_blank(tmp_path: Path) -> None:
    """Class 0's head weights are all negative: every ReLU'd map of class 0 is zero, and the
    report says so instead of drawing empty overlays."""
    model = softmax_ended_cnn(tmp_path / "cls.onnx", classes=2, scale=1.0, seed=2)
    proto = onnx.load(str(model))
    for init in proto.graph.initializer:
        if init.name == "fc_w":
            w = onnx.numpy_helper.to_array(init).copy()
            w[:, 0] = -np.abs(w[:, 0])
            init.CopyFrom(onnx.numpy_helper.from_array(w, "fc_w"))
    onnx.save(proto, str(model))
    images = _noise_folder(tmp_path / "images", per_class=6)
    out = tmp_path / "out" / "report.html"
    result = run_cli(
        "audit", model, images, "-o", out, "-q", "--size", "32", "--no-tsne", "--gallery-size", "3", "--channels", "0"
    )
    assert result.code == 0, result.err
    report = load_json(out)
    tiles = report["galleries"]["left"]["max"] + report["galleries"]["left"]["min"]
    assert tiles and all(t["blank_map"] for t in tiles)
    assert report["cam"]["blank_maps"] >= len(tiles)
    html = out.read_text()
    assert "map(s) came out zero everywhere" in html and "blank map:" in html
    single = run_cli(
        "cam", model, images / "left" / "img00.png", "--target", "0", "--size", "32", "-o", tmp_path / "m.npy"
    )
    assert single.code == 0, single.err
    assert "zero everywhere" in single.err
    assert not np.load(tmp_path / "m.npy").any()


def test_size_errors_name_the_size(tmp_path: Path) -> None:
    model = size_sensitive_fpn(tmp_path / "det.onnx")
    images = _noise_folder(tmp_path / "images", per_class=1)
    result = run_cli("audit", model, images, "-o", tmp_path / "o" / "r.html", "-q", "--size", "30")
    assert result.code == 2
    assert_no_traceback(result)
    line = result.err.strip()
    assert "30x30" in line and "multiples of 4" in line and "--size 32x32" in line, line
    assert len(line.splitlines()) == 1


def test_debug_after_the_command_is_accepted(tmp_path: Path) -> None:
    missing = tmp_path / "missing.onnx"
    for args in (("--debug", "audit", missing, tmp_path), ("audit", missing, tmp_path, "--debug")):
        result = run_cli(*args)
        assert result.code == 2
        assert "unrecognized arguments" not in result.err
        assert "model file not found" in result.err
