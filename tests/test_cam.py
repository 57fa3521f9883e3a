"""The CAM engine on every model format, against the grad-cam package; galleries; `cam`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from conftest import SAMPLE, load_json, run_cli
from onnx_models import tiny_cnn
from PIL import Image
from pytorch_grad_cam import AblationCAM, GradCAM, ScoreCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from reportgen.analyses.cam import compute_cam, mass_in_box, resize_bilinear
from reportgen.data import Preprocess, discover, iter_batches, load_one
from reportgen.models import last_spatial_layer, load_model


def _corr(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pearson correlation per map; two identical flat maps (all zeros) count as equal."""
    out = []
    for u, v in zip(a, b, strict=True):
        if u.std() == 0 or v.std() == 0:
            out.append(1.0 if np.allclose(u, v, atol=1e-6) else 0.0)
        else:
            out.append(np.corrcoef(u.ravel(), v.ravel())[0, 1])
    return np.array(out)


def _sample_eager() -> torch.nn.Module:
    """The sample CNN rebuilt in eager mode from the TorchScript weights, its last ReLU as
    a module so the grad-cam package can hook the same tensor reportgen targets."""
    import sys

    sys.path.insert(0, str(SAMPLE))
    import make_sample

    net = make_sample.build_model()
    net.load_state_dict(torch.jit.load(str(SAMPLE / "model.ts")).state_dict())

    class Hookable(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.net = net
            self.relu4 = torch.nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            n = self.net
            x = F.max_pool2d(F.relu(n.bn1(n.conv1(x))), 2)
            x = F.max_pool2d(F.relu(n.bn2(n.conv2(x))), 2)
            x = F.relu(n.bn3(n.conv3(x)))
            x = self.relu4(n.conv4(x))
            return n.fc(x.mean((2, 3)))

    return Hookable().eval()


@pytest.fixture(scope="module")
def sample_batch() -> np.ndarray:
    ds = discover(SAMPLE / "images")
    picks = [i for i, r in enumerate(ds.records) if i % 9 == 0][:30]
    return next(iter_batches(ds, Preprocess((64, 64)), 64, indices=picks)).pixels


def test_bilinear_matches_torch_interpolate() -> None:
    maps = np.random.default_rng(0).random((3, 7, 5)).astype(np.float32)
    ours = resize_bilinear(maps, (64, 48))
    ref = F.interpolate(torch.from_numpy(maps)[:, None], size=(64, 48), mode="bilinear", align_corners=False)[:, 0]
    assert np.allclose(ours, ref.numpy(), atol=1e-5)


def test_eager_state_dict_equals_grad_cam_package(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=7).eval()
    path = tmp_path / "r18.pth"
    torch.save(model.state_dict(), path)
    x = np.random.default_rng(1).standard_normal((6, 3, 96, 96)).astype(np.float32)
    targets = np.array([0, 1, 2, 3, 4, 5])
    adapter = load_model(path, arch="resnet18", device="cpu")
    adapter.prepare((96, 96))
    ours = compute_cam("gradcam", adapter.split(last_spatial_layer(adapter.layers())), x, targets, (96, 96)).maps
    with GradCAM(model=model, target_layers=[model.layer4[-1]]) as cam:
        ref = cam(input_tensor=torch.from_numpy(x), targets=[ClassifierOutputTarget(int(t)) for t in targets])
    assert np.all(_corr(ours, ref) >= 0.99)


@pytest.mark.parametrize("fmt", ["model.onnx", "model.ts", "model.pt2"])
def test_every_format_equals_eager_grad_cam(sample_batch: np.ndarray, fmt: str) -> None:
    adapter = load_model(SAMPLE / fmt, device="cpu")
    adapter.prepare((64, 64))
    layer = last_spatial_layer(adapter.layers())
    split = adapter.split(layer)
    assert split.differentiable == (fmt != "model.onnx")
    targets = np.arange(len(sample_batch)) % 6
    ours = compute_cam("gradcam", split, sample_batch, targets, (64, 64))
    assert ours.maps.shape == (len(sample_batch), 64, 64) and ours.maps.dtype == np.float32
    assert ours.maps.min() >= 0 and ours.maps.max() <= 1 and not np.isnan(ours.maps).any()
    eager = _sample_eager()
    with GradCAM(model=eager, target_layers=[eager.relu4]) as cam:
        ref = cam(
            input_tensor=torch.from_numpy(sample_batch), targets=[ClassifierOutputTarget(int(t)) for t in targets]
        )
    assert np.all(_corr(ours.maps, ref) >= 0.98)


@pytest.mark.parametrize("model", ["model.onnx", "model.ts", "model.pt2"])
def test_ablation_and_score_cam_equal_the_package(sample_batch: np.ndarray, model: str) -> None:
    """Ablation-CAM and Score-CAM on every format against the grad-cam package's on the
    eager twin of the sample CNN (same weights)."""
    adapter = load_model(SAMPLE / model, device="cpu")
    adapter.prepare((64, 64))
    split = adapter.split(last_spatial_layer(adapter.layers()))
    x = sample_batch[:8]
    targets = np.full(len(x), 5)
    eager = _sample_eager()
    for method, cls, floor in (("ablationcam", AblationCAM, 0.99), ("scorecam", ScoreCAM, 0.98)):
        ours = compute_cam(method, split, x, targets, (64, 64), run_model=lambda z: adapter.extract(z, [])[0]).maps
        with cls(model=eager, target_layers=[eager.relu4]) as cam:
            ref = cam(input_tensor=torch.from_numpy(x), targets=[ClassifierOutputTarget(5)] * len(x))
        assert np.all(_corr(ours, ref) >= floor), method


def test_zero_gradient_gives_zeros_not_nan(tmp_path: Path) -> None:
    adapter = load_model(tiny_cnn(tmp_path / "flat.onnx", constant=True), device="cpu")
    adapter.prepare((32, 32))
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32)).astype(np.float32)
    for method in ("gradcam", "ablationcam", "scorecam"):
        maps = compute_cam(
            method,
            adapter.split("relu2/out"),
            x,
            np.zeros(3, int),
            (32, 32),
            run_model=lambda z: adapter.extract(z, [])[0],
        ).maps
        assert not np.isnan(maps).any() and np.all(maps == 0), method


def test_spurious_cue_draws_the_grad_cam_mass(manifest) -> None:
    """Triangles carry a magenta mark in a 16x16 corner (1/16 of the image): on average
    more than half of each Grad-CAM map's mass must fall there, for every format."""
    cue = manifest["spurious_cue"]
    skip = {m["file"] for m in manifest["mislabeled"]} | set(manifest["cue_missing"])
    files = sorted(str(p.relative_to(SAMPLE / "images")) for p in (SAMPLE / "images" / cue["class"]).glob("*.jpg"))
    files = [f for f in files if f not in skip]
    pre = Preprocess((64, 64))
    x = np.stack([load_one(SAMPLE / "images" / f, pre)[0] for f in files])
    target = manifest["classes"].index(cue["class"])
    for fmt in ("model.onnx", "model.ts"):
        adapter = load_model(SAMPLE / fmt, device="cpu")
        adapter.prepare((64, 64))
        maps = compute_cam(
            "gradcam", adapter.split(last_spatial_layer(adapter.layers())), x, np.full(len(x), target), (64, 64)
        ).maps
        mass = mass_in_box(maps, tuple(cue["region"]))
        assert mass.mean() > 0.5 and np.median(mass) > 0.5, (fmt, mass.mean())
        assert mass.mean() > 5 * (16 * 16) / (64 * 64)  # five times what a uniform map would give


def test_galleries_in_the_report(sample_audits, manifest) -> None:
    for fmt in ("onnx", "torchscript"):
        data = load_json(sample_audits[fmt])
        assert data["cam"]["method"] == "gradcam" and data["cam"]["layer"]
        scores = {p["file"]: p for p in data["predictions"]}
        assert list(data["galleries"]) == data["classes"]
        for cls, g in data["galleries"].items():
            assert len(g["max"]) == len(g["min"]) == len(g["wrong"]) == 6
            assert all(scores[t["file"]]["label"] == cls for t in g["max"] + g["min"])
            assert all(scores[t["file"]]["label"] != cls for t in g["wrong"])
            assert [t["score"] for t in g["max"]] == sorted((t["score"] for t in g["max"]), reverse=True)
            assert [t["score"] for t in g["min"]] == sorted(t["score"] for t in g["min"])
            assert min(t["score"] for t in g["max"]) >= max(t["score"] for t in g["min"])
        # The shortcut shows: images of other classes carrying the cue top the wrong gallery.
        wrong = [t["file"] for t in data["galleries"][manifest["spurious_cue"]["class"]]["wrong"]]
        assert len(set(wrong) & set(manifest["cue_on_other"])) >= 3
        assert data["channels"]["layer"] == data["cam"]["layer"] and len(data["channels"]["items"]) == 8
        html = sample_audits[fmt].read_text()
        assert 'id="galleries"' in html and 'id="channels"' in html
        assert html.count('data-thumb="cam:') >= 6 * 3 * 6


@pytest.mark.parametrize("model", ["model.onnx", "model.ts", "model.pt2", "resnet"])
def test_cam_command_on_every_format(tmp_path: Path, model: str) -> None:
    image = SAMPLE / "images" / "triangle" / "img_0080.jpg"
    extra: list[str] = []
    if model == "resnet":
        torch.manual_seed(0)
        path = tmp_path / "r18.pth"
        torch.save(torchvision.models.resnet18(num_classes=6).state_dict(), path)
        extra = ["--arch", "resnet18", "--size", "64"]
    else:
        path = SAMPLE / model
    npy = tmp_path / "map.npy"
    result = run_cli("cam", path, image, "-o", npy, "--target", "5", *extra)
    assert result.code == 0, result.err
    cam = np.load(npy)
    assert cam.shape == (64, 64) and cam.dtype == np.float32 and cam.min() == 0 and cam.max() == 1
    png = tmp_path / "map.png"
    result = run_cli("cam", path, image, "-o", png, "--cam", "ablationcam", *extra)
    assert result.code == 0, result.err
    # The overlay keeps the image's shape, enlarged by a whole factor to be viewable
    # (the sample's images are 64 px): at least 512 px on the longer side.
    w, h = Image.open(image).size
    factor = -(-512 // max(w, h))
    assert Image.open(png).size == (w * factor, h * factor)


def test_cam_command_errors(tmp_path: Path) -> None:
    image = SAMPLE / "images" / "triangle" / "img_0080.jpg"
    for args, message in (
        (["-o", tmp_path / "x.jpg"], "must end in .npy"),
        (["-o", tmp_path / "x.npy", "--target", "unicorn"], "neither a class name"),
        (["-o", tmp_path / "x.npy", "--target", "9"], "out of range"),
        (["-o", tmp_path / "x.npy", "--layer", "nope"], "no layer named"),
    ):
        result = run_cli("cam", SAMPLE / "model.onnx", image, *args)
        assert result.code == 2 and message in result.err and "Traceback" not in result.err


def test_onnx_non_affine_head_falls_back_to_per_image_differences(sample_batch: np.ndarray) -> None:
    """Cut one stage earlier, the head holds a conv and a ReLU: the affine shortcut must
    notice and differentiate each image on its own."""
    maps = {}
    for fmt in ("model.onnx", "model.ts"):
        adapter = load_model(SAMPLE / fmt, device="cpu")
        adapter.prepare((64, 64))
        spatial = [layer.name for layer in adapter.layers() if layer.spatial and layer.op.lower() == "relu"]
        layer = spatial[-2]  # the ReLU before the last conv
        maps[fmt] = compute_cam("gradcam", adapter.split(layer), sample_batch[:10], np.arange(10) % 6, (64, 64)).maps
    assert np.all(_corr(maps["model.onnx"], maps["model.ts"]) >= 0.98)
