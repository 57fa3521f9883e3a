"""Exact k-nearest-neighbour search on a CUDA device, with torch.

It lives under ``models/`` because torch is imported only here and in the adapters; the
analyses (``analyses/knn.py``) receive it as a plain function and never import torch.

The result is the CPU search's (``analyses.knn.knn_search``): the same neighbours, ties
broken by the lower reference row, distances recomputed in float64 from the same
differences (identical rows tie exactly here too).  Only where two distances differ in
their last bits, and float64 sums in another order rank them the other way (all-zero
rows under the cosine metric), can the order of such a tie differ.  Per block of
queries, one float32 product (TF32 off) ranks every reference row by |r|^2 - 2 q.r; the
k + :data:`SPARE` best go on, and a row whose last spare is within the product's rounding
bound of its k-th is searched again with float64 products over every reference row, so
near-ties never decide by rounding.  At a million images of 1,024 values the product is
about 10^15 multiply-adds a layer: under a minute on an H100, where 2 CPU cores need
hours (and use the approximate index instead).
"""

from __future__ import annotations

import numpy as np

TIE_WIDTH = 8  # as the CPU search: above 8 k + 64 rows within the bound, exact keys for every row
SPARE = 32  # candidates kept beyond k, so that a rounding-close (k+1)-th rarely forces a float64 pass
KEY_BYTES = 1 << 30  # float32 ranking keys held on the device at once
GATHER_BYTES = 256 << 20  # float64 candidate rows gathered at once for the exact distances
UPLOAD_BYTES = 64 << 20  # host rows converted to float32 at once on their way to the device
DEVICE_SHARE = 0.4  # of the free device memory, at most, for one slice of the reference
_EPS32 = float(np.finfo(np.float32).eps)


def cuda_ready(requested: str) -> bool:
    """Whether a search asked for on ``requested`` (``auto``, ``cpu``, ``cuda``) runs on a
    CUDA device: ``cpu`` never; otherwise when torch sees one."""
    if requested == "cpu":
        return False
    import torch

    return bool(torch.cuda.is_available())


def knn_search_cuda(
    queries: np.ndarray,
    reference: np.ndarray,
    k: int,
    *,
    metric: str = "euclidean",
    query_rows: np.ndarray | None = None,
    device: str = "cuda",
) -> tuple[np.ndarray, np.ndarray]:
    """(indices (Q, k) int64, distances (Q, k) float64) of the exact k nearest reference rows
    of each query, nearest first; the arguments are ``analyses.knn.knn_search``'s
    (``query_rows``: the queries' own rows in the reference, never their neighbour; -1 for
    none), ``device`` any torch device (tests run it on ``cpu``).  Distances are Euclidean
    or, for ``cosine``, 1 - cos."""
    import torch

    dev = torch.device(device)
    n_q, n_ref = len(queries), len(reference)
    k = max(0, min(k, n_ref - (1 if query_rows is not None else 0)))
    if k == 0 or n_q == 0:
        return np.zeros((n_q, 0), np.int64), np.zeros((n_q, 0))
    dims = reference.shape[1] if reference.ndim == 2 else 1
    step = _slice_rows(dev, dims, n_ref)
    idx_parts, sq_parts = [], []
    for a in range(0, n_ref, step):
        b = min(n_ref, a + step)
        own = None
        if query_rows is not None:
            own = np.where((query_rows >= a) & (query_rows < b), query_rows - a, -1)
        i, s = _search_slice(queries, reference[a:b], k, metric, own, dev)
        idx_parts.append(i + a)
        sq_parts.append(s)
    idx, sq = np.concatenate(idx_parts, axis=1), np.concatenate(sq_parts, axis=1)
    if len(idx_parts) > 1:
        order = np.lexsort((idx, sq), axis=1)[:, :k]
        idx, sq = np.take_along_axis(idx, order, axis=1), np.take_along_axis(sq, order, axis=1)
    dist = np.sqrt(np.maximum(sq, 0.0))
    if metric == "cosine":
        dist = dist * dist / 2.0  # |a - b|^2 / 2 = 1 - cos for unit rows
    return idx, dist


def _slice_rows(dev: object, dims: int, n_ref: int) -> int:
    """Reference rows searched at once: what fits in :data:`DEVICE_SHARE` of the device's
    free memory (all of them off CUDA)."""
    import torch

    if getattr(dev, "type", "cpu") != "cuda":
        return n_ref
    free, _ = torch.cuda.mem_get_info(dev)
    return max(1, int(DEVICE_SHARE * free) // (4 * dims + 16))


def _search_slice(
    queries: np.ndarray, reference: np.ndarray, k: int, metric: str, own: np.ndarray | None, dev: object
) -> tuple[np.ndarray, np.ndarray]:
    """Indices and exact squared distances of each query's k nearest rows of this slice
    (fewer columns, padded with infinite distance, when the slice is smaller than k)."""
    import torch

    n_q, n_ref = len(queries), len(reference)
    cosine = metric == "cosine"
    ref = _upload(reference, dev)  # raw rows, float32
    # The CPU search divides each row by its float64 norm (zero rows stay zero): so here,
    # for the same distances to the last bits, and so the same ties.
    norms = None
    if cosine:
        raw = torch.linalg.vector_norm(ref.double(), dim=1)
        norms = torch.where(raw > 0, raw, torch.ones_like(raw))
    r_sq = _squared_norms(ref, norms)
    r_sq32 = r_sq.float()
    m = min(n_ref, k + SPARE)
    width = min(k, n_ref)
    out_idx = np.empty((n_q, width), np.int64)
    out_sq = np.empty((n_q, width), np.float64)
    block = max(1, min(n_q, KEY_BYTES // (4 * n_ref)))
    previous = torch.backends.cuda.matmul.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # the rounding bound below is float32's
    try:
        for s in range(0, n_q, block):
            e = min(n_q, s + block)
            q64 = _prepared(_upload(queries[s:e], dev).double(), cosine)
            q_sq = (q64**2).sum(dim=1)
            key = q64.float() @ ref.T
            if cosine:
                key /= norms.float()[None, :]
            key = r_sq32[None, :] - 2.0 * key
            rows = torch.arange(e - s, device=dev)
            mine = None
            if own is not None:
                mine = torch.from_numpy(own[s:e]).to(dev)
                inside = mine >= 0
                key[rows[inside], mine[inside]] = torch.inf
            vals, cand = torch.topk(key, m, dim=1, largest=False, sorted=True)
            # A bound on the float32 rounding of each key (a dot product of dims + 1 terms):
            # every true neighbour's key is within 2 bounds of the k-th key.
            err = 4.0 * (ref.shape[1] + 1.0) ** 0.5 * _EPS32 * (q_sq + float(r_sq.max()) + 1.0)
            threshold = vals[:, width - 1].double() + 2.0 * err
            sq = _exact_sq(q64, ref, norms, cand)
            if mine is not None:
                sq[cand == mine[:, None]] = torch.inf
            idx_b, sq_b = _first_by_distance(cand, sq, width)
            if m < n_ref:
                redo = torch.nonzero(vals[:, m - 1].double() <= threshold).flatten()
                if len(redo):
                    # More rows within the rounding bound than spares: take all of them,
                    # or (massive ties, as the CPU search decides) every row from float64
                    # products.
                    counts = (key[redo].double() <= threshold[redo, None]).sum(dim=1)
                    wide = int(counts.max())
                    if wide > TIE_WIDTH * width + 64:
                        cand2 = torch.arange(n_ref, device=dev).expand(len(redo), n_ref)
                        sq2 = _full_sq(q64[redo], q_sq[redo], ref, norms, r_sq)
                    else:
                        _, cand2 = torch.topk(key[redo], wide, dim=1, largest=False, sorted=True)
                        sq2 = _exact_sq(q64[redo], ref, norms, cand2)
                    if mine is not None:
                        sq2[cand2 == mine[redo, None]] = torch.inf
                    idx_b[redo], sq_b[redo] = _first_by_distance(cand2, sq2, width)
            del key
            out_idx[s:e] = idx_b.cpu().numpy()
            out_sq[s:e] = sq_b.cpu().numpy()
    finally:
        torch.backends.cuda.matmul.allow_tf32 = previous
    return out_idx, out_sq


def _upload(rows: np.ndarray, dev: object) -> object:
    """Rows (float16, float32 or float64; memory-mapped or not) as float32 on the device,
    converted a block at a time: no whole float32 copy in host memory."""
    import torch

    rows = rows.reshape(len(rows), -1)
    out = torch.empty(rows.shape, dtype=torch.float32, device=dev)
    step = max(1, UPLOAD_BYTES // (4 * max(1, rows.shape[1])))
    for a in range(0, len(rows), step):
        out[a : a + step] = torch.from_numpy(np.ascontiguousarray(rows[a : a + step], dtype=np.float32))
    return out


def _prepared(rows64: object, cosine: bool) -> object:
    """float64 rows, unit-length for cosine (zero rows stay zero), as the CPU search prepares them."""
    import torch

    if not cosine:
        return rows64
    norms = torch.linalg.vector_norm(rows64, dim=1, keepdim=True)
    return torch.where(norms > 0, rows64 / torch.where(norms > 0, norms, 1.0), torch.zeros_like(rows64))


def _squared_norms(ref: object, norms: object | None) -> object:
    """float64 squared norms of the prepared reference rows, a slice at a time."""
    import torch

    out = torch.empty(len(ref), dtype=torch.float64, device=ref.device)
    step = max(1, GATHER_BYTES // (8 * max(1, ref.shape[1])))
    for a in range(0, len(ref), step):
        rows = ref[a : a + step].double()
        if norms is not None:
            rows = rows / norms[a : a + step, None]
        out[a : a + step] = (rows * rows).sum(dim=1)
    return out


def _exact_sq(q64: object, ref: object, norms: object | None, cand: object) -> object:
    """float64 squared distances of each prepared query row to its candidate reference rows,
    gathered a slice at a time."""
    import torch

    n, m = cand.shape
    dims = ref.shape[1]
    out = torch.empty((n, m), dtype=torch.float64, device=ref.device)
    step = max(1, GATHER_BYTES // (8 * m * max(1, dims)))
    for s in range(0, n, step):
        c = cand[s : s + step]
        rows = ref[c].double()
        if norms is not None:
            rows = rows / norms[c][..., None]
        diff = rows - q64[s : s + step, None, :]
        out[s : s + step] = (diff * diff).sum(dim=2)
    return out


def _full_sq(q64: object, q_sq: object, ref: object, norms: object | None, r_sq: object) -> object:
    """float64 squared distances of prepared query rows to every reference row, from
    float64 products of a slice of the reference at a time (as the CPU search's tie path)."""
    import torch

    n_ref, dims = ref.shape
    out = torch.empty((len(q64), n_ref), dtype=torch.float64, device=ref.device)
    step = max(1, GATHER_BYTES // (8 * max(1, dims)))
    for a in range(0, n_ref, step):
        rows = ref[a : a + step].double()
        if norms is not None:
            rows = rows / norms[a : a + step, None]
        out[:, a : a + step] = q_sq[:, None] + r_sq[None, a : a + step] - 2.0 * (q64 @ rows.T)
    return out.clamp_(min=0.0)


def _first_by_distance(cand: object, sq: object, k: int) -> tuple[object, object]:
    """The k candidates of each row with the smallest distance, ties by the lower index."""
    import torch

    by_index, perm = torch.sort(cand, dim=1)
    sq = torch.gather(sq, 1, perm)
    sq_sorted, order = torch.sort(sq, dim=1, stable=True)
    return torch.gather(by_index, 1, order[:, :k]), sq_sorted[:, :k]
