"""What the README promises about options, formats and the JSON, checked on the sample:
cosine neighbours, the seed, numbers rounded to 6 significant digits, ``--resize crop``
overlays, NHWC ONNX inputs, and a features cache shared through ``--features``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import NO_RERUNS, SAMPLE, load_json, read_cache, run_cli
from sklearn.neighbors import NearestNeighbors

FAST = ["-q", "--device", "cpu", "--no-tsne", *NO_RERUNS]


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


def _nhwc_twin(src: Path, dst: Path) -> Path:
    """The ONNX model at ``src`` with an (N, H, W, C) input: a Transpose in front of it."""
    import onnx
    from onnx import helper

    model = onnx.load(src)
    graph = model.graph
    nchw = graph.input[0]
    n, c, h, w = (d.dim_param or d.dim_value for d in nchw.type.tensor_type.shape.dim)
    nhwc = helper.make_tensor_value_info("image_nhwc", nchw.type.tensor_type.elem_type, [n, h, w, c])
    graph.node.insert(0, helper.make_node("Transpose", ["image_nhwc"], [nchw.name], perm=[0, 3, 1, 2]))
    graph.input.remove(nchw)
    graph.input.insert(0, nhwc)
    onnx.checker.check_model(model)
    onnx.save(model, dst)
    return dst


def _page_thumbs(html: Path) -> dict[str, str]:
    page = html.read_text()
    start = page.index('id="page-data">') + len('id="page-data">')
    return json.loads(page[start : page.index("</script>", start)])["thumbs"]


def _pixels(uri: str) -> np.ndarray:
    import base64
    import io

    from PIL import Image

    return np.asarray(Image.open(io.BytesIO(base64.b64decode(uri.split(",", 1)[1]))).convert("RGB"), np.int16)


def test_nhwc_onnx_input_reports_as_its_nchw_twin(tmp_path: Path) -> None:
    """README: ONNX inputs may be NCHW or NHWC.  The sample model with a channels-last
    input gives the same predictions, neighbours, galleries and Grad-CAM overlays."""
    twin = _nhwc_twin(SAMPLE / "model.onnx", tmp_path / "nhwc.onnx")
    options = ["-q", "--device", "cpu", "--channels", "0", "--shortcut-images", "0", "--no-tsne", "--gallery-size", "3"]
    reports = {}
    for name, model in (("nchw", SAMPLE / "model.onnx"), ("nhwc", twin)):
        out = tmp_path / name / "report.html"
        done = run_cli("audit", model, SAMPLE / "images", "-o", out, *options)
        assert done.code == 0, done.err
        reports[name] = (out, load_json(out))
    (a_html, a), (b_html, b) = reports["nchw"], reports["nhwc"]
    assert b["model"]["input_size"] == a["model"]["input_size"] == [64, 64] and b["model"]["channels"] == 3
    assert [p["pred"] for p in b["predictions"]] == [p["pred"] for p in a["predictions"]]
    np.testing.assert_allclose(
        [p["score"] for p in b["predictions"]], [p["score"] for p in a["predictions"]], rtol=1e-4
    )
    assert b["knn"]["logits"] == a["knn"]["logits"] or all(
        [n["file"] for n in qb["neighbours"]] == [n["file"] for n in qa["neighbours"]]
        for qa, qb in zip(a["knn"]["logits"], b["knn"]["logits"], strict=True)
    )
    strip = lambda g: {c: {k: [t["file"] for t in v] for k, v in d.items()} for c, d in g.items()}  # noqa: E731
    assert strip(b["galleries"]) == strip(a["galleries"])
    assert b["cam"]["method"] == a["cam"]["method"] == "gradcam" and b["cam"]["blank_maps"] == a["cam"]["blank_maps"]
    # The overlays: the same maps on the same pixels (PNG rounding aside).
    cams_a = {k: v for k, v in _page_thumbs(a_html).items() if k.startswith("cam:")}
    cams_b = {k: v for k, v in _page_thumbs(b_html).items() if k.startswith("cam:")}
    assert len(cams_a) >= 6 * 3 and cams_b.keys() == cams_a.keys()
    for key, uri in cams_a.items():
        assert np.abs(_pixels(uri) - _pixels(cams_b[key])).max() <= 2, key


def test_features_dir_is_shared_between_reports_and_no_cache_writes_none(tmp_path: Path) -> None:
    """``--features DIR``: the cache lives where it is told, not beside the report; another
    report that names it reads it instead of running the model and says the same numbers;
    ``--no-cache`` neither reads nor writes one."""
    cache = tmp_path / "shared" / "digits.features"
    first, second, third = (tmp_path / name / "report.html" for name in ("a", "b", "c"))
    done = run_cli("audit", SAMPLE / "model.onnx", SAMPLE / "images", "-o", first, *FAST, "--features", cache)
    assert done.code == 0, done.err
    assert cache.is_dir() and not first.with_suffix(".features").exists()
    done = run_cli("audit", SAMPLE / "model.onnx", SAMPLE / "images", "-o", second, *FAST, "--features", cache)
    assert done.code == 0, done.err
    a, b = load_json(first), load_json(second)
    assert a["features_from_cache"] is False and b["features_from_cache"] is True
    assert "extract" not in b["timings"]
    for key in ("predictions", "confusion_matrix", "per_class", "knn", "suspected_mislabels", "near_duplicates"):
        assert b[key] == a[key], key
    assert [layer["knn_accuracy"] for layer in b["layers"]] == [layer["knn_accuracy"] for layer in a["layers"]]
    done = run_cli("audit", SAMPLE / "model.onnx", SAMPLE / "images", "-o", third, *FAST, "--no-cache")
    assert done.code == 0, done.err
    assert load_json(third)["features_from_cache"] is False
    assert sorted(p.name for p in third.parent.iterdir()) == ["report.html", "report.json"]
