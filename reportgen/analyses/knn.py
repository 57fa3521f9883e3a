"""k-nearest-neighbour search, and the per-layer kNN summaries.

Exact and blockwise (below), unless the work is too large for it: then through an
approximate index (``ann.py``) whose recall is measured here, on a sample of queries,
against this exact search (:func:`find_neighbours`).

The search computes squared Euclidean distances with one float32 matrix product per
block of queries, keeps a few more candidates than asked, recomputes their distances in
float64 and sorts them by (distance, index).  A row whose float32 boundary is too close
to call is searched again in float64, so the result is the exact neighbour list; memory
stays bounded by the block size whatever the number of images.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
from threadpoolctl import threadpool_limits

from reportgen.analyses import ann
from reportgen.util import ROW_BLOCK, release

_EPS32 = float(np.finfo(np.float32).eps)
BLOCK_BYTES = 64 << 20  # distance block held at once per worker
SLICE_BYTES = 256 << 20  # float64 reference rows searched at once (larger references go in slices)


@dataclass
class Neighbours:
    """k nearest reference rows for each query row, nearest first."""

    indices: np.ndarray  # (Q, k) int64 rows of the reference
    distances: np.ndarray  # (Q, k) float64; Euclidean, or cosine distance (1 - cos)


def knn_search(
    queries: np.ndarray,
    reference: np.ndarray,
    k: int,
    *,
    metric: str = "euclidean",
    query_rows: np.ndarray | None = None,
    workers: int | None = None,
) -> Neighbours:
    """Exact k nearest neighbours of every query among the reference rows.

    Parameters
    ----------
    queries, reference
        (Q, D) and (N, D) feature arrays.
    k
        Neighbours per query; capped at the number of available reference rows.
    metric
        ``euclidean`` or ``cosine``.
    query_rows
        When the queries are rows of ``reference`` (leave-one-out), their row numbers:
        each query's own row is never its neighbour.

    Ties in distance are broken by the lower reference row.  A reference too large to
    hold in float64 (a memory-mapped layer of a large set) is searched a slice at a time.
    """
    n_ref_rows = len(reference)
    dims = reference.shape[1] if reference.ndim == 2 else 1
    if n_ref_rows > ROW_BLOCK and 8 * n_ref_rows * dims > SLICE_BYTES:
        return _search_slices(queries, reference, k, metric, query_rows, workers)
    n_q, dim = queries.shape
    n_ref = reference.shape[0]
    k = max(0, min(k, n_ref - (1 if query_rows is not None else 0)))
    if k == 0 or n_q == 0:
        return Neighbours(np.zeros((n_q, 0), np.int64), np.zeros((n_q, 0)))

    def prep(x: np.ndarray) -> np.ndarray:
        return ann.prepared_rows(x, metric)

    # The rows stay as given (float16/float32, perhaps memory-mapped): what needs float64
    # is prepared a block or a gather at a time, never as a whole float64 copy.
    # [q, 1] . [-2r, |r|^2] = |r|^2 - 2 q.r: the ranking key, from one float32 product, of
    # rows less the reference's mean.  Distances don't move with the origin, but the key's
    # rounding grows with the norms: features far from the origin (ReLU outputs, pixels)
    # left so many rows within the bound below that whole blocks went the float64 way.
    plain = metric != "cosine"  # prepared rows are the rows themselves: float32 shortcuts apply
    centre = _mean_row(reference, prep, plain)
    q_sq, q_aug = _augmented(queries, prep, centre, 1.0, None, plain)
    r_sq, r_aug = _augmented(reference, prep, centre, -2.0, "norms", plain)
    full64: list[tuple[np.ndarray, np.ndarray]] = []
    full_lock = threading.Lock()

    def prepared_reference() -> tuple[np.ndarray, np.ndarray]:
        """The whole prepared, centred reference in float64 and its squared norms: only for
        massive ties, so made once, on demand."""
        with full_lock:
            if not full64:
                rows = prep(reference) - centre
                full64.append((rows, np.einsum("ij,ij->i", rows, rows)))
        return full64[0]

    # A bound on the float32 rounding of that key (a dot product of dim + 1 terms).
    err = 4.0 * np.sqrt(dim + 1.0) * _EPS32 * (q_sq + float(r_sq.max()) + 1.0)
    block = max(1, min(n_q, BLOCK_BYTES // (4 * n_ref)))
    out_idx = np.empty((n_q, k), np.int64)
    out_dist = np.empty((n_q, k), np.float64)
    local = threading.local()

    def exact_sq(rows: np.ndarray, cand: np.ndarray) -> np.ndarray:
        """Squared distances of each row to its candidates, in float64, in slices so the
        gathered candidate vectors stay within a few MB."""
        out = np.empty(cand.shape, np.float64)
        step = max(1, (8 << 20) // (8 * cand.shape[1] * max(1, dim)))
        for s in range(0, len(rows), step):
            diff = prep(reference[cand[s : s + step]]) - prep(queries[rows[s : s + step]])[:, None, :]
            out[s : s + step] = np.einsum("bmd,bmd->bm", diff, diff)
        return out

    def run(start: int) -> None:
        stop = min(n_q, start + block)
        b = stop - start
        rows = np.arange(start, stop)
        buf = getattr(local, "buf", None)
        if buf is None:
            buf = local.buf = np.empty((block, n_ref), np.float32)
        key = buf[:b]
        np.matmul(q_aug[start:stop], r_aug.T, out=key)
        if query_rows is not None:
            own = query_rows[start:stop]
            inside = own >= 0  # -1: the query's own row is not in this reference
            key[np.flatnonzero(inside), own[inside]] = np.inf
        # Every true neighbour has key <= (k-th smallest key) + 2 err: keep all of those.
        kth = np.partition(key, k - 1, axis=1)[:, k - 1] if k < n_ref else key.max(axis=1)
        threshold = kth + 2.0 * err[start:stop]
        flat = np.flatnonzero(key <= threshold[:, None])
        owner, cols = np.divmod(flat, n_ref)
        counts = np.bincount(owner, minlength=b)
        width = int(counts.max())
        if width > 8 * k + 64:
            # Massive ties (e.g. identical features): exact keys for the whole block.
            cand = np.broadcast_to(np.arange(n_ref), (b, n_ref))
            ref64, ref_sq = prepared_reference()
            q64 = prep(queries[start:stop]) - centre
            dots = q64 @ ref64.T
            sq = np.maximum(np.einsum("ij,ij->i", q64, q64)[:, None] + ref_sq[None, :] - 2.0 * dots, 0.0)
        else:
            # Pad rows to the widest candidate list; padding gets an infinite distance.
            cand = np.zeros((b, width), np.int64)
            slot = np.arange(len(cols)) - np.repeat(np.cumsum(counts) - counts, counts)
            cand[owner, slot] = cols
            sq = exact_sq(rows, cand)
            sq[np.arange(width)[None, :] >= counts[:, None]] = np.inf
        if query_rows is not None:
            sq = np.where(cand == query_rows[start:stop, None], np.inf, sq)
        order = np.lexsort((np.broadcast_to(cand, sq.shape), sq), axis=1)[:, :k]
        out_idx[start:stop] = np.take_along_axis(np.broadcast_to(cand, sq.shape), order, axis=1)
        out_dist[start:stop] = np.take_along_axis(sq, order, axis=1)

    starts = list(range(0, n_q, block))
    workers = workers or min(len(starts), os.cpu_count() or 1)
    # One BLAS thread per worker: the partitions and masks run in parallel with products.
    with threadpool_limits(limits=1 if workers > 1 else None, user_api="blas"):
        if workers > 1:
            with ThreadPoolExecutor(max_workers=workers) as pool:
                list(pool.map(run, starts))
        else:
            for s in starts:
                run(s)
    dist = np.sqrt(np.maximum(out_dist, 0.0))
    if metric == "cosine":
        dist = dist * dist / 2.0  # |a - b|^2 / 2 = 1 - cos for unit vectors
    return Neighbours(out_idx, dist)


def _mean_row(rows: np.ndarray, prep: Callable[[np.ndarray], np.ndarray], plain: bool) -> np.ndarray:
    """Mean of the prepared rows, a block at a time, rounded to float32: the origin of the
    ranking product (any origin gives the same distances; float32, so that rows can be
    moved to it in float32, see :func:`_augmented`)."""
    total = np.zeros(rows.shape[1], np.float64)
    for s in range(0, len(rows), ROW_BLOCK):
        block = rows[s : s + ROW_BLOCK]
        total += block.sum(axis=0, dtype=np.float64) if plain else prep(block).sum(axis=0)
    return (total / max(1, len(rows))).astype(np.float32).astype(np.float64)


def _augmented(
    rows: np.ndarray,
    prep: Callable[[np.ndarray], np.ndarray],
    centre: np.ndarray,
    scale: float,
    last: str | None,
    plain: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """float64 squared norms of the prepared rows less ``centre``, and the float32 rows
    [scale x, c] of the ranking product (x: a row less ``centre``; c = 1 for queries, the
    squared norm for reference rows), a block at a time.

    With ``plain`` rows (float32 or narrower, not normalised) the difference is taken in
    float32: the centre is a float32 value, so this is the float64 difference rounded
    once, as the product's rows are anyway, at a third of the time of going through a
    float64 copy (this preparation, not the product, was two thirds of a 300-query search
    of 200,000 rows)."""
    n, dim = rows.shape
    sq = np.empty(n, np.float64)
    aug = np.empty((n, dim + 1), np.float32)
    fast = plain and np.dtype(rows.dtype).itemsize <= 4 and np.dtype(rows.dtype).kind == "f"
    centre32 = centre.astype(np.float32)
    for s in range(0, n, ROW_BLOCK):
        out = aug[s : s + ROW_BLOCK, :-1]
        if fast:
            np.subtract(rows[s : s + ROW_BLOCK], centre32, out=out, dtype=np.float32)
            sq[s : s + ROW_BLOCK] = np.einsum("ij,ij->i", out, out, dtype=np.float64)
            out *= np.float32(scale)  # 1 or -2: exact
        else:
            x = prep(rows[s : s + ROW_BLOCK]) - centre
            sq[s : s + ROW_BLOCK] = np.einsum("ij,ij->i", x, x)
            np.multiply(x, scale, out=out, casting="same_kind")
    aug[:, -1] = sq if last == "norms" else 1.0
    return sq, aug


def _search_slices(
    queries: np.ndarray,
    reference: np.ndarray,
    k: int,
    metric: str,
    query_rows: np.ndarray | None,
    workers: int | None,
) -> Neighbours:
    """:func:`knn_search` over consecutive slices of the reference, merged by (distance,
    row): the same result, with memory bounded by one slice."""
    n_ref = len(reference)
    step = max(ROW_BLOCK, SLICE_BYTES // (8 * max(1, reference.shape[1])))
    parts_idx, parts_dist = [], []
    for a in range(0, n_ref, step):
        b = min(n_ref, a + step)
        own = None
        if query_rows is not None:
            own = np.where((query_rows >= a) & (query_rows < b), query_rows - a, -1)
        part = knn_search(queries, reference[a:b], k, metric=metric, query_rows=own, workers=workers)
        parts_idx.append(part.indices + a)
        parts_dist.append(part.distances)
    idx, dist = np.concatenate(parts_idx, axis=1), np.concatenate(parts_dist, axis=1)
    k = max(0, min(k, n_ref - (1 if query_rows is not None else 0)))
    order = np.lexsort((idx, dist), axis=1)[:, :k]
    return Neighbours(np.take_along_axis(idx, order, axis=1), np.take_along_axis(dist, order, axis=1))


def majority_vote(neighbour_labels: np.ndarray) -> np.ndarray:
    """The most common label per row; a tie goes to the tied label met first (nearest).

    ``neighbour_labels`` is (N, k) of non-negative ints, nearest first; -1 entries are
    ignored.  Rows with no usable neighbour get -1.
    """
    n, k = neighbour_labels.shape
    out = np.full(n, -1, np.int64)
    if k == 0:
        return out
    top = int(neighbour_labels.max(initial=-1)) + 1
    if top == 0:
        return out
    counts = np.zeros((n, top), np.int64)
    first = np.full((n, top), k, np.int64)
    for j in range(k - 1, -1, -1):
        lab = neighbour_labels[:, j]
        ok = lab >= 0
        rows = np.flatnonzero(ok)
        counts[rows, lab[ok]] += 1
        first[rows, lab[ok]] = j
    # Highest count first, then the label whose nearest occurrence is nearest.
    score = counts * (k + 1) + (k - first)
    best = score.argmax(axis=1)
    has = counts.max(axis=1) > 0
    out[has] = best[has]
    return out


# An exact search on an accelerator (``models.cuda_knn.knn_search_cuda``), passed in so
# that this module never imports torch: (queries, reference, k, metric=, query_rows=)
# -> (indices, distances), the same result as :func:`knn_search`.
AcceleratedSearch = Callable[..., tuple[np.ndarray, np.ndarray]]


@dataclass
class SearchReport:
    """How a neighbour search was done and, when approximate, how good it was."""

    method: str  # "exact" or "approximate"
    recall: float | None = None  # recall@k on the checked queries (approximate only)
    recall_queries: int = 0
    detail: str = ""  # the index's settings, in words


def find_neighbours(
    queries: np.ndarray,
    reference: np.ndarray,
    k: int,
    *,
    metric: str = "euclidean",
    leave_one_out: bool = False,
    own_rows: np.ndarray | None = None,
    mode: str = "auto",
    seed: int = 0,
    accelerated: AcceleratedSearch | None = None,
) -> tuple[Neighbours, SearchReport]:
    """The k nearest reference rows of every query: exact, or (``mode`` approximate, or
    auto and more work than ``ann.EXACT_WORK``) through the index, with its recall@k
    measured against the exact search for a seeded sample of queries.  With an
    ``accelerated`` exact search (a GPU), ``auto`` is always exact, through it.

    A query is never its own neighbour: with ``leave_one_out`` the queries are the
    reference's rows; ``own_rows`` gives, for a distinct reference that holds some of the
    queries' images, each query's row there (-1 where it holds none)."""
    rows = np.arange(len(queries)) if leave_one_out else own_rows
    k_cap = max(0, min(k, len(reference) - (1 if rows is not None else 0)))
    if accelerated is not None and mode != "approximate" and k_cap and len(queries):
        idx, dist = accelerated(queries, reference, k, metric=metric, query_rows=rows)
        return Neighbours(idx, dist), SearchReport("exact", detail="on the GPU")
    large = ann.is_large(len(queries), len(reference), reference.shape[1] if reference.ndim == 2 else 1)
    if mode == "exact" or (mode == "auto" and not large) or k_cap == 0 or len(queries) == 0:
        return knn_search(queries, reference, k, metric=metric, query_rows=rows), SearchReport("exact")
    # One copy in memory (see ann.in_memory) serves the index, the re-ranking and the exact check.
    source = reference
    reference = ann.in_memory(reference)
    queries = reference if leave_one_out else ann.in_memory(queries)
    release(source)  # its pages: the copy in memory serves from here on
    idx, dist, detail = ann.approximate_neighbours(
        queries, reference, k_cap, metric=metric, leave_one_out=leave_one_out, own=own_rows, seed=seed
    )
    rng = np.random.default_rng([seed, 1])  # not the index's stream: checking must not steer it
    checked = np.sort(rng.choice(len(queries), size=min(len(queries), ann.RECALL_QUERIES), replace=False))
    own = None if rows is None else rows[checked]
    if accelerated is not None:
        exact_idx, _ = accelerated(queries[checked], reference, k_cap, metric=metric, query_rows=own)
    else:
        exact_idx = knn_search(queries[checked], reference, k_cap, metric=metric, query_rows=own).indices
    recall = ann.recall_at_k(idx[checked], exact_idx)
    return Neighbours(idx, dist), SearchReport("approximate", recall, len(checked), detail)


@dataclass
class LayerKnn:
    """Leave-one-out kNN of every image at one layer, and what it says about labels."""

    layer: str
    neighbours: Neighbours  # rows of the reference (the audited set itself without --reference)
    accuracy: float | None  # majority vote of the neighbours' labels == own label
    agreement: float | None  # mean share of neighbours carrying the image's own label
    note: str = ""  # why accuracy and agreement are None where there are labels
    search: SearchReport = field(default_factory=lambda: SearchReport("exact"))


def layer_knn(
    features: np.ndarray,
    labels: np.ndarray,
    k: int,
    *,
    metric: str = "euclidean",
    reference: np.ndarray | None = None,
    reference_labels: np.ndarray | None = None,
    own_rows: np.ndarray | None = None,
    layer: str = "",
    search: str = "auto",
    seed: int = 0,
    accelerated: AcceleratedSearch | None = None,
) -> LayerKnn:
    """kNN of every row, from the reference set or (without one) leaving the row out.

    ``labels`` (and ``reference_labels``) are ints, -1 for unlabeled rows; accuracy and
    agreement are over the labeled rows, or None when there are none.  ``search``: see
    :func:`find_neighbours` (its report is kept on the result), as are ``accelerated``
    and ``own_rows`` (a reference that holds some of the audited images themselves).
    """
    if reference is None:
        nb, how = find_neighbours(
            features, features, k, metric=metric, leave_one_out=True, mode=search, seed=seed, accelerated=accelerated
        )
        ref_labels = labels
    else:
        nb, how = find_neighbours(
            features, reference, k, metric=metric, own_rows=own_rows, mode=search, seed=seed, accelerated=accelerated
        )
        ref_labels = reference_labels if reference_labels is not None else np.full(len(reference), -1)
    accuracy = agreement = None
    known = labels >= 0
    searched = features if reference is None else reference
    if len(searched) and not np.ptp(searched, axis=0).any():
        # Every candidate is at the same distance: the "neighbours" are whatever the
        # tie-break picks (row order), and a vote among them measures nothing.
        return LayerKnn(layer, nb, None, None, "every image has the same features at this layer: kNN undefined", how)
    if nb.indices.shape[1] and known.any():
        nl = ref_labels[nb.indices]
        vote = majority_vote(nl)
        accuracy = float(np.mean(vote[known] == labels[known]))
        agreement = float(np.mean((nl[known] == labels[known, None]).mean(axis=1)))
    return LayerKnn(layer, nb, accuracy, agreement, search=how)
