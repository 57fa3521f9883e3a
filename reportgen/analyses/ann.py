"""Approximate nearest neighbours for sets where the exact search costs too much, with
its recall measured against the exact search on every run.

The exact search (``knn.knn_search``) costs one multiply-add per query, reference row
and dimension: about 3.6 x 10^12 a minute on 2 cores for one product of 20,000 x 20,000
x 513 (the kNN benchmark), but about 2 x 10^12 a minute over a whole report's layers
(the dataset-scale benchmark at 50,000 images: 348 s for four 800-1,024-value layers
and five small ones), so 50,000 images at 1,024 dims take over a minute per layer, and
a million images 8 hours per layer.  Above :data:`EXACT_WORK` this module answers instead:

0. the layer is copied into memory, a block at a time (a memory-mapped float16 layer
   answers the random reads below an order of magnitude slower): as float32 up to
   2 GiB, beyond that as the float16 it is cached in (2 GB at a million images of 1,024
   values, the largest allocation of a large run);
1. the rows (unit rows for cosine) are projected on their leading :data:`INDEX_DIMS`
   principal components, computed from a seeded sample of :data:`PCA_SAMPLE` rows
   (rows with no more dimensions are indexed as they are);
2. a FAISS inverted-file index (``IndexIVFFlat``: 1.5 sqrt(N) k-means cells,
   seeded, trained on 39 rows per cell) finds :data:`RERANK` x k candidates per query
   (+1, the row itself) in that projection, probing the :data:`PROBES` cells nearest
   to the query;
3. the candidates are re-ranked by their exact distance in the full features (float64,
   ties by row, as the exact search breaks them): every distance reported is exact,
   only a true neighbour that the index missed can be missing;
4. the caller (``knn.find_neighbours``) runs the exact search for a seeded sample of
   :data:`RECALL_QUERIES` queries and measures the share of their true k neighbours found
   (recall@k), so the report states its own error.

The settings were chosen on the dataset-scale benchmark (``python -m benchmarks --suite
scale`` and one layer of its cache): at a million images of 1,024 values, 8 probes and
k + 1 candidates took 143 s on 2 cores at recall@10 0.962; 16 probes and 2k + 1
candidates reached 0.999 at about 1.6 times the time (timed under a profiler); 128
components with a sixteenth of the cells probed did not finish one layer in 15 minutes
(those with 4 sqrt(N) cells; :data:`CELLS_PER_ROOT` says why fewer now).

Why FAISS: Meta's library, maintained, with wheels for every platform (hnswlib is
published as source only; PyNNDescent compiles with numba on first use), an exact flat
index and inverted lists in one package, and the same index on CUDA.  It is imported
only here, only when the approximate route runs.
"""

from __future__ import annotations

import math
import os
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from reportgen.util import ROW_BLOCK, release

# Query x reference x (dims + PAIR_COST) above which the index is used: about 12 s per
# layer exact.  At 1e12 (30 s) a 50,000-image report spent 300 s in kNN, four times the
# 100,000-image report that used the index throughout (benchmarks/RESULTS-scale.md).
EXACT_WORK = 4e11
# The exact search's work per (query, reference) pair besides the product (the partition
# and threshold over every distance), in multiply-adds: whatever the dims, it is quadratic
# in the images.  At 50,000 images the five small layers (10-64 values) took ~25 s each.
PAIR_COST = 256
INDEX_DIMS = 64  # principal components the index searches in
PCA_SAMPLE = 20_000  # rows the principal components are computed from
RERANK = 1  # candidates per neighbour taken from the index before exact re-ranking (+1 for the row itself)
PROBES = 8  # cells probed per query: the measured recall says how it went
# Cells per square root of the rows.  k-means costs ~cells^2 (its training rows grow with
# the cells) and each probe scans rows / cells: at 200,000 images of 1,024 values, 1.5
# took 14.4 s a layer at recall@10 0.981 where 4 took 16.5 s at 0.959 (the k-means alone
# 8 s of it under a profiler); 1.5 with 4 probes fell to 0.93.
CELLS_PER_ROOT = 1.5
# Queries checked against the exact search: 3,000 neighbours at k = 10, a standard error
# of about 0.004 on a recall near 0.95; each costs a row of the exact search (500 took
# ~4 s a layer at 200,000 images of 1,024 values).
RECALL_QUERIES = 300
# Largest float32 copy of a float16 layer the index route makes; above, it keeps float16.
# At a million images of 1,024 values float32 is 4 GB, the largest allocation of a run,
# and the 1,000,000-image report peaked at 7.6-8.1 GB; float16 halves it, for a slower
# re-ranking and recall check (2.3x and 1.6x on 200,000 x 1,024, measured).
IN_MEMORY_FLOAT32 = 2 << 30
MIN_ROWS_PER_CELL = 39  # FAISS's k-means wants at least this many training rows per cell
KMEANS_ITERATIONS = 10


def is_large(n_queries: int, n_reference: int, dims: int) -> bool:
    """Whether the exact search would cost more than :data:`EXACT_WORK`: the product's
    multiply-adds, plus :data:`PAIR_COST` for the per-pair selection work."""
    return float(n_queries) * float(n_reference) * float(max(dims, 1) + PAIR_COST) > EXACT_WORK


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


def _projection(
    x: np.ndarray, dims: int, rng: np.random.Generator, metric: str
) -> tuple[np.ndarray, np.ndarray | None]:
    """Mean and (D, dims) leading principal axes of the prepared rows, from a seeded
    sample; no axes when the rows have no more than ``dims`` dimensions."""
    rows = np.sort(rng.choice(len(x), size=min(len(x), PCA_SAMPLE), replace=False))
    sample = prepared_rows(x[rows], metric)
    mean = sample.mean(axis=0)
    return mean, (principal_axes(sample - mean, dims) if dims < x.shape[1] else None)


def _project(x: np.ndarray, mean: np.ndarray, axes: np.ndarray | None, metric: str) -> np.ndarray:
    """The prepared, centred rows on the axes (all of them without axes), float32.

    In float32 throughout (unit rows for cosine are made in float64 first): the projection
    only chooses candidates, whose distances are then computed exactly; in float64 it took
    18 s of the 121 s kNN phase at 200,000 images (profiled, 2 cores)."""
    out = np.empty((len(x), x.shape[1] if axes is None else axes.shape[1]), np.float32)
    mean32 = mean.astype(np.float32)
    axes32 = None if axes is None else axes.astype(np.float32)
    for s in range(0, len(x), ROW_BLOCK):
        block = x[s : s + ROW_BLOCK]
        rows = prepared_rows(block, metric).astype(np.float32) if metric == "cosine" else np.asarray(block, np.float32)
        centred = rows - mean32
        out[s : s + ROW_BLOCK] = centred if axes32 is None else centred @ axes32
    return out


def _rerank(
    queries: np.ndarray, reference: np.ndarray, cand: np.ndarray, k: int, own: np.ndarray | None, metric: str
) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest of each row's candidates by exact float64 distance (between unit rows
    for cosine, as the exact search computes it), ties by row."""
    n = len(cand)
    idx = np.empty((n, k), np.int64)
    dist = np.empty((n, k), np.float64)
    # Small blocks that stay in cache: 4 MB of differences took half the time of 16 MB.
    step = max(1, (4 << 20) // (8 * cand.shape[1] * max(1, queries.shape[1])))

    def run(first: int, stop: int) -> None:
        for s in range(first, stop, step):
            e = min(stop, s + step)
            c = cand[s:e]
            valid = c >= 0  # FAISS pads with -1 when a query's probed cells hold too few rows
            safe = np.where(valid, c, 0)
            if metric == "cosine":
                diff = prepared_rows(reference[safe], metric) - prepared_rows(queries[s:e], metric)[:, None, :]
            else:
                # The difference of two float32 (or float16) values is exact in float64: computed
                # there at once, without float64 copies of the gathered rows first.
                diff = np.subtract(reference[safe], queries[s:e][:, None, :], dtype=np.float64)
            sq = np.einsum("bmd,bmd->bm", diff, diff)
            sq[~valid] = np.inf
            if own is not None:
                sq[safe == own[s:e, None]] = np.inf
            order = np.lexsort((safe, sq), axis=1)[:, :k]
            idx[s:e] = np.take_along_axis(safe, order, axis=1)
            dist[s:e] = np.take_along_axis(sq, order, axis=1)

    # Rows are independent and numpy lets go of the GIL in these loops: one range per core
    # (the re-ranking was the largest single-threaded part of the index route).
    workers = max(1, min(os.cpu_count() or 1, n // (16 * step)))
    edges = np.linspace(0, n, workers + 1).astype(int)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        list(pool.map(run, edges[:-1].tolist(), edges[1:].tolist()))
    return idx, np.sqrt(np.maximum(dist, 0.0))


def in_memory(x: np.ndarray) -> np.ndarray:
    """The rows as one array in memory, copied a block at a time: the index route reads
    rows many times and at random, which a memory-mapped float16 layer answers an order
    of magnitude slower.  float32, unless the rows are float16 and a float32 copy would
    pass :data:`IN_MEMORY_FLOAT32`: then float16 (the same values; every distance is
    still computed in float64 from them)."""
    keep16 = x.dtype == np.float16 and x.size * 4 > IN_MEMORY_FLOAT32
    out = np.empty(x.shape, np.float16 if keep16 else np.float32)
    for s in range(0, len(x), ROW_BLOCK):
        out[s : s + ROW_BLOCK] = x[s : s + ROW_BLOCK]
        release(x)  # the copy replaces the mapped pages block by block, not on top of all of them
    return out


def approximate_neighbours(
    queries: np.ndarray,
    reference: np.ndarray,
    k: int,
    *,
    metric: str = "euclidean",
    leave_one_out: bool = False,
    own: np.ndarray | None = None,
    seed: int = 0,
) -> tuple[np.ndarray, np.ndarray, str]:
    """Indices (Q, k) and exact distances of the k nearest reference rows found through
    the index (see the module notes), and the index's settings in words.  ``queries``
    and ``reference`` are arrays in memory (:func:`in_memory`; the same array
    with ``leave_one_out``: then a row is never its own neighbour); ``own`` gives each
    query's own row in a distinct reference (-1: none), never its neighbour either; ``k``
    must leave enough rows (the caller caps it)."""
    import faiss

    n_q, n_ref = len(queries), len(reference)
    rng = np.random.default_rng(seed)
    dims = min(INDEX_DIMS, reference.shape[1])
    mean, axes = _projection(reference, dims, rng, metric)
    ref_low = _project(reference, mean, axes, metric)
    qry_low = ref_low if leave_one_out else _project(queries, mean, axes, metric)
    space = f"all {dims} dimensions" if axes is None else f"the leading {dims} principal components"

    cells = int(min(max(1, round(CELLS_PER_ROOT * math.sqrt(n_ref))), max(1, n_ref // MIN_ROWS_PER_CELL)))
    quantizer = faiss.IndexFlatL2(dims)
    index = faiss.IndexIVFFlat(quantizer, dims, cells, faiss.METRIC_L2)
    index.cp.seed = int(seed)
    index.cp.niter = KMEANS_ITERATIONS
    train_rows = np.sort(rng.choice(n_ref, size=min(n_ref, MIN_ROWS_PER_CELL * cells), replace=False))
    index.train(np.ascontiguousarray(ref_low[train_rows]))
    index.add(np.ascontiguousarray(ref_low))
    index.nprobe = int(min(cells, PROBES))
    if leave_one_out:
        own = np.arange(n_q)
    want = min(n_ref, RERANK * k + (1 if own is not None else 0))
    _, cand = index.search(np.ascontiguousarray(qry_low), want)
    del ref_low, qry_low, index
    idx, dist = _rerank(queries, reference, cand.astype(np.int64), k, own, metric)
    if metric == "cosine":
        dist = dist * dist / 2.0  # |a - b|^2 / 2 = 1 - cos for unit rows
    detail = (
        f"FAISS IndexIVFFlat over {space}: {cells} cells, {min(cells, PROBES)} probed, "
        f"{want} candidates per query re-ranked by exact distance"
    )
    return idx, dist, detail


def recall_at_k(found: np.ndarray, exact: np.ndarray) -> float:
    """Share of the exact neighbours (rows of ``exact``) that ``found`` holds, same rows."""
    if exact.size == 0:
        return 1.0
    hits = sum(len(set(a) & set(b)) for a, b in zip(found.tolist(), exact.tolist(), strict=True))
    return hits / exact.size
