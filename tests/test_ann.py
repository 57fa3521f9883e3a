"""The approximate neighbour search: its recall against an independent exact search, its
distances, its own recall estimate, and the report saying when it was used."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import NO_RERUNS, SAMPLE, load_json, run_cli
from sklearn.neighbors import NearestNeighbors

from reportgen.analyses import ann
from reportgen.analyses.knn import find_neighbours, knn_search


def _manifold(n: int, dim: int, seed: int = 0) -> np.ndarray:
    """Rows on a curved 6-d sheet in ``dim`` dims with a little noise: the low intrinsic
    dimension of real features, which is what the index relies on."""
    rng = np.random.default_rng(seed)
    latent = rng.uniform(-1, 1, (n, 6))
    lift = rng.standard_normal((12, dim))
    x = np.concatenate([latent, np.sin(2.5 * latent)], axis=1) @ lift
    return (x + 0.01 * rng.standard_normal((n, dim))).astype(np.float32)


def _exact(x: np.ndarray, k: int, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Leave-one-out neighbours by scikit-learn's brute force (row itself dropped)."""
    nn = NearestNeighbors(n_neighbors=k + 1, algorithm="brute", metric=metric).fit(x.astype(np.float64))
    dist, idx = nn.kneighbors(x.astype(np.float64))
    keep = idx != np.arange(len(x))[:, None]
    return np.array([r[m][:k] for r, m in zip(idx, keep, strict=True)]), np.array(
        [r[m][:k] for r, m in zip(dist, keep, strict=True)]
    )


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_recall_against_an_exact_search(metric: str) -> None:
    x = _manifold(6000, 160)
    k = 10
    nb, report = find_neighbours(x, x, k, metric=metric, leave_one_out=True, mode="approximate", seed=0)
    assert report.method == "approximate" and "IndexIVFFlat" in report.detail
    true_idx, _ = _exact(x, k, metric)
    recall = ann.recall_at_k(nb.indices, true_idx)
    assert recall >= 0.9, recall
    # The estimate printed in the report, from 1000 sampled queries, is close to the truth.
    assert report.recall_queries == ann.RECALL_QUERIES
    assert abs(report.recall - recall) <= 0.03
    # No image is its own neighbour; every distance is the exact one for that pair.
    assert not (nb.indices == np.arange(len(x))[:, None]).any()
    a, b = x.astype(np.float64)[:, None, :], x.astype(np.float64)[nb.indices]
    if metric == "euclidean":
        expected = np.sqrt(((a - b) ** 2).sum(axis=2))
    else:
        expected = 1.0 - (a * b).sum(axis=2) / (np.linalg.norm(a, axis=2) * np.linalg.norm(b, axis=2))
    np.testing.assert_allclose(nb.distances, expected, rtol=1e-9, atol=1e-9)
    assert (np.diff(nb.distances, axis=1) >= 0).all()


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_a_large_float16_layer_stays_float16_with_the_same_neighbours(
    metric: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above ``IN_MEMORY_FLOAT32`` a float16 layer is searched from a float16 copy (half the
    memory): the same values, so the same neighbours and the same float64 distances."""
    x = _manifold(3000, 96).astype(np.float16)
    wide, _ = find_neighbours(x, x, 10, metric=metric, leave_one_out=True, mode="approximate", seed=0)
    monkeypatch.setattr(ann, "IN_MEMORY_FLOAT32", 1024)
    assert ann.in_memory(x).dtype == np.float16 and ann.in_memory(x.astype(np.float32)).dtype == np.float32
    kept, report = find_neighbours(x, x, 10, metric=metric, leave_one_out=True, mode="approximate", seed=0)
    np.testing.assert_array_equal(kept.indices, wide.indices)
    np.testing.assert_array_equal(kept.distances, wide.distances)
    assert report.recall is not None and report.recall >= 0.9


def test_same_seed_same_neighbours_and_a_reference_set() -> None:
    x = _manifold(5000, 64, seed=1)
    queries, reference = x[:1000], x[1000:]
    first, _ = find_neighbours(queries, reference, 5, mode="approximate", seed=3)
    again, _ = find_neighbours(queries, reference, 5, mode="approximate", seed=3)
    np.testing.assert_array_equal(first.indices, again.indices)
    exact = knn_search(queries, reference, 5)
    assert ann.recall_at_k(first.indices, exact.indices) >= 0.9


def test_auto_is_exact_below_the_work_limit() -> None:
    x = _manifold(500, 32)
    nb, report = find_neighbours(x, x, 10, leave_one_out=True)
    assert report.method == "exact" and report.recall is None
    np.testing.assert_array_equal(nb.indices, knn_search(x, x, 10, query_rows=np.arange(500)).indices)
    for dims in (1024, 16):  # a narrow layer still costs its pairs
        side = int(np.sqrt(ann.EXACT_WORK / (dims + ann.PAIR_COST))) + 1
        assert ann.is_large(side, side, dims) and not ann.is_large(side - 2, side - 2, dims)


@pytest.mark.slow
def test_the_report_states_an_approximate_search(tmp_path: Path) -> None:
    out = tmp_path / "out" / "report.html"
    fast = ["--no-tsne", *NO_RERUNS]
    result = run_cli(
        "audit", SAMPLE / "model.onnx", SAMPLE / "images", "-o", out, "-q", "--knn-search", "approximate", *fast
    )
    assert result.code == 0, result.err
    data = load_json(out)
    searched = [layer for layer in data["layers"] if layer["knn_search"] is not None]
    assert searched and all(layer["knn_search"]["method"] == "approximate" for layer in searched)
    assert all(0.9 <= layer["knn_search"]["recall_at_k"] <= 1.0 for layer in searched)
    html = out.read_text()
    assert "approximate: recall@10" in html and "a true neighbour can be missing" in html
