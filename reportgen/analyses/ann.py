"""Approximate nearest neighbours for sets where the exact search costs too much, with
its recall measured against the exact search on every run.

The exact search (``knn.knn_search``) costs one multiply-add per query, reference row
and dimension: about 3.6 x 10^12 a minute on 2 cores (the kNN benchmark: 20,000 x 20,000
x 513 in 3.4 s), so 50,000 images at 1,024 dims take about 40 s per layer, and a million
images 5 hours per layer.  Above :data:`EXACT_WORK` this module answers instead:

1. the rows (unit rows for cosine) are projected on their leading :data:`INDEX_DIMS`
   principal components, computed from a seeded sample;
2. a FAISS inverted-file index (``IndexIVFFlat``: k-means cells, seeded) finds
   :data:`RERANK` x k candidates per query in that projection, probing the cells nearest
   to the query;
3. the candidates are re-ranked by their exact distance in the full features (float64,
   ties by row, as the exact search breaks them): every distance reported is exact,
   only a true neighbour that the index missed can be missing;
4. the caller (``knn.find_neighbours``) runs the exact search for a seeded sample of
   :data:`RECALL_QUERIES` queries and measures the share of their true k neighbours found
   (recall@k), so the report states its own error.

Why FAISS: Meta's library, maintained, with wheels for every platform (hnswlib is
published as source only; PyNNDescent compiles with numba on first use), an exact flat
index and inverted lists in one package, and the same index on CUDA.  It is imported
only here, only when the approximate route runs.
"""

from __future__ import annotations

import math

import numpy as np

EXACT_WORK = 4e12  # query x reference x dims above which the index is used: ~1 min per layer exact
INDEX_DIMS = 128  # principal components the index searches in
PCA_SAMPLE = 100_000  # rows the principal components are computed from
RERANK = 4  # candidates per neighbour taken from the index before exact re-ranking
RECALL_QUERIES = 1000  # queries checked against the exact search
MIN_ROWS_PER_CELL = 39  # FAISS's k-means wants at least this many training rows per cell


def is_large(n_queries: int, n_reference: int, dims: int) -> bool:
    """Whether the exact search would cost more than :data:`EXACT_WORK`."""
    return float(n_queries) * float(n_reference) * float(max(dims, 1)) > EXACT_WORK


def prepared_rows(x: np.ndarray, metric: str) -> np.ndarray:
    """Rows as float64 (exact distances are computed in float64), unit-length for cosine.
    Callers here pass blocks, so a memory-mapped array is never copied whole."""
    x = np.asarray(x, dtype=np.float64)
    if metric == "cosine":
        norms = np.linalg.norm(x, axis=-1, keepdims=True)
        x = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
    return x


def principal_axes(centred: np.ndarray, dims: int) -> np.ndarray:
    """(D, dims) leading principal axes of centred rows, each signed so that its largest
    loading is positive: the same input gives the same projection."""
    values, vectors = np.linalg.eigh(centred.T @ centred)
    axes = vectors[:, np.argsort(values)[::-1][:dims]]
    signs = np.sign(axes[np.abs(axes).argmax(axis=0), np.arange(axes.shape[1])])
    signs[signs == 0] = 1
    return axes * signs


def _projection(x: np.ndarray, dims: int, rng: np.random.Generator, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """Mean and (D, dims) leading principal axes, from a seeded sample of rows."""
    rows = np.sort(rng.choice(len(x), size=min(len(x), PCA_SAMPLE), replace=False))
    sample = prepared_rows(x[rows], metric)
    mean = sample.mean(axis=0)
    return mean, principal_axes(sample - mean, dims)


def _project(x: np.ndarray, mean: np.ndarray, axes: np.ndarray, metric: str, block: int = 65536) -> np.ndarray:
    out = np.empty((len(x), axes.shape[1]), np.float32)
    for s in range(0, len(x), block):
        out[s : s + block] = (prepared_rows(x[s : s + block], metric) - mean) @ axes
    return out


def _rerank(
    queries: np.ndarray, reference: np.ndarray, cand: np.ndarray, k: int, own: np.ndarray | None, metric: str
) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest of each row's candidates by exact float64 distance (between unit rows
    for cosine, as the exact search computes it), ties by row."""
    n = len(cand)
    idx = np.empty((n, k), np.int64)
    dist = np.empty((n, k), np.float64)
    step = max(1, (32 << 20) // (8 * cand.shape[1] * max(1, queries.shape[1])))
    for s in range(0, n, step):
        c = cand[s : s + step]
        valid = c >= 0  # FAISS pads with -1 when a query's probed cells hold too few rows
        safe = np.where(valid, c, 0)
        diff = prepared_rows(reference[safe], metric) - prepared_rows(queries[s : s + step], metric)[:, None, :]
        sq = np.einsum("bmd,bmd->bm", diff, diff)
        sq[~valid] = np.inf
        if own is not None:
            sq[safe == own[s : s + step, None]] = np.inf
        order = np.lexsort((safe, sq), axis=1)[:, :k]
        idx[s : s + step] = np.take_along_axis(safe, order, axis=1)
        dist[s : s + step] = np.take_along_axis(sq, order, axis=1)
    return idx, np.sqrt(np.maximum(dist, 0.0))


def approximate_neighbours(
    queries: np.ndarray,
    reference: np.ndarray,
    k: int,
    *,
    metric: str = "euclidean",
    leave_one_out: bool = False,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, str]:
    """Indices (Q, k) and exact distances of the k nearest reference rows found through
    the index (see the module notes), and the index's settings in words.  With
    ``leave_one_out`` the queries are the reference rows and a row is never its own
    neighbour; ``k`` must leave enough rows (the caller caps it)."""
    import faiss

    n_q, n_ref = len(queries), len(reference)
    rng = np.random.default_rng(seed)
    dims = min(INDEX_DIMS, reference.shape[1])
    mean, axes = _projection(reference, dims, rng, metric)
    ref_low = _project(reference, mean, axes, metric)
    qry_low = ref_low if leave_one_out else _project(queries, mean, axes, metric)

    cells = int(min(max(1, round(4 * math.sqrt(n_ref))), max(1, n_ref // MIN_ROWS_PER_CELL)))
    quantizer = faiss.IndexFlatL2(dims)
    index = faiss.IndexIVFFlat(quantizer, dims, cells, faiss.METRIC_L2)
    index.cp.seed = int(seed)
    train_rows = np.sort(rng.choice(n_ref, size=min(n_ref, 256 * cells), replace=False))
    index.train(np.ascontiguousarray(ref_low[train_rows]))
    index.add(np.ascontiguousarray(ref_low))
    # Probing a sixteenth of the cells (at least 8): the measured recall says how it went.
    index.nprobe = int(min(cells, max(8, cells // 16)))
    want = min(n_ref, RERANK * k + (1 if leave_one_out else 0))
    _, cand = index.search(np.ascontiguousarray(qry_low), want)
    own = np.arange(n_q) if leave_one_out else None
    idx, dist = _rerank(queries, reference, cand.astype(np.int64), k, own, metric)
    if metric == "cosine":
        dist = dist * dist / 2.0  # |a - b|^2 / 2 = 1 - cos for unit rows
    detail = (
        f"FAISS IndexIVFFlat over the leading {dims} principal components: {cells} cells, {index.nprobe} probed, "
        f"{want} candidates per query re-ranked by exact distance"
    )
    return idx, dist, detail


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Share of the exact neighbours (rows of ``exact``) that ``found`` holds, same rows."""
    if exact.size == 0:
        return 1.0
    hits = sum(len(set(a) & set(b)) for a, b in zip(found.tolist(), exact.tolist(), strict=True))
    return hits / exact.size
