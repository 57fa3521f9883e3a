"""Suspected mislabels and near-duplicates, from the kNN of the deep layers.

**Mislabel score** of a labeled image (``mislabel_scores``)::

    disagreement = mean over the deep layers of the share of its k neighbours whose
                   label differs from its own
    score        = (disagreement + (1 - p_label)) / 2

where ``p_label`` is the model's probability of the image's own label.  An image is a
suspect when most of its deep neighbours carry another label (disagreement > 0.5), the
model gives its label less than even odds (p_label < 0.5), *and* the two together
weigh at least 3:1 against the label (score >= :data:`MIN_SCORE`).  The suggested label
is the majority label of its neighbours at the deepest layer.

The ranking is what matters most, and it beats cleanlab's on planted errors
(``benchmarks/RESULTS-diagnostics.md``); the score floor was set from the same
measurement: with even odds alone, most flags on the sample were hard-but-right images
(29% of the flags planted errors); with the floor 45%, and on digits whose labels were
flipped before training 80% instead of 65%, for one flip of 180 missed.

**Near-duplicates** (``near_duplicates``): pairs whose distance at a layer is below
``ratio`` times the median nearest-neighbour distance of the set at that layer -- far
closer than two different images usually are.  Identical feature vectors always
qualify.  The pipeline looks at two layers: the pixels (the same picture re-encoded,
resized or brightened; measured on the sample, such twins sit at 0.15 x the median
while the closest distinct images sit above 0.6 x) and the penultimate layer (the same
content framed differently), and merges the pairs.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from reportgen.analyses.knn import Neighbours, majority_vote

MIN_SCORE = 0.75  # a flag needs the evidence, averaged, at 3:1 against the label (see above)

# Two images closer than this share of the median nearest-neighbour distance count as
# near-duplicates: far closer than two different images usually are, close enough for
# re-encoded, resized or brightened copies (the sample's planted ones, which the tests
# check the audit recovers).
DUPLICATE_RATIO = 0.25


@dataclass
class Mislabel:
    row: int  # row in the features
    label: int  # the image's own label
    suggested: int  # majority label of its deep neighbours
    score: float
    disagreement: float
    p_label: float


@dataclass
class LabelScores:
    """The mislabel evidence of every row (NaN or -1 where a row has none)."""

    score: np.ndarray  # (N,) (disagreement + 1 - p_label) / 2; NaN for unlabeled rows
    disagreement: np.ndarray  # (N,) share of deep neighbours with another label, averaged over layers
    suggested: np.ndarray  # (N,) majority label of the deepest layer's neighbours, -1 none
    p_label: np.ndarray  # (N,) the model's probability of the row's own label (0 when not a model class)


def label_scores(
    labels: np.ndarray,
    probs_of_label: np.ndarray,
    deep_neighbours: list[Neighbours],
    reference_labels: np.ndarray,
) -> LabelScores | None:
    """Per-row mislabel evidence (see :func:`mislabel_scores` for the arguments); None
    when there are no neighbours to read."""
    if not deep_neighbours or deep_neighbours[0].indices.shape[1] == 0:
        return None
    shares = []
    for nb in deep_neighbours:
        neighbour_labels = reference_labels[nb.indices]
        valid = neighbour_labels >= 0
        differs = (neighbour_labels != labels[:, None]) & valid
        shares.append(differs.sum(axis=1) / np.maximum(valid.sum(axis=1), 1))
    disagreement = np.mean(shares, axis=0)
    suggested = majority_vote(reference_labels[deep_neighbours[-1].indices])
    p = np.where(np.isfinite(probs_of_label), probs_of_label, 0.0)
    score = np.where(labels >= 0, (disagreement + (1.0 - p)) / 2.0, np.nan)
    return LabelScores(score, disagreement, suggested, p)


def mislabel_scores(
    labels: np.ndarray,
    probs_of_label: np.ndarray,
    deep_neighbours: list[Neighbours],
    reference_labels: np.ndarray,
) -> list[Mislabel]:
    """Suspects ranked by score, highest first (ties by row).

    ``labels``: own label per row (-1 unlabeled, never a suspect); ``probs_of_label``:
    the model's probability of that label (NaN when the label is not a model class);
    ``deep_neighbours``: neighbour lists at the deep layers, deepest last, indexing
    ``reference_labels``.
    """
    return flagged_mislabels(labels, label_scores(labels, probs_of_label, deep_neighbours, reference_labels))


def flagged_mislabels(labels: np.ndarray, scores: LabelScores | None) -> list[Mislabel]:
    """The suspects among rows whose evidence is ``scores`` (see :func:`mislabel_scores`)."""
    if scores is None:
        return []
    score, disagreement, suggested, p = scores.score, scores.disagreement, scores.suggested, scores.p_label
    candidates = np.flatnonzero(
        (labels >= 0)
        & (disagreement > 0.5)
        & (p < 0.5)
        & (np.nan_to_num(score, nan=0.0) >= MIN_SCORE)
        & (suggested >= 0)
        & (suggested != labels)
    )
    order = candidates[np.lexsort((candidates, -score[candidates]))]
    return [
        Mislabel(int(i), int(labels[i]), int(suggested[i]), float(score[i]), float(disagreement[i]), float(p[i]))
        for i in order
    ]


@dataclass
class DuplicatePair:
    a: int  # row in the audited set
    b: int  # row in the audited set, or in the reference set when ``cross``
    distance: float
    cross: bool = False
    layer: str = ""
    ratio: float = 0.0  # distance / median nearest-neighbour distance


def near_duplicates(
    nb: Neighbours, ratio: float = DUPLICATE_RATIO, *, cross: bool = False, scale: float | None = None, layer: str = ""
) -> tuple[list[DuplicatePair], float]:
    """Pairs closer than ``ratio`` x the median nearest-neighbour distance.

    ``nb`` holds each row's neighbours (leave-one-out within one set, or into a
    reference set when ``cross``).  Returns the pairs, closest first, and the threshold.
    Within one set each pair is reported once (a < b).
    """
    if nb.indices.shape[1] == 0:
        return [], 0.0
    nearest = nb.distances[:, 0]
    scale = float(np.median(nearest)) if scale is None else scale
    threshold = ratio * scale
    pairs: dict[tuple[int, int], float] = {}
    rows, cols = np.nonzero((nb.distances <= threshold) | (nb.distances == 0.0))
    for r, c in zip(rows, cols, strict=True):
        a, b = int(r), int(nb.indices[r, c])
        key = (a, b) if cross else (min(a, b), max(a, b))
        pairs[key] = float(nb.distances[r, c])
    ordered = sorted(pairs.items(), key=lambda item: (item[1], item[0]))
    return [DuplicatePair(a, b, d, cross, layer, d / scale if scale > 0 else 0.0) for (a, b), d in ordered], threshold


def merge_pairs(*groups: list[DuplicatePair]) -> list[DuplicatePair]:
    """Union of pair lists found at several layers; a pair found twice keeps its
    smallest ratio.  Ordered by ratio, then names."""
    best: dict[tuple[int, int, bool], DuplicatePair] = {}
    for group in groups:
        for pair in group:
            key = (pair.a, pair.b, pair.cross)
            if key not in best or pair.ratio < best[key].ratio:
                best[key] = pair
    return sorted(best.values(), key=lambda p: (p.ratio, p.a, p.b))
