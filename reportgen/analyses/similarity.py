"""Comparing two models on the same images: bootstrap intervals, CKA, kNN overlap."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from reportgen.analyses.knn import knn_search


@dataclass
class Interval:
    """A statistic and its bootstrap percentile interval."""

    value: float
    low: float
    high: float


@dataclass
class PairedAccuracy:
    """Accuracy of two models on the same images, and of their difference."""

    n: int
    old: Interval
    new: Interval
    delta: Interval  # new - old


def paired_bootstrap(
    old_correct: np.ndarray, new_correct: np.ndarray, *, resamples: int = 2000, seed: int = 0, level: float = 0.95
) -> PairedAccuracy:
    """Percentile bootstrap over images (resampled jointly for both models, so the
    interval of the difference accounts for their correlation)."""
    old_correct = np.asarray(old_correct, np.float64)
    new_correct = np.asarray(new_correct, np.float64)
    n = len(old_correct)
    rng = np.random.default_rng(seed)
    stats = np.empty((resamples, 2))
    chunk = max(1, (32 << 20) // (8 * max(n, 1)))
    for start in range(0, resamples, chunk):
        b = min(chunk, resamples - start)
        # Multinomial counts are a resample with replacement, without an index matrix.
        counts = rng.multinomial(n, np.full(n, 1.0 / n), size=b) if n else np.zeros((b, 0))
        stats[start : start + b, 0] = counts @ old_correct / max(n, 1)
        stats[start : start + b, 1] = counts @ new_correct / max(n, 1)
    lo, hi = 100 * (1 - level) / 2, 100 * (1 + level) / 2

    def interval(values: np.ndarray, point: float) -> Interval:
        return Interval(point, float(np.percentile(values, lo)), float(np.percentile(values, hi)))

    a_old = float(old_correct.mean()) if n else float("nan")
    a_new = float(new_correct.mean()) if n else float("nan")
    return PairedAccuracy(
        n,
        interval(stats[:, 0], a_old),
        interval(stats[:, 1], a_new),
        interval(stats[:, 1] - stats[:, 0], a_new - a_old),
    )


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear centred kernel alignment (Kornblith et al., 2019) of two representations of
    the same rows: ||Y'X||_F^2 / (||X'X||_F ||Y'Y||_F) after centring; 1 for representations
    equal up to rotation and scale, 0 for unrelated ones.  NaN when either is constant."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    cross = np.linalg.norm(y.T @ x) ** 2
    norm = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)
    return float(cross / norm) if norm > 0 else float("nan")


def knn_overlap(x: np.ndarray, y: np.ndarray, k: int = 10) -> float:
    """Mean share of each row's k nearest neighbours (leave-one-out) that the two
    representations have in common."""
    n = len(x)
    if n < 2:
        return float("nan")
    a = knn_search(x, x, k, query_rows=np.arange(n)).indices
    b = knn_search(y, y, k, query_rows=np.arange(n)).indices
    kk = a.shape[1]
    if kk == 0:
        return float("nan")
    shared = (a[:, :, None] == b[:, None, :]).any(axis=2).sum(axis=1)
    return float(shared.mean() / kk)
