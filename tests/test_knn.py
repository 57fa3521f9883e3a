"""Exact kNN against scikit-learn's brute force, and the per-layer summaries."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import load_json, read_cache
from sklearn.neighbors import NearestNeighbors

from reportgen.analyses.knn import knn_search, layer_knn, majority_vote


@pytest.fixture(scope="module")
def sample_features(sample_audits) -> dict[str, np.ndarray]:
    cached = read_cache(sample_audits["onnx"].with_name("report.features"))
    out = {name: np.asarray(values) for name, values in cached.arrays.items()}
    out["__labels__"] = cached.labels
    return out


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_neighbours_equal_scikit_learn_brute_force_on_every_layer(
    sample_features: dict[str, np.ndarray], metric: str
) -> None:
    for name, x in sample_features.items():
        if name.startswith("__"):
            continue
        ours = knn_search(x, x, 10, metric=metric, query_rows=np.arange(len(x)))
        ref_d, ref_i = NearestNeighbors(n_neighbors=10, algorithm="brute", metric=metric).fit(x).kneighbors()
        assert np.array_equal(ours.indices, ref_i), name
        assert np.allclose(ours.distances, ref_d, rtol=1e-4, atol=1e-5), name


def test_reference_search_and_blocks(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    ref = rng.standard_normal((700, 33)).astype(np.float32)
    queries = rng.standard_normal((150, 33)).astype(np.float32)
    import reportgen.analyses.knn as knn_module

    monkeypatch.setattr(knn_module, "BLOCK_BYTES", 4 * 700 * 7)  # blocks of 7 queries
    ours = knn_search(queries, ref, 5)
    ref_d, ref_i = NearestNeighbors(n_neighbors=5, algorithm="brute").fit(ref).kneighbors(queries)
    assert np.array_equal(ours.indices, ref_i) and np.allclose(ours.distances, ref_d, atol=1e-5)


def test_features_far_from_the_origin_stay_exact_without_the_float64_fallback(monkeypatch: pytest.MonkeyPatch) -> None:
    # ReLU features and pixels sit far from the origin, where the float32 ranking key's
    # rounding is large against the gaps between neighbours: the search ranks from the
    # rows' mean, so it still finds the exact neighbours from a few candidates a row.
    rng = np.random.default_rng(5)
    x = (300.0 + rng.random((600, 40))).astype(np.float32)
    import reportgen.analyses.knn as knn_module

    widths: list[int] = []
    real_flatnonzero = np.flatnonzero

    def counting(a: np.ndarray) -> np.ndarray:
        found = real_flatnonzero(a)
        if a.ndim == 2 and a.shape[1] == len(x):  # the candidate mask of a block
            widths.append(int(np.bincount(found // len(x), minlength=a.shape[0]).max()))
        return found

    monkeypatch.setattr(knn_module.np, "flatnonzero", counting)
    ours = knn_search(x, x, 10, query_rows=np.arange(len(x)))
    monkeypatch.undo()
    diff = x[:, None, :].astype(np.float64) - x[None, :, :].astype(np.float64)
    d = np.sqrt((diff**2).sum(axis=2))
    np.fill_diagonal(d, np.inf)
    expected = np.lexsort((np.broadcast_to(np.arange(len(x)), d.shape), d), axis=1)[:, :10]
    assert np.array_equal(ours.indices, expected)
    np.testing.assert_allclose(ours.distances, np.take_along_axis(d, expected, axis=1), rtol=1e-12)
    assert widths and max(widths) <= 8 * 10 + 64  # never the whole-block float64 route


def test_duplicates_ties_and_tiny_sets() -> None:
    x = np.array([[0.0, 0.0], [0.0, 0.0], [0.0, 0.0], [5.0, 5.0]], np.float32)
    nb = knn_search(x, x, 10, query_rows=np.arange(4))
    assert nb.indices.shape == (4, 3)  # fewer images than k: all the others
    assert list(nb.indices[0]) == [1, 2, 3]  # ties broken by the lower row, never itself
    assert np.allclose(nb.distances[0], [0, 0, np.sqrt(50)])
    constant = np.ones((50, 8), np.float32)
    nb = knn_search(constant, constant, 10, query_rows=np.arange(50))
    assert np.all(np.isfinite(nb.distances)) and np.all(nb.distances == 0)
    assert all(i not in row for i, row in enumerate(nb.indices))
    single = knn_search(x[:1], x[:1], 10, query_rows=np.arange(1))
    assert single.indices.shape == (1, 0)


def test_majority_vote_matches_a_knn_classifier_and_breaks_ties_by_nearest() -> None:
    labels = np.array([[1, 2, 2, 1, 3], [0, 4, 4, 0, 4], [-1, -1, -1, -1, -1]])
    assert list(majority_vote(labels)) == [1, 4, -1]  # row 0: 1 and 2 tie, 1 is nearer
    rng = np.random.default_rng(0)
    x = rng.standard_normal((300, 6))
    y = rng.integers(0, 3, 300)
    knn = layer_knn(x, y, 7)
    _, idx = NearestNeighbors(n_neighbors=8, algorithm="brute").fit(x).kneighbors(x)
    loo = np.array([np.bincount(y[row[1:]], minlength=3).argmax() for row in idx])
    # Where the vote is not tied, ours equals the plain majority of the 7 neighbours.
    counts = np.array([np.sort(np.bincount(y[row[1:]], minlength=3))[::-1] for row in idx])
    clear = counts[:, 0] > counts[:, 1]
    ours = majority_vote(y[knn.neighbours.indices])
    assert np.array_equal(ours[clear], loo[clear])
    assert knn.accuracy == pytest.approx(np.mean(ours == y))


def test_unlabeled_rows_give_no_accuracy() -> None:
    x = np.random.default_rng(0).standard_normal((20, 3))
    knn = layer_knn(x, np.full(20, -1), 3)
    assert knn.accuracy is None and knn.agreement is None


def test_per_layer_summary_in_json(sample_audits) -> None:
    for fmt in ("onnx", "torchscript"):
        data = load_json(sample_audits[fmt])
        accs = [layer["knn_accuracy"] for layer in data["layers"]]
        assert all(a is not None and 0 <= a <= 1 for a in accs)
        assert accs[-2] > accs[0] + 0.3  # deep features separate the classes far better than pixels
        knn = data["knn"]
        assert list(knn) == [layer["name"] for layer in data["layers"]]
        first = next(iter(knn.values()))
        assert 6 <= len(first) <= 60
        entry = first[0]
        assert set(entry) == {"query", "neighbours"} and len(entry["neighbours"]) == 10
        assert set(entry["neighbours"][0]) == {"file", "distance", "label"}
        assert all(n["file"] != entry["query"] for n in entry["neighbours"])


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
def test_a_large_reference_searched_in_slices_gives_the_same_neighbours(monkeypatch, metric: str) -> None:
    """The slice-by-slice route (memory-mapped layers of large sets) returns exactly the
    one-piece search's neighbours, own rows left out, ties by row across slice edges."""
    from reportgen.analyses import knn as knn_module

    rng = np.random.default_rng(5)
    x = rng.normal(size=(700, 6)).astype(np.float32)
    x[300] = x[10]  # an exact tie that straddles two slices
    whole = knn_search(x, x, 7, metric=metric, query_rows=np.arange(len(x)))
    monkeypatch.setattr(knn_module, "ROW_BLOCK", 64)
    monkeypatch.setattr(knn_module, "SLICE_BYTES", 8 * 6 * 100)  # 100-row slices
    sliced = knn_search(x, x, 7, metric=metric, query_rows=np.arange(len(x)))
    assert np.array_equal(sliced.indices, whole.indices)
    assert np.allclose(sliced.distances, whole.distances, rtol=0, atol=1e-12)
    assert not (sliced.indices == np.arange(len(x))[:, None]).any()
    reference = NearestNeighbors(n_neighbors=8, metric=metric, algorithm="brute").fit(x.astype(np.float64))
    _, theirs = reference.kneighbors(x.astype(np.float64))
    # sklearn includes the row itself (first, distance 0): the rest are ours, up to ties.
    assert np.mean([len(set(a) & set(b[1:])) / 7 for a, b in zip(sliced.indices, theirs, strict=True)]) > 0.99


def _torch_knn_cases(massive: bool) -> list[tuple[np.ndarray, np.ndarray | None]]:
    """Seeded features with exact ties: 31 identical rows (more than k + spares within the
    rounding bound), and with ``massive`` 301 more (the route that ranks every row from
    float64 products, whose last bits depend on how the reference is sliced, on either
    route: so not with slices)."""
    rng = np.random.default_rng(7)
    x = rng.normal(size=(1500, 24)).astype(np.float32)
    x[100:130] = x[5]
    if massive:
        x[600:900] = x[9]
    return [(x, None), (x[:400] + 0.01, x[500:])]


@pytest.mark.parametrize("metric", ["euclidean", "cosine"])
@pytest.mark.parametrize("spare", [32, 0])
@pytest.mark.parametrize("slice_rows", [None, 350])
def test_the_torch_search_gives_the_cpu_search_neighbours(monkeypatch, metric: str, spare: int, slice_rows) -> None:
    """The GPU route (run here on torch's CPU device) against the numpy search: the same
    rows in the same order, the same distances, with and without spare candidates and
    with the reference in slices."""
    from reportgen.models import cuda_knn

    monkeypatch.setattr(cuda_knn, "SPARE", spare)
    if slice_rows is not None:
        monkeypatch.setattr(cuda_knn, "_slice_rows", lambda dev, dims, n_ref: slice_rows)
    for queries, reference in _torch_knn_cases(massive=slice_rows is None):
        own = np.arange(len(queries)) if reference is None else None
        ref = queries if reference is None else reference
        want = knn_search(queries, ref, 10, metric=metric, query_rows=own)
        idx, dist = cuda_knn.knn_search_cuda(queries, ref, 10, metric=metric, query_rows=own, device="cpu")
        np.testing.assert_array_equal(idx, want.indices)
        np.testing.assert_allclose(dist, want.distances, rtol=1e-9, atol=1e-6)
        if own is not None:
            assert not (idx == own[:, None]).any()


def test_an_accelerated_search_makes_auto_exact(monkeypatch) -> None:
    """With an accelerated exact search, ``auto`` never builds the index, however large
    the work; ``approximate`` still does, and checks its recall with the accelerated one."""
    from reportgen.analyses import ann
    from reportgen.analyses.knn import find_neighbours
    from reportgen.models.cuda_knn import knn_search_cuda

    monkeypatch.setattr(ann, "EXACT_WORK", 1.0)  # everything counts as large
    x = np.random.default_rng(3).normal(size=(2000, 16)).astype(np.float32)
    calls = []

    def on_cpu(*args, **kwargs):
        calls.append(len(args[0]))
        return knn_search_cuda(*args, device="cpu", **kwargs)

    nb, how = find_neighbours(x, x, 5, leave_one_out=True, accelerated=on_cpu)
    assert how.method == "exact" and calls == [2000]
    np.testing.assert_array_equal(nb.indices, knn_search(x, x, 5, query_rows=np.arange(2000)).indices)
    _, how = find_neighbours(x, x, 5, leave_one_out=True, mode="approximate", accelerated=on_cpu)
    assert how.method == "approximate" and calls[1] == ann.RECALL_QUERIES and how.recall is not None
