"""The explorer's data: what the page receives, decoded here as a browser would, against
the analyses' own arrays and independent computations.  (Its behaviour in a browser is
in ``test_browser.py``.)"""

from __future__ import annotations

import base64
import io
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import SAMPLE, load_json, run_cli
from PIL import Image

from reportgen.analyses.knn import layer_knn
from reportgen.analyses.suspects import label_scores
from reportgen.analyses.tsne import TsneSchedule, tsne_layers
from reportgen.extract import CachedRun, default_cache_path, load_cache
from reportgen.sections.explorer import build_explorer, explorer_payload
from reportgen.thumbs import SpriteSheets, open_fitted, sprite_sheets, sprite_side

FAST = TsneSchedule(60, 60, 20, 30)


def decode(payload: dict[str, Any], key: str, dtype: str) -> np.ndarray:
    return np.frombuffer(base64.b64decode(payload[key]), dtype=np.dtype(dtype))


def positions(payload: dict[str, Any]) -> np.ndarray:
    """(L, n, 2) positions as the page computes them from the quantised ones."""
    q = decode(payload, "pos", "<u2").reshape(len(payload["layers"]), payload["n"], 2).astype(np.float64)
    x0, x1, y0, y1 = payload["bounds"]
    return np.stack([x0 + (x1 - x0) * q[..., 0] / 65535, y0 + (y1 - y0) * q[..., 1] / 65535], axis=-1)


def neighbours(payload: dict[str, Any]) -> np.ndarray:
    dtype = "<u2" if payload["nbBytes"] == 2 else "<u4"
    return decode(payload, "nb", dtype).reshape(len(payload["layers"]), payload["n"], payload["k"]).astype(np.int64)


def brute_force_neighbours(x: np.ndarray, k: int) -> np.ndarray:
    """Leave-one-out k nearest by squared euclidean distance, ties to the lower row."""
    x = x.astype(np.float64)
    d = ((x[:, None, :] - x[None, :, :]) ** 2).sum(-1)
    np.fill_diagonal(d, np.inf)
    return np.argsort(d, axis=1, kind="stable")[:, :k]


def page_payload(html: Path) -> dict[str, Any]:
    text = html.read_text(encoding="utf-8")
    block = re.search(r'<script type="application/json" id="explorer-data">(.*?)</script>', text, re.S)
    assert block is not None
    return json.loads(block.group(1))


def clustered(n: int, dims: int, seed: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 3
    centres = rng.standard_normal((3, dims)) * 5
    a = centres[labels] + rng.standard_normal((n, dims))
    return {"a": a, "b": a[:, : dims // 2] * 2 + rng.standard_normal((n, dims // 2))}, labels


def expected_tile(path: Path, side: int) -> np.ndarray:
    """The image fitted inside side x side and centred on the sheet's background."""
    fitted = open_fitted(path, side)
    out = np.empty((side, side, 3))
    out[:] = (236, 238, 241)
    ox, oy = (side - fitted.width) // 2, (side - fitted.height) // 2
    out[oy : oy + fitted.height, ox : ox + fitted.width] = np.asarray(fitted.convert("RGB"), np.float64)
    return out


def tiny_sprites(n: int) -> SpriteSheets:
    return SpriteSheets(24, 2, 4, [b""] * ((n + 3) // 4))


@pytest.mark.parametrize("max_points", [90, 40])
def test_payload_matches_the_analyses_arrays(max_points: int) -> None:
    arrays, labels = clustered(90, 12, seed=3)
    n = len(labels)
    names = ["a", "b"]
    tsne = tsne_layers(arrays, names, labels, seed=0, max_points=max_points, schedule=FAST)
    knn = {name: layer_knn(arrays[name], labels, 5, layer=name) for name in names}
    # Predictions in another order than the labels' vocabulary, and one extra output class.
    class_names = ["c2", "c0", "c1", "extra"]
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=n)
    preds = probs.argmax(axis=1)
    scores = label_scores(labels, probs[:, 0], [knn["b"].neighbours], labels)
    files = [f"c{lab}/img_{i:03d}.png" for i, lab in enumerate(labels)]
    truth = np.array([class_names.index(f"c{lab}") for lab in labels])
    section = build_explorer(
        layers=names,
        rows=tsne.rows,
        embeddings=tsne.embeddings,
        arrays=arrays,
        files=files,
        labels=labels,
        label_names=["c0", "c1", "c2"],
        preds=preds,
        truth=truth,
        class_names=class_names,
        probs=probs,
        scores=scores,
        mislabels={int(tsne.rows[1]): 2},
        duplicates={int(tsne.rows[0]): [files[int(tsne.rows[2])]]},
        k=5,
        metric="euclidean",
        knn=knn,
        n_total=n,
        labeled=True,
    )
    assert section is not None
    rows = tsne.rows
    cam_file = files[int(rows[3])]
    thumbs = {f"cam:{int(preds[rows[3]])}:{cam_file}": "data:image/jpeg;base64,"}
    payload = json.loads(
        json.dumps(explorer_payload(section, tiny_sprites(len(rows)), thumbs, ["#000"] * 4, "gradcam"))
    )

    assert payload["n"] == len(rows) and payload["layers"] == names
    assert payload["sampled"] == (max_points < n) and payload["nTotal"] == n
    assert payload["files"] == [files[r] for r in rows]
    # Positions: the t-SNE's own embeddings, to the quantisation step (1/65535 of the range).
    pos = positions(payload)
    for li, name in enumerate(names):
        emb = tsne.embeddings[name]
        span = np.ptp(np.stack([tsne.embeddings[m] for m in names]).reshape(-1, 2), axis=0)
        assert np.all(np.abs(pos[li] - emb) <= span / 65535 * 0.51 + 1e-9)
    # Neighbours: leave-one-out among the points on the map, by brute force.
    nb = neighbours(payload)
    for li, name in enumerate(names):
        assert np.array_equal(nb[li], brute_force_neighbours(arrays[name][rows], 5))
        if max_points >= n:  # every image on the map: the kNN section's own lists
            assert np.array_equal(nb[li], knn[name].neighbours.indices)
    assert payload["scope"] == ("all audited images" if max_points >= n else f"the {len(rows)} images on the map")
    # One vocabulary: labels keep their indices, predictions are mapped by name.
    vocab = payload["names"]
    assert vocab == ["c0", "c1", "c2", "extra"]
    assert [vocab[v] for v in decode(payload, "label", "<i4")] == [f"c{labels[r]}" for r in rows]
    assert [vocab[v] for v in decode(payload, "pred", "<i4")] == [class_names[preds[r]] for r in rows]
    conf = decode(payload, "conf", "<u2") / 65535
    assert np.allclose(conf, probs[rows, preds[rows]], atol=1 / 65535)
    assert np.array_equal(decode(payload, "correct", "i1"), (truth[rows] == preds[rows]).astype(np.int8))
    susp = decode(payload, "suspect", "<u2") / 65534
    assert np.allclose(susp, scores.score[rows], atol=1 / 65534)
    assert payload["mislabels"] == [[1, "c2"]]
    assert payload["duplicates"] == [[0, [files[int(rows[2])]]]]
    assert payload["cams"] == [[3, f"cam:{int(preds[rows[3]])}:{cam_file}"]]
    assert payload["camMethod"] == "Grad-CAM"


def test_unlabeled_points_have_no_suspect_score() -> None:
    arrays, labels = clustered(30, 6, seed=1)
    labels = labels.copy()
    labels[:5] = -1
    knn = {"a": layer_knn(arrays["a"], labels, 3, layer="a")}
    scores = label_scores(labels, np.full(30, 0.5), [knn["a"].neighbours], labels)
    tsne = tsne_layers({"a": arrays["a"]}, ["a"], labels, seed=0, schedule=FAST)
    section = build_explorer(
        layers=["a"], rows=tsne.rows, embeddings=tsne.embeddings, arrays=arrays, files=[f"{i}.png" for i in range(30)],
        labels=labels, label_names=["x", "y", "z"], preds=np.zeros(30, int), truth=labels, class_names=["x", "y", "z"],
        probs=np.full((30, 3), 1 / 3), scores=scores, mislabels={}, duplicates={}, k=3, metric="euclidean", knn=knn,
        n_total=30, labeled=True,
    )  # fmt: skip
    assert section is not None
    payload = explorer_payload(section, tiny_sprites(30), {}, ["#000"] * 3, None)
    raw = decode(payload, "suspect", "<u2")
    assert np.all(raw[:5] == 65535) and np.all(raw[5:] < 65535)
    assert np.all(decode(payload, "label", "<i4")[:5] == -1)
    correct = decode(payload, "correct", "i1")
    assert np.all(correct[:5] == -1) and np.array_equal(correct[5:], (labels[5:] == 0).astype(np.int8))
    assert payload["camMethod"] is None and payload["cams"] == []


def test_sprite_tiles_are_the_images(tmp_path: Path) -> None:
    colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 20), (20, 220, 220)]
    paths = []
    for i, c in enumerate(colours * 3):  # 15 images over several sheets
        img = Image.new("RGB", (60 + 7 * i, 40), c)
        img.paste((255, 255, 255), (0, 0, 20, 20))  # a white corner: the tile keeps the layout
        paths.append(tmp_path / f"{i}.png")
        img.save(paths[-1])
    sheets = sprite_sheets(paths, 32)
    assert sheets.side == 32
    for i, path in enumerate(paths):
        s, j = divmod(i, sheets.per_sheet)
        sheet = np.asarray(Image.open(io.BytesIO(sheets.sheets[s])).convert("RGB"), np.float64)
        x, y = (j % sheets.columns) * 32, (j // sheets.columns) * 32
        tile = sheet[y : y + 32, x : x + 32]
        assert np.abs(tile - expected_tile(path, 32)).mean() < 12, i  # lossy WebP or JPEG at quality 75
        assert np.abs(tile - expected_tile(paths[(i + 1) % 5], 32)).mean() > 40


def test_sprite_side_keeps_the_pixel_budget() -> None:
    assert sprite_side(200) == 96 and sprite_side(10_000) == 40 and sprite_side(1_000_000) == 24
    for n in (500, 3000, 10_000, 40_000):
        assert sprite_side(n) % 2 == 0
        assert n * sprite_side(n) ** 2 <= 16_000_000 or sprite_side(n) == 24


def test_sample_report_explorer_against_its_json_and_cache(sample_audits: dict[str, Path]) -> None:
    html = sample_audits["onnx"]
    payload = page_payload(html)
    data = load_json(html)
    preds = {p["file"]: p for p in data["predictions"]}
    assert payload["n"] == len(preds) and not payload["sampled"]
    assert data["explorer"]["n_points"] == payload["n"] and data["explorer"]["layers"] == payload["layers"]
    names = payload["names"]
    labels = decode(payload, "label", "<i4")
    pred = decode(payload, "pred", "<i4")
    conf = decode(payload, "conf", "<u2") / 65535
    correct = decode(payload, "correct", "i1")
    for i, file in enumerate(payload["files"]):
        assert names[labels[i]] == preds[file]["label"] and names[pred[i]] == preds[file]["pred"]
        assert correct[i] == (preds[file]["label"] == preds[file]["pred"])
        assert conf[i] == pytest.approx(preds[file]["score"], abs=2e-5)
    # The neighbours of every kNN query, at every layer, are the JSON's.
    nb = neighbours(payload)
    index = {f: i for i, f in enumerate(payload["files"])}
    for li, layer in enumerate(payload["layers"]):
        for q in data["knn"][layer]:
            got = [payload["files"][j] for j in nb[li, index[q["query"]]]]
            assert got == [n["file"] for n in q["neighbours"]], (layer, q["query"])
    # Flagged suspects: exactly the JSON's mislabels (with their suggestion), and every
    # file in a near-duplicate pair.
    assert {payload["files"][i]: s for i, s in payload["mislabels"]} == {
        m["file"]: m["suggested"] for m in data["suspected_mislabels"]
    }
    in_pairs = {d["a"] for d in data["near_duplicates"]} | {d["b"] for d in data["near_duplicates"]}
    assert {payload["files"][i] for i, _ in payload["duplicates"]} == in_pairs
    # Grad-CAM offered exactly where the report holds a map of the predicted class.
    shown = {
        t["file"]
        for cls, g in data["galleries"].items()
        for part in ("max", "min", "wrong")
        for t in g[part]
        if t["pred"] == cls and not t["blank_map"]
    }
    assert {payload["files"][i] for i, _ in payload["cams"]} == shown
    # Positions: the t-SNE recomputed from the features cache with the report's seed.
    cached = load_cache(default_cache_path(html), None)
    assert isinstance(cached, CachedRun)
    features = cached.features
    order = [features.files.index(f) for f in payload["files"]]
    layers = [layer.name for layer in features.layers]
    tsne = tsne_layers(features.arrays, layers, features.labels, seed=data["options"]["seed"])
    pos = positions(payload)
    for li, layer in enumerate(payload["layers"]):
        emb = tsne.embeddings[layer][order]
        assert np.abs(pos[li] - emb).max() < 1e-3 * np.ptp(emb), layer
    # Thumbnails: tile i is file i's picture.
    sheet = np.asarray(Image.open(io.BytesIO(base64.b64decode(payload["thumbs"]["sheets"][0].split(",", 1)[1]))))
    side, cols = payload["thumbs"]["side"], payload["thumbs"]["columns"]
    for i in (0, 7, payload["n"] - 1):
        y, x = divmod(i, cols)
        tile = sheet[y * side : (y + 1) * side, x * side : (x + 1) * side].astype(np.float64)
        assert np.abs(tile - expected_tile(SAMPLE / "images" / payload["files"][i], side)).mean() < 12, i


def test_no_explorer_flag_and_no_tsne_leave_it_out(tmp_path: Path) -> None:
    for flag in ("--no-explorer", "--no-tsne"):
        out = tmp_path / flag / "r.html"
        result = run_cli("audit", SAMPLE / "model.onnx", SAMPLE / "images", "-o", out, "-q", flag, "--no-cache")
        assert result.code == 0, result.err
        text = out.read_text(encoding="utf-8")
        assert (
            '<div class="explorer" data-explorer>' not in text
            and '<script type="application/json" id="explorer-data">' not in text
        )
        assert "explorer" not in load_json(out)
