"""Map faithfulness: the curves, areas and rank correlations against direct computations;
the randomised weights of every split route (what changed, what did not); models built
by hand whose maps pass or fail by construction; the sample's section and JSON."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import SAMPLE, load_json, page_text, run_cli
from PIL import Image
from pixel_models import pixel_detectors, traced
from scipy import ndimage, stats

from reportgen.analyses import faithfulness as fa


def test_rank_correlations_are_spearman_s_with_ties_and_blank_maps() -> None:
    rng = np.random.default_rng(0)
    a = np.maximum(rng.standard_normal((4, 9, 7)), 0)  # ReLU zeros: many ties
    b = np.maximum(a + rng.standard_normal(a.shape) * 0.7, 0)
    got = fa.rank_correlations(a, b)
    for i in range(4):
        assert got[i] == pytest.approx(stats.spearmanr(a[i].ravel(), b[i].ravel()).statistic, abs=1e-12)
    blank = np.zeros((2, 9, 7))
    assert list(fa.rank_correlations(blank, np.stack([blank[0], a[0]]))) == [1.0, 0.0]
    assert fa.average_ranks(np.array([5.0, 1.0, 5.0, 3.0])) == pytest.approx([3.5, 1.0, 3.5, 2.0])


def test_pixel_order_puts_the_hottest_first_and_breaks_ties_by_seed() -> None:
    maps = np.zeros((2, 4, 5))
    maps[0, 1, 3], maps[0, 2, 2] = 1.0, 0.5
    maps[1] = np.arange(20).reshape(4, 5)
    order = fa.pixel_order(maps, seed=3)
    assert list(order[0, :2]) == [1 * 5 + 3, 2 * 5 + 2]
    assert list(order[1]) == list(range(19, -1, -1))
    assert sorted(order[0]) == list(range(20))
    assert np.array_equal(order, fa.pixel_order(maps, seed=3))
    assert not np.array_equal(order[0, 2:], fa.pixel_order(maps, seed=4)[0, 2:])  # the tied zeros


def test_curves_and_areas_equal_a_direct_computation() -> None:
    """Every point of both curves, for a softmax-of-linear model, recomputed with masks
    built from each pixel's rank (the module builds them from the order)."""
    rng = np.random.default_rng(1)
    n, c, h, w, k = 3, 2, 6, 5, 4
    weights = rng.standard_normal((k, c * h * w))

    def run_probs(x: np.ndarray) -> np.ndarray:
        z = x.reshape(len(x), -1).astype(np.float64) @ weights.T
        e = np.exp(z - z.max(axis=1, keepdims=True))
        return e / e.sum(axis=1, keepdims=True)

    pixels = rng.standard_normal((n, c, h, w)).astype(np.float32)
    baseline = fa.blurred(pixels, channels_last=False)
    targets = np.array([0, 3, 1])
    orders = {"map": fa.pixel_order(rng.random((n, h, w)), 0), "random": fa.random_order(n, h * w, 0)}
    ran: list[int] = []
    curves = fa.deletion_insertion(
        run_probs, pixels, baseline, targets, orders, steps=4, batch_size=5, on_batch=ran.append
    )
    assert sum(ran) == fa.passes(n, len(orders), steps=4) == n * (2 + 2 * 2 * 3) and max(ran) <= 5
    for name, order in orders.items():
        for i in range(n):
            rank = np.empty(h * w, int)
            rank[order[i]] = np.arange(h * w)
            for step in range(5):
                moved = (rank < round(step / 4 * h * w)).reshape(h, w)
                deleted = np.where(moved, baseline[i], pixels[i])
                inserted = np.where(moved, pixels[i], baseline[i])
                assert curves[name].deletion[i, step] == pytest.approx(run_probs(deleted[None])[0, targets[i]])
                assert curves[name].insertion[i, step] == pytest.approx(run_probs(inserted[None])[0, targets[i]])
        assert curves[name].deletion_auc == pytest.approx(np.trapezoid(curves[name].deletion, dx=0.25).mean())
        assert curves[name].insertion_auc == pytest.approx(np.trapezoid(curves[name].insertion, dx=0.25).mean())


def test_the_baseline_blurs_each_channel_of_each_image_alone() -> None:
    x = np.zeros((2, 6, 6, 3), np.float32)  # channels last, 224 px scaled: sigma 5 * 6 / 224
    x[0, 3, 3, 1] = 1.0
    out = fa.blurred(x, channels_last=True)
    sigma = 5 * 6 / 224
    assert out[0, :, :, 1] == pytest.approx(ndimage.gaussian_filter(x[0, :, :, 1], sigma, mode="reflect"), abs=1e-7)
    assert not out[0, :, :, [0, 2]].any() and not out[1].any()


def test_a_map_on_the_evidence_beats_random_and_its_opposite_loses() -> None:
    """A model that reads one box only: the map on the box deletes the class fastest, the
    map that ranks the box last slowest; the random order lies between."""
    n, h, w = 6, 16, 16
    box = np.zeros((h, w), bool)
    box[4:8, 9:13] = True

    def run_probs(x: np.ndarray) -> np.ndarray:
        s = x[:, 0][:, box].mean(axis=1) * 8.0 - 4.0
        p = 1 / (1 + np.exp(-s))
        return np.stack([p, 1 - p], axis=1)

    pixels = np.zeros((n, 1, h, w), np.float32)
    pixels[:, 0][:, box] = 1.0
    baseline = np.zeros_like(pixels)
    on_box = np.repeat(box[None].astype(float), n, axis=0) + np.random.default_rng(0).random((n, h, w)) * 0.1
    orders = {"box": fa.pixel_order(on_box, 0), "away": fa.pixel_order(-on_box, 0)}
    curves = fa.deletion_insertion(
        run_probs, pixels, baseline, np.zeros(n, int), orders | {"random": fa.random_order(n, h * w, 0)}
    )
    random = curves.pop("random")
    scores = {m.method: m for m in fa.score_methods(curves, random)}
    assert scores["box"].deletion_auc < random.deletion_auc < scores["away"].deletion_auc
    assert scores["box"].insertion_auc > random.insertion_auc > scores["away"].insertion_auc
    assert scores["box"].beats_random == 1.0 and scores["box"].passed
    assert scores["away"].beats_random == 0.0 and not scores["away"].passed


def test_class_sensitivity_and_randomisation_verdicts() -> None:
    rng = np.random.default_rng(2)
    maps = rng.random((10, 8, 8))
    assert not fa.class_sensitivity("gradcam", maps, maps * 2.0).passed  # the same order: alike
    other = rng.random((10, 8, 8))
    sens = fa.class_sensitivity("gradcam", maps, other)
    assert sens.passed and sens.share_different == 1.0 and sens.images == 10
    assert fa.randomisation("gradcam", maps, other).passed
    same = fa.randomisation("gradcam", maps, maps + 0.01 * rng.random(maps.shape))
    assert not same.passed and same.rank_correlation > 0.9


# ---------------------------------------------------------------- the splits, randomised


def _check_randomised(split, pixels: np.ndarray, weights_before: dict[str, np.ndarray], weights_after: dict) -> None:
    """The body is the same, the head's outputs change, the original is left as it was,
    and every shuffled tensor holds the original's values."""
    a, rest = split.body(pixels)
    before = split.head(a, rest)
    randomised = split.randomised(0)
    assert randomised.shuffled > 0
    a2, rest2 = randomised.body(pixels)
    assert np.array_equal(a, a2)
    after = randomised.head(a2, rest2)
    assert not np.allclose(after, before, atol=1e-3)
    assert np.array_equal(split.head(a, rest), before)
    changed = 0
    for name, value in weights_after.items():
        original = weights_before[name]
        assert np.array_equal(np.sort(value, axis=None), np.sort(original, axis=None))
        changed += int(not np.array_equal(value, original))
    assert changed and sum(v.size for v in weights_after.values()) == randomised.shuffled
    return randomised


def test_onnx_split_shuffles_the_head_initializers(tmp_path: Path) -> None:
    from onnx import numpy_helper

    from reportgen.models import last_spatial_layer, load_model

    adapter = load_model(SAMPLE / "model.onnx", device="cpu")
    adapter.prepare((64, 64))
    split = adapter.split(last_spatial_layer(adapter.layers()))
    originals = {i.name: numpy_helper.to_array(i) for i in adapter.fixed.graph.initializer}
    pixels = np.random.default_rng(0).standard_normal((3, 3, 64, 64)).astype(np.float32)
    randomised = split.randomised(0)
    assert set(randomised.weights) <= {i.name for i in split.head_model.graph.initializer}
    _check_randomised(split, pixels, originals, randomised.weights)
    # The head's body-side copy is untouched: maps of the original split are as before.
    assert np.array_equal(split.randomised(0).head(*split.body(pixels)), randomised.head(*randomised.body(pixels)))


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    from architectures import FAMILIES, build, export

    family = next(f for f in FAMILIES if f.name == "vit")
    folder = tmp_path_factory.mktemp("vit")
    model = build(family)
    return {fmt: export(model, fmt, folder) for fmt in ("onnx", "torchscript")}


def test_twin_route_takes_the_shuffled_weights(tiny_vit: dict[str, Path]) -> None:
    """ONNX past a token grid: the gradient comes from the torch twin.  The randomised
    twin's Grad-CAM inputs equal central differences of the randomised ONNX head."""
    from onnx import numpy_helper

    from reportgen.analyses.cam import finite_difference_weights
    from reportgen.models import default_cam_layer, load_model

    adapter = load_model(tiny_vit["onnx"], device="cpu")
    adapter.prepare((64, 64))
    split = adapter.split(default_cam_layer(adapter))
    assert split.differentiable and type(split.inner).__name__ == "TwinGradientSplit"
    originals = {i.name: numpy_helper.to_array(i) for i in adapter.fixed.graph.initializer}
    pixels = np.random.default_rng(1).standard_normal((2, 3, 64, 64)).astype(np.float32)
    randomised = _check_randomised(split, pixels, originals, split.randomised(0).inner.inner.weights)
    targets = np.array([0, 2])
    _, grads, scores = randomised.gradcam_inputs(pixels, targets)
    maps, rest = randomised.body(pixels)
    assert np.allclose(scores, randomised.head(maps, rest), atol=1e-4)
    by_twin = grads.astype(np.float64).mean(axis=(2, 3))
    by_differences = finite_difference_weights(randomised, maps, rest, targets)
    # Float32 differences through a transformer block: within 1% of the largest weight,
    # where the original head's weights would be unrelated.
    assert np.abs(by_twin - by_differences).max() <= 1e-2 * np.abs(by_twin).max()
    _, original_grads, _ = split.gradcam_inputs(pixels, targets)
    assert not np.allclose(original_grads, grads)


def test_torch_split_shuffles_the_head_parameters(tiny_vit: dict[str, Path]) -> None:
    from reportgen.models import default_cam_layer, load_model

    adapter = load_model(tiny_vit["torchscript"], device="cpu")
    adapter.prepare((64, 64))
    split = adapter.split(default_cam_layer(adapter))
    inner = split.inner
    originals = {n.name: adapter._exec.attrs[n].detach().numpy() for n in adapter._exec.attrs}
    randomised = split.randomised(0)
    after = {n.name: v.numpy() for n, v in randomised.inner.weights.items()}
    assert after and all(n in inner.head_nodes or any(n in h.all_input_nodes for h in inner.head_nodes)
                         for n in randomised.inner.weights)  # fmt: skip
    pixels = np.random.default_rng(2).standard_normal((2, 3, 64, 64)).astype(np.float32)
    _check_randomised(split, pixels, originals, after)
    _, grads, scores = randomised.gradcam_inputs(pixels, np.array([1, 1]))
    assert np.allclose(scores, randomised.head(*randomised.body(pixels)), atol=1e-4)
    _, original_grads, _ = split.gradcam_inputs(pixels, np.array([1, 1]))
    assert not np.allclose(original_grads, grads)


# ---------------------------------------------------------------- whole audits


def _dots(folder: Path, n: int = 6) -> Path:
    """Grey 32-px pictures with a red square (class ``red``) or a green one (``green``)
    somewhere: each class's evidence is its square."""
    rng = np.random.default_rng(5)
    for name, colour in (("red", (230, 20, 20)), ("green", (20, 200, 20))):
        (folder / name).mkdir(parents=True)
        for i in range(n):
            img = np.full((32, 32, 3), 128, np.uint8)
            y, x = rng.integers(2, 22, 2)
            img[y : y + 8, x : x + 8] = colour
            Image.fromarray(img).save(folder / name / f"{i}.png")
    return folder


AUDIT = ["-q", "--no-tsne", "--no-cache", "--device", "cpu", "--mean", "0", "--std", "1", "--size", "32",
         "--channels", "0", "--shortcut-images", "0", "--robustness-images", "0", "--gallery-size", "1"]  # fmt: skip


def test_a_model_whose_classes_share_one_map_fails_class_sensitivity(tmp_path: Path) -> None:
    """Two classes scored by the same red detector (one twice the other): every map is the
    same picture whatever the class, so the top class and the runner-up get alike maps;
    with no weight after the layer, there is nothing to randomise."""
    import torch

    model = traced(pixel_detectors([[1.0, -1.0, -1.0], [2.0, -2.0, -2.0]], [0.0, 0.0]))
    path = tmp_path / "same.ts"
    torch.jit.save(model, str(path))
    images = _dots(tmp_path / "images")
    out = tmp_path / "out" / "r.html"
    result = run_cli("audit", path, images, "-o", out, *AUDIT)
    assert result.code == 0, result.err
    data = load_json(out)
    f = data["faithfulness"]
    assert f["class_sensitivity"]["share_different"] == 0.0 and not f["class_sensitivity"]["passed"]
    assert all(r["rank_correlation"] is None and r["passed"] is None for r in f["randomisation"])
    assert not f["passed"]
    (warning,) = [w for w in data["warnings"] if "faithfulness checks" in w]
    assert "not met:" in warning and "the top class and the runner-up get different maps" in warning
    text = page_text(out)
    assert "of 2 checks" in text and "nothing to randomise" in text


def test_a_detector_per_class_passes_where_its_squares_are(tmp_path: Path) -> None:
    """A red and a green detector: each class's map lies on its square, so deletion beats
    a random order, and the two classes' maps differ."""
    import torch

    model = traced(pixel_detectors([[1.0, -1.0, -1.0], [-1.0, 1.0, -1.0]], [0.0, 0.0]))
    path = tmp_path / "two.ts"
    torch.jit.save(model, str(path))
    images = _dots(tmp_path / "images")
    out = tmp_path / "out" / "r.html"
    result = run_cli("audit", path, images, "-o", out, *AUDIT, "--faithfulness-images", "8")
    assert result.code == 0, result.err
    f = load_json(out)["faithfulness"]
    assert f["images"] == 8
    shown = f["methods"][0]
    assert shown["method"] == "gradcam" and shown["beats_random"] > 0.5
    assert shown["deletion_auc"] < f["random"]["deletion_auc"] and shown["insertion_auc"] > f["random"]["insertion_auc"]
    assert f["class_sensitivity"]["share_different"] == 1.0
    assert [m["method"] for m in f["methods"]] == ["gradcam", "ablationcam", "scorecam"]  # 2 channels: cheap
    assert f["passed"]
    assert "These maps pass 2 of the 2" in page_text(out)
    # Off: no section, no line above the galleries, which still show.
    off = tmp_path / "off" / "r.html"
    result = run_cli("audit", path, images, "-o", off, *AUDIT, "--faithfulness-images", "0")
    assert result.code == 0, result.err
    data = load_json(off)
    assert data["faithfulness"] is None and data["galleries"]
    assert 'id="faithfulness"' not in off.read_text() and "These maps pass" not in off.read_text()


def test_the_sample_s_section_json_and_verdicts(sample_audits: dict[str, Path]) -> None:
    data = load_json(sample_audits["onnx"])
    f = data["faithfulness"]
    assert f["images"] == 32 and f["method"] == "gradcam" and f["steps"] == fa.STEPS
    names = [m["method"] for m in f["methods"]]
    assert names[0] == "gradcam" and set(names) <= {"gradcam", "ablationcam", "scorecam"}
    assert [r["method"] for r in f["randomisation"]] == names
    for m in f["methods"]:
        assert 0 <= m["deletion_auc"] <= 1 and 0 <= m["insertion_auc"] <= 1 and 0 <= m["beats_random"] <= 1
    assert f["most_faithful"] == max(f["methods"], key=lambda m: m["insertion_auc"] - m["deletion_auc"])["method"]
    assert f["randomisation"][0]["method"] == "gradcam" and f["randomisation"][0]["passed"]  # Grad-CAM passes here
    checks = [f["methods"][0]["beats_random"] > 0.5, f["randomisation"][0]["passed"], f["class_sensitivity"]["passed"]]
    assert f["passed"] == all(checks)
    text = page_text(sample_audits["onnx"])
    assert "Map faithfulness" in text and f"These maps pass {sum(checks)} of the 3 <a" in text
    ts = load_json(sample_audits["torchscript"])["faithfulness"]
    for a, b in zip(f["methods"], ts["methods"], strict=True):
        assert a["deletion_auc"] == pytest.approx(b["deletion_auc"], abs=1e-3)


def _pooled_linear(head: list[list[float]]) -> Any:
    """Four fixed 1x1 detectors (red, green, blue, brightness), ReLU, global mean, then a
    linear layer of the given weights: the layer the maps explain is the ReLU's."""
    import torch

    class Net(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.detect = torch.nn.Conv2d(3, 4, 1)
            self.fc = torch.nn.Linear(4, len(head))
            with torch.no_grad():
                weights = [[1, -1, -1], [-1, 1, -1], [-1, -1, 1], [1, 1, 1]]
                self.detect.weight.copy_(torch.tensor(weights, dtype=torch.float32).reshape(4, 3, 1, 1))
                self.detect.bias.zero_()
                self.fc.weight.copy_(torch.tensor(head, dtype=torch.float32))
                self.fc.bias.zero_()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.relu(self.detect(x)).mean(dim=(2, 3)))

    return Net().eval()


def test_maps_that_ignore_the_weights_fail_the_randomisation_check(tmp_path: Path) -> None:
    """Both classes weigh the four channels alike, so shuffling the weights changes nothing
    and every map keeps its pixel order: the check fails, as it does for guided
    backpropagation (the sample's Grad-CAM, whose maps do change, passes: see below)."""
    import torch

    path = tmp_path / "m.ts"
    torch.jit.save(traced(_pooled_linear([[1.0, 1.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])), str(path))
    out = tmp_path / "out" / "r.html"
    result = run_cli("audit", path, _dots(tmp_path / "images"), "-o", out, *AUDIT, "--faithfulness-images", "8")
    assert result.code == 0, result.err
    f = load_json(out)["faithfulness"]
    shown = f["randomisation"][0]
    assert shown == {"method": "gradcam", "rank_correlation": 1.0, "passed": False}
    assert not f["passed"]
    assert "✗ they change when the weights past the layer are shuffled" in page_text(out)
