"""Multi-label metrics against scikit-learn, part of ``python -m benchmarks --suite
diagnostics``: the same figures on the same arrays (they must agree), and the time each
takes.

Workload: seeded label matrices (5% of the labels on, probabilities that lean towards the
truth and are rounded to 3 decimals, so that many tie) at 100,000 images x 80 labels
(10,000 x 20 in quick mode).  reportgen computes, in one call, per-label precision /
recall / F1 at the thresholds, per-label AP, mAP, micro AP, micro / macro / samples F1,
exact-set accuracy, Hamming loss, the best F1 per label, label counts and both
co-occurrence matrices; scikit-learn is timed on the subset it offers (per-label and
micro AP, ``precision_recall_fscore_support``, samples and micro F1, ``accuracy_score``,
``hamming_loss``).  Missing / extra label suspects from 10 random neighbours per image
are timed beside.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np


@dataclass
class MultiLabelRun:
    n: int
    k: int
    reportgen_s: float
    sklearn_s: float
    suspects_s: float
    max_difference: float  # largest absolute difference over every figure both compute


def run(quick: bool) -> MultiLabelRun:
    from sklearn.metrics import (
        accuracy_score,
        average_precision_score,
        f1_score,
        hamming_loss,
        precision_recall_fscore_support,
    )

    from reportgen.analyses.multilabel import label_suspects, multilabel_metrics

    n, k = (10_000, 20) if quick else (100_000, 80)
    rng = np.random.default_rng(0)
    truth = (rng.random((n, k)) < 0.05).astype(np.int8)
    probs = np.round(np.clip(truth * 0.4 + rng.random((n, k)) * 0.6, 0, 1), 3).astype(np.float32)
    thresholds = np.full(k, 0.5)
    known = np.ones(n, bool)
    started = time.perf_counter()
    ours = multilabel_metrics(truth, known, probs, thresholds, [str(j) for j in range(k)])
    reportgen_s = time.perf_counter() - started
    assert ours is not None
    started = time.perf_counter()
    pred = probs >= 0.5
    ap = average_precision_score(truth, probs, average=None)
    micro_ap = average_precision_score(truth, probs, average="micro")
    precision, recall, f1, _ = precision_recall_fscore_support(truth, pred, average=None, zero_division=0)
    samples = f1_score(truth, pred, average="samples", zero_division=1.0)
    micro_f1 = f1_score(truth, pred, average="micro", zero_division=0)
    exact = accuracy_score(truth, pred)
    hamming = hamming_loss(truth, pred)
    sklearn_s = time.perf_counter() - started
    pairs = [
        *zip([s.average_precision for s in ours.per_label], ap, strict=True),
        *zip([s.precision for s in ours.per_label], precision, strict=True),
        *zip([s.recall for s in ours.per_label], recall, strict=True),
        *zip([s.f1 for s in ours.per_label], f1, strict=True),
        (ours.mean_average_precision, float(np.mean(ap))),
        (ours.micro_average_precision, micro_ap),
        (ours.samples_f1, samples),
        (ours.micro_f1, micro_f1),
        (ours.subset_accuracy, exact),
        (ours.hamming_loss, hamming),
    ]
    difference = max(abs(float(a) - float(b)) for a, b in pairs)  # type: ignore[arg-type]
    neighbours = rng.integers(0, n, (n, 10))
    started = time.perf_counter()
    label_suspects(truth, known, probs, thresholds, neighbours)
    suspects_s = time.perf_counter() - started
    return MultiLabelRun(n, k, reportgen_s, sklearn_s, suspects_s, difference)


def markdown(r: MultiLabelRun) -> list[str]:
    return [
        "",
        "## Multi-label metrics against scikit-learn",
        "",
        "| images | labels | reportgen s (every figure) | scikit-learn s (its subset) | ratio | suspects s "
        "| largest difference |",
        "|---|---|---|---|---|---|---|",
        f"| {r.n:,} | {r.k} | {r.reportgen_s:.2f} | {r.sklearn_s:.2f} | {r.reportgen_s / r.sklearn_s:.2f}x "
        f"| {r.suspects_s:.2f} | {r.max_difference:.1e} |",
        "",
        "Workload: a seeded 0/1 label matrix (5% of labels on) and probabilities leaning towards it, rounded to "
        "3 decimals so that many tie; reportgen computes every figure of its per-label section in one call "
        "(P/R/F1, AP, mAP, micro AP, micro/macro/samples F1, exact sets, Hamming loss, best F1 per label, "
        "co-occurrence); scikit-learn is timed on the subset it offers (per-label and micro AP, "
        "precision_recall_fscore_support, samples and micro F1, accuracy_score, hamming_loss); the largest "
        "difference is over every figure both compute; suspects from 10 random neighbours per image.",
    ]
