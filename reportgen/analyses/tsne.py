"""t-SNE of every layer, aligned from layer to layer, and its trustworthiness.

Per layer, in layer order:

1. PCA to at most 50 dimensions (t-SNE only needs the local structure, which the leading
   components keep; it makes the neighbour search cheap);
2. exact neighbours (3 x perplexity) with ``knn.knn_search`` and Gaussian affinities
   calibrated to the perplexity by bisection, in numpy;
3. gradient descent by openTSNE (FFT-interpolated gradients for large sets, Barnes-Hut
   for small ones).  The first layer starts from its PCA and runs the full schedule;
   every later layer starts from the previous layer's embedding with a shorter early
   exaggeration and fewer iterations: a warm start that is both cheaper and makes
   points move smoothly from one frame of the animation to the next;
4. orthogonal Procrustes alignment (rotation, reflection, scale) onto the previous
   layer, so the frames don't spin.

Layers whose features are all identical (or nearly) get no embedding: t-SNE is
undefined there, and both scikit-learn (segfault) and openTSNE (NaN) fail on them.
Above ``max_points`` images, a seeded sample stratified by label is embedded.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from scipy import sparse

from reportgen.analyses.ann import principal_axes
from reportgen.analyses.knn import knn_search

PERPLEXITY = 30.0
PCA_DIMS = 50


@dataclass
class TsneSchedule:
    """Iterations of the first layer and of each warm-started layer."""

    first_exaggeration: int = 150
    first_main: int = 250
    warm_exaggeration: int = 50
    warm_main: int = 100
    exaggeration: float = 12.0


@dataclass
class TsneResult:
    """Aligned 2-D embeddings of the sampled images, one per layer."""

    layers: list[str]
    rows: np.ndarray  # rows of the feature arrays that were embedded
    embeddings: dict[str, np.ndarray | None]  # (n, 2), aligned and scaled to unit RMS radius
    trustworthiness: dict[str, float | None]
    notes: dict[str, str] = field(default_factory=dict)
    sampled: bool = False
    n_total: int = 0
    seconds: dict[str, float] = field(default_factory=dict)


def stratified_sample(labels: np.ndarray, size: int, seed: int) -> np.ndarray:
    """``size`` row numbers, the same share from every label (seeded), sorted."""
    n = len(labels)
    if n <= size:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    chosen = []
    values, counts = np.unique(labels, return_counts=True)
    quotas = np.floor(counts * size / n).astype(int)
    # Hand out the remainder to the largest fractional parts, deterministically.
    remainder = size - quotas.sum()
    frac = counts * size / n - quotas
    for i in np.argsort(-frac, kind="stable")[:remainder]:
        quotas[i] += 1
    for value, quota in zip(values, quotas, strict=True):
        members = np.flatnonzero(labels == value)
        chosen.append(rng.choice(members, size=min(quota, len(members)), replace=False))
    return np.sort(np.concatenate(chosen))


def pca(x: np.ndarray, dims: int) -> np.ndarray:
    """Projection on the leading principal components (deterministic signs)."""
    x = np.asarray(x, np.float64)
    x = x - x.mean(axis=0)
    dims = min(dims, x.shape[0] - 1, x.shape[1])
    if x.shape[1] <= dims:
        return x
    return x @ principal_axes(x, dims)


def is_degenerate(x: np.ndarray) -> bool:
    """True when all rows are identical up to rounding noise."""
    if len(x) < 2:
        return True
    spread = np.ptp(x, axis=0).max()
    scale = np.abs(x).max()
    return not np.isfinite(spread) or spread <= 1e-7 * max(scale, 1e-30)


def gaussian_affinities(distances: np.ndarray, indices: np.ndarray, perplexity: float) -> sparse.csr_matrix:
    """Symmetric joint probabilities P (sum 1) from kNN distances, by perplexity bisection."""
    n, k = distances.shape
    d2 = distances.astype(np.float64) ** 2
    d2 = d2 - d2[:, :1]  # shift by the nearest distance: same P, no underflow
    target = np.log(perplexity)
    lo = np.full(n, 1e-20)
    hi = np.full(n, np.inf)
    beta = np.ones(n)
    for _ in range(100):
        w = np.exp(-d2 * beta[:, None])
        total = w.sum(axis=1)
        p = w / total[:, None]
        entropy = np.log(total) + beta * (d2 * p).sum(axis=1)
        diff = entropy - target
        if np.all(np.abs(diff) < 1e-5):
            break
        up = diff > 0  # entropy too high: sharpen (raise beta)
        lo = np.where(up, beta, lo)
        hi = np.where(up, hi, beta)
        beta = np.where(np.isinf(hi), beta * 2.0, (lo + hi) / 2.0)
    rows = np.repeat(np.arange(n), k)
    cond = sparse.csr_matrix((p.ravel(), (rows, indices.ravel())), shape=(n, n))
    joint = cond + cond.T
    joint /= joint.sum()
    return joint.tocsr()


def procrustes(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """``source`` rotated/reflected and scaled to best match ``target`` (both centred)."""
    u, _, vt = np.linalg.svd(source.T @ target)
    rotated = source @ (u @ vt)
    return rotated


def _unit_rms(y: np.ndarray) -> np.ndarray:
    y = y - y.mean(axis=0)
    rms = np.sqrt((y**2).sum(axis=1).mean())
    return y / rms if rms > 0 else y


def trustworthiness(x: np.ndarray, embedding: np.ndarray, k: int = 10) -> float:
    """scikit-learn's ``trustworthiness`` (same definition), blockwise in memory.

    T(k) = 1 - 2 / (n k (2n - 3k - 1)) * sum_i sum_{j in N_k(i) in the embedding}
    max(0, r(i, j) - k), with r(i, j) the rank of j among i's neighbours in ``x``.
    """
    n = len(x)
    if n < 2 * k + 1:
        return float("nan")
    emb_nb = knn_search(embedding, embedding, k, query_rows=np.arange(n)).indices
    x = np.asarray(x, np.float64)
    sq = np.einsum("ij,ij->i", x, x)
    penalty = 0.0
    block = max(1, (32 << 20) // (8 * n))
    for start in range(0, n, block):
        stop = min(n, start + block)
        d = sq[start:stop, None] + sq[None, :] - 2.0 * (x[start:stop] @ x.T)
        d[np.arange(stop - start), np.arange(start, stop)] = np.inf
        target = np.take_along_axis(d, emb_nb[start:stop], axis=1)
        # rank = 1 + number of points strictly closer in the input space
        ranks = 1 + (d[:, None, :] < target[:, :, None]).sum(axis=2)
        penalty += np.maximum(0, ranks - k).sum()
    return float(1.0 - penalty * (2.0 / (n * k * (2.0 * n - 3.0 * k - 1.0))))


def perplexity_for(n: int) -> float:
    """The perplexity used for ``n`` points: ``PERPLEXITY``, lowered for small sets so
    that the 3 x perplexity neighbours each point needs exist."""
    return min(PERPLEXITY, max(2.0, (n - 1) / 3.0))


def embed(
    x: np.ndarray,
    init: np.ndarray | None,
    schedule: TsneSchedule,
    *,
    seed: int,
    n_jobs: int | None = None,
) -> np.ndarray:
    """One t-SNE run (affinities + optimisation) from ``init`` or from the PCA."""
    from openTSNE import TSNEEmbedding
    from openTSNE.affinity import PrecomputedAffinities

    n = len(x)
    reduced = pca(x, PCA_DIMS)
    perplexity = perplexity_for(n)
    k = min(n - 1, int(3 * perplexity))
    nb = knn_search(reduced, reduced, k, query_rows=np.arange(n))
    P = gaussian_affinities(nb.distances, nb.indices, perplexity)
    if init is None:
        start = reduced[:, :2] if reduced.shape[1] >= 2 else np.column_stack([reduced[:, 0], np.zeros(n)])
        first = True
    else:
        start = init
        first = False
    start = start - start.mean(axis=0)
    std = start[:, 0].std()
    start = start / std * 1e-4 if std > 0 else np.random.default_rng(seed).normal(0, 1e-4, (n, 2))
    n_jobs = n_jobs or os.cpu_count() or 1
    # Barnes-Hut is faster for small sets, FFT interpolation from a few thousand points on
    # (measured on 2 cores: 4.7 vs 8.9 ms/iteration at 2,000 points, 37 vs 19 at 10,000).
    method = "fft" if n >= 4000 else "bh"
    emb = TSNEEmbedding(
        start,
        PrecomputedAffinities(P, normalize=False),
        negative_gradient_method=method,
        n_jobs=n_jobs,
        random_state=seed,
    )
    ee_iter = schedule.first_exaggeration if first else schedule.warm_exaggeration
    main_iter = schedule.first_main if first else schedule.warm_main
    emb = emb.optimize(n_iter=ee_iter, exaggeration=schedule.exaggeration, momentum=0.5)
    emb = emb.optimize(n_iter=main_iter, momentum=0.8)
    return np.asarray(emb, dtype=np.float64)


def tsne_layers(
    arrays: dict[str, np.ndarray],
    layers: list[str],
    labels: np.ndarray,
    *,
    seed: int = 0,
    max_points: int = 10000,
    schedule: TsneSchedule | None = None,
    trust_k: int = 10,
    on_layer: Callable[[], object] | None = None,
) -> TsneResult:
    """Aligned t-SNE embeddings of every layer (see the module docstring); ``on_layer``
    is called after each layer, for progress reporting."""
    schedule = schedule or TsneSchedule()
    n_total = len(labels)
    rows = stratified_sample(labels, max_points, seed)
    result = TsneResult(
        layers=list(layers), rows=rows, embeddings={}, trustworthiness={}, sampled=len(rows) < n_total, n_total=n_total
    )
    previous: np.ndarray | None = None
    for layer in layers:
        _embed_layer(arrays[layer][rows], layer, result, previous, schedule, seed, trust_k)
        previous = result.embeddings[layer] if result.embeddings[layer] is not None else previous
        if on_layer is not None:
            on_layer()
    return result


def _embed_layer(
    features: np.ndarray,
    layer: str,
    result: TsneResult,
    previous: np.ndarray | None,
    schedule: TsneSchedule,
    seed: int,
    trust_k: int,
) -> None:
    """One layer's embedding, aligned to ``previous``, or a note saying why there is none."""
    start = time.perf_counter()
    x = np.asarray(features, np.float64)
    y = None
    if len(x) < 5:
        result.notes[layer] = "too few images for t-SNE"
    elif is_degenerate(x):
        result.notes[layer] = "every image has the same features at this layer: nothing to embed"
    else:
        y = embed(x, previous, schedule, seed=seed)
        if not np.all(np.isfinite(y)):
            result.notes[layer] = "t-SNE diverged at this layer"
            y = None
    if y is None:
        result.embeddings[layer] = None
        result.trustworthiness[layer] = None
        return
    y = _unit_rms(y)
    if previous is not None:
        y = _unit_rms(procrustes(y, previous))
    result.embeddings[layer] = y
    result.seconds[layer] = time.perf_counter() - start
    result.trustworthiness[layer] = trustworthiness(x, y, trust_k) if len(x) > 2 * trust_k else None
