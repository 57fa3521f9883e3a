"""Which images each class gallery shows (the MATLAB examples' max/min-activating images).

For class c, ranked by ``log_odds[:, c]``, the log-odds log(p_c / (1 - p_c)) computed
from the model's logits (see :func:`~reportgen.analyses.metrics.log_odds`): the same order
as the probability, but images the model is "certain" of (p = 1.0 in float32) are still
ordered by how far ahead the class is, instead of tying:

* **max** -- images of class c with the highest probability of c (what the model is
  surest of);
* **min** -- images of class c with the lowest probability of c (what it finds least
  like its own class: unusual views, under-represented cases, mislabels);
* **wrong** -- images of *other* classes with the highest probability of c (the
  confidently wrong: shortcuts and look-alikes).

For an unlabeled folder, max and min are taken among the images predicted as c, and
there is no wrong gallery.  Ties are broken by row, so the choice is deterministic.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class Gallery:
    """Row numbers of one class's three galleries, best first."""

    cls: int
    max: list[int]
    min: list[int]
    wrong: list[int]


def _top(rows: np.ndarray, scores: np.ndarray, n: int, highest: bool) -> list[int]:
    if len(rows) == 0 or n <= 0:
        return []
    key = -scores[rows] if highest else scores[rows]
    order = np.lexsort((rows, key))
    return [int(r) for r in rows[order[:n]]]


def class_galleries(log_odds: np.ndarray, truth: np.ndarray, n: int, labeled: bool) -> list[Gallery]:
    """The three galleries of every class (every model output), from (N, K) log-odds."""
    pred = log_odds.argmax(axis=1)
    out = []
    for c in range(log_odds.shape[1]):
        score = log_odds[:, c]
        if labeled:
            own = np.flatnonzero(truth == c)
            others = np.flatnonzero((truth >= 0) & (truth != c))
        else:
            own = np.flatnonzero(pred == c)
            others = np.zeros(0, np.int64)
        highest = _top(own, score, n, highest=True)
        lowest = _top(own, score, n, highest=False)
        out.append(Gallery(c, highest, lowest, _top(others, score, n, highest=True)))
    return out


def label_galleries(
    log_odds: np.ndarray, truth: np.ndarray, known: np.ndarray, predicted: np.ndarray, n: int
) -> list[Gallery]:
    """The galleries of a multi-label model, per label c: **max** and **min** among the
    images that carry c, **wrong** among the labelled images that do not (the model's
    surest extra labels).  Without known labels, max and min are taken among the images
    the model gives c, and there is no wrong gallery."""
    labeled = bool(known.any())
    out = []
    for c in range(log_odds.shape[1]):
        score = log_odds[:, c]
        if labeled:
            own = np.flatnonzero(known & (truth[:, c] == 1))
            others = np.flatnonzero(known & (truth[:, c] == 0))
        else:
            own = np.flatnonzero(predicted[:, c])
            others = np.zeros(0, np.int64)
        out.append(
            Gallery(
                c, _top(own, score, n, highest=True), _top(own, score, n, highest=False), _top(others, score, n, True)
            )
        )
    return out
