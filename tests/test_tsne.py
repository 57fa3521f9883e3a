"""t-SNE: trustworthiness against scikit-learn, degenerate layers, sampling, the GIF."""

from __future__ import annotations

import base64
import io
import re

import numpy as np
import pytest
from conftest import load_json
from PIL import Image
from sklearn.manifold import trustworthiness as sk_trustworthiness

from reportgen import figures
from reportgen.analyses.tsne import TsneSchedule, stratified_sample, trustworthiness, tsne_layers

FAST = TsneSchedule(60, 60, 20, 30)


def test_trustworthiness_equals_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 20))
    y = x[:, :2] + 0.3 * rng.standard_normal((300, 2))
    assert trustworthiness(x, y, 10) == pytest.approx(sk_trustworthiness(x, y, n_neighbors=10), abs=1e-9)


def test_layers_embed_aligned_and_degenerate_layers_do_not_crash() -> None:
    rng = np.random.default_rng(1)
    labels = np.repeat(np.arange(3), 40)
    centres = rng.standard_normal((3, 16)) * 6
    good = centres[labels] + rng.standard_normal((120, 16))
    arrays = {
        "a": good,
        "flat": np.ones((120, 7)),  # every image identical: t-SNE undefined
        "b": good + 0.01 * rng.standard_normal((120, 16)),
    }
    res = tsne_layers(arrays, ["a", "flat", "b"], labels, seed=0, schedule=FAST)
    assert res.embeddings["flat"] is None and "same features" in res.notes["flat"]
    assert res.trustworthiness["flat"] is None
    for name in ("a", "b"):
        emb = res.embeddings[name]
        assert emb is not None and emb.shape == (120, 2) and np.all(np.isfinite(emb))
        assert res.trustworthiness[name] > 0.9
    # "b" is "a" plus noise and starts from it: aligned frames barely move.
    assert np.sqrt(((res.embeddings["a"] - res.embeddings["b"]) ** 2).sum(axis=1).mean()) < 0.5


def test_tiny_sets_and_single_image_classes() -> None:
    arrays = {"x": np.random.default_rng(2).standard_normal((4, 5))}
    res = tsne_layers(arrays, ["x"], np.array([0, 1, 2, 3]), schedule=FAST)
    assert res.embeddings["x"] is None and "too few" in res.notes["x"]
    arrays = {"x": np.random.default_rng(3).standard_normal((12, 5))}
    res = tsne_layers(arrays, ["x"], np.array([0] * 11 + [1]), schedule=FAST)
    assert res.embeddings["x"] is not None and np.all(np.isfinite(res.embeddings["x"]))
    assert res.trustworthiness["x"] is None  # fewer than 2k + 1 points: not defined


def test_stratified_sample_is_seeded_and_proportional() -> None:
    labels = np.array([0] * 600 + [1] * 300 + [2] * 100)
    a = stratified_sample(labels, 100, seed=5)
    assert np.array_equal(a, stratified_sample(labels, 100, seed=5))
    assert len(a) == 100 and list(np.bincount(labels[a])) == [60, 30, 10]
    assert not np.array_equal(a, stratified_sample(labels, 100, seed=6))
    assert np.array_equal(stratified_sample(labels, 5000, seed=0), np.arange(1000))


def _gif_from(html: str) -> Image.Image:
    match = re.search(r'id="tsne-gif"[^>]*src="data:image/gif;base64,([^"]+)"', html)
    assert match
    return Image.open(io.BytesIO(base64.b64decode(match.group(1))))


def test_gif_has_one_key_frame_per_layer_in_order(sample_audits) -> None:
    html = sample_audits["onnx"].read_text()
    data = load_json(sample_audits["onnx"])
    layers = [layer["name"] for layer in data["layers"]]
    gif = _gif_from(html)
    durations = []
    frames = []
    for i in range(gif.n_frames):
        gif.seek(i)
        durations.append(gif.info["duration"])
        frames.append(np.asarray(gif.convert("RGB")))
    keys = [i for i, d in enumerate(durations) if d == figures.KEY_MS]
    assert len(keys) == len(layers)
    assert gif.n_frames == len(layers) + figures.TWEENS * (len(layers) - 1)
    assert keys == [i * (figures.TWEENS + 1) for i in range(len(layers))]
    # Each key frame's title bar names its layer, in layer order: render the same title
    # bar on its own and compare pixels.
    for i, (key, name) in enumerate(zip(keys, layers, strict=True)):
        title = figures.tsne_frame(None, np.zeros(0, int), np.zeros(0, bool), 6, f"{i + 1}/{len(layers)}  {name}")
        expected = np.asarray(title.convert("RGB"))[:24]
        assert np.array_equal(frames[key][:24], expected), name


def test_penultimate_trustworthiness_on_the_sample(sample_audits) -> None:
    for fmt in ("onnx", "torchscript"):
        data = load_json(sample_audits[fmt])
        penultimate = data["layers"][-2]
        assert penultimate["tsne_trustworthiness"] >= 0.9
        assert data["tsne"]["n_points"] == data["dataset"]["n_images"] and data["tsne"]["sampled"] is False
