"""What the README promises about options and the JSON, checked on the sample: cosine
neighbours, the seed, and numbers rounded to 6 significant digits."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import SAMPLE, load_json, read_cache, run_cli
from sklearn.neighbors import NearestNeighbors

FAST = ["-q", "--device", "cpu", "--gallery-size", "0", "--channels", "0", "--shortcut-images", "0", "--no-tsne"]


def _floats(value: Any) -> list[float]:
    if isinstance(value, float):
        return [value]
    if isinstance(value, dict):
        return [f for v in value.values() for f in _floats(v)]
    if isinstance(value, list):
        return [f for v in value for f in _floats(v)]
    return []


def test_json_numbers_have_at_most_six_significant_digits(sample_audits) -> None:
    """README: every float in the JSON is rounded to 6 significant digits."""
    floats = [f for f in _floats(load_json(sample_audits["onnx"])) if math.isfinite(f) and f != 0.0]
    assert len(floats) > 1000
    for f in floats:
        assert float(f"{f:.6g}") == f, f


def test_cosine_neighbours_are_scikit_learn_cosine_neighbours(tmp_path: Path) -> None:
    """``--metric cosine``: each query's neighbours and distances (1 - cos) are those of
    scikit-learn's brute-force cosine search over the cached features."""
    out = tmp_path / "report.html"
    done = run_cli("audit", SAMPLE / "model.onnx", SAMPLE / "images", "-o", out, *FAST, "--metric", "cosine")
    assert done.code == 0, done.err
    report = load_json(out)
    assert report["knn_settings"]["metric"] == "cosine"
    features = read_cache(out.with_suffix(".features"))
    files = list(features.files)
    checked = 0
    for layer in features.layers:
        if layer.name not in report["knn"]:
            continue
        x = np.asarray(features.arrays[layer.name], np.float64)
        nn = NearestNeighbors(n_neighbors=10, metric="cosine", algorithm="brute").fit(x)
        dist, idx = nn.kneighbors()
        for query in report["knn"][layer.name]:
            row = files.index(query["query"])
            assert [n["file"] for n in query["neighbours"]] == [files[i] for i in idx[row]], (layer.name, row)
            np.testing.assert_allclose([n["distance"] for n in query["neighbours"]], dist[row], rtol=1e-5, atol=1e-6)
            checked += 1
    assert checked >= 3 * len(report["knn"]["logits"])


@pytest.mark.parametrize("seed", [0, 1])
def test_the_seed_decides_the_sampled_outputs(tmp_path: Path, seed: int) -> None:
    """``--seed``: the same seed gives the same JSON; another seed other kNN query images."""
    reports = []
    for run, s in (("a", seed), ("b", seed), ("c", seed + 7)):
        out = tmp_path / run / "report.html"
        done = run_cli(
            "audit", SAMPLE / "model.onnx", SAMPLE / "images", "-o", out, *FAST, "--seed", str(s), "--no-cache"
        )
        assert done.code == 0, done.err
        reports.append(json.loads(out.with_suffix(".json").read_text()))

    def scrub(r: dict) -> dict:
        r = dict(r)
        for key in ("generated_at", "timings", "throughput", "options", "dataset"):
            r.pop(key, None)
        return r

    same, other = reports[:2], reports[2]
    assert json.dumps(scrub(same[0]), sort_keys=True) == json.dumps(scrub(same[1]), sort_keys=True)
    queries = [q["query"] for q in same[0]["knn"]["logits"]]
    assert queries != [q["query"] for q in other["knn"]["logits"]]
    # The numbers that do not sample are the same whatever the seed.
    assert same[0]["accuracy"] == other["accuracy"] and same[0]["layers"] == other["layers"]


@pytest.mark.parametrize("size", [(400, 300), (300, 400), (640, 200)])
def test_crop_overlays_sit_on_the_pixels_the_model_saw(size: tuple[int, int]) -> None:
    """``--resize crop``: the overlay's map covers exactly the part of the picture the
    model was given, found independently by feeding an image whose pixels encode their
    own coordinates through the model's preprocessing."""
    from PIL import Image

    from reportgen.data import Preprocess, resize_for_model
    from reportgen.overlay import map_onto_image

    width, height = size
    xs, ys = np.meshgrid(np.arange(width, dtype=np.float32), np.arange(height, dtype=np.float32))
    pre = Preprocess((224, 224), resize="crop")
    # Each pixel's own coordinate, as a float image through the same resize and cut;
    # bilinear shrinking blends neighbours, so the interior tells the crop's extent.
    x_seen = np.asarray(resize_for_model(Image.fromarray(xs, "F"), pre))[2:-2, 2:-2]
    y_seen = np.asarray(resize_for_model(Image.fromarray(ys, "F"), pre))[2:-2, 2:-2]
    left, right, top, bottom = x_seen.min(), x_seen.max(), y_seen.min(), y_seen.max()
    placed = map_onto_image(np.ones((224, 224), np.float32), width, height, "crop")
    cols = np.flatnonzero(~np.isnan(placed).all(axis=0))
    rows = np.flatnonzero(~np.isnan(placed).all(axis=1))
    scale = width / 224 * 0.875 if width < height else height / 224 * 0.875  # source px per model px
    slack = 2 + 3 * scale
    assert abs(cols[0] - left) <= slack and abs(cols[-1] - right) <= slack, (cols[0], cols[-1], left, right)
    assert abs(rows[0] - top) <= slack and abs(rows[-1] - bottom) <= slack, (rows[0], rows[-1], top, bottom)
