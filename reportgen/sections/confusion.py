"""Confusion matrix: which classes the model mixes up, as a picture, a table and a list."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from reportgen import figures
from reportgen.report import PictureRequest, Section
from reportgen.sections.base import Shared

# The report lists the most frequent off-diagonal pairs, and gives the whole matrix as a
# table of counts up to FULL_TABLE classes, beyond which the table is too wide to read
# (the picture and the JSON always hold it whole).
TOP_CONFUSIONS = 15
FULL_TABLE = 30


@dataclass
class Confusion:
    matrix: np.ndarray  # (K, K) counts, rows true, columns predicted
    classes: list[str]
    top: list[dict[str, Any]]  # the most frequent confusions: true, pred, count, share (of the true class)
    full_table: bool  # whether the page lists the matrix as a table


def top_confusions(matrix: np.ndarray, classes: list[str], limit: int = TOP_CONFUSIONS) -> list[dict[str, Any]]:
    """The largest off-diagonal cells, most images first (ties in row-major order)."""
    cm = matrix.copy()
    np.fill_diagonal(cm, 0)
    order = np.argsort(-cm, axis=None, kind="stable")[:limit]
    out = []
    for flat in order:
        i, j = divmod(int(flat), cm.shape[1])
        if cm[i, j] == 0:
            break
        support = int(matrix[i].sum())
        out.append(
            {
                "true": classes[i],
                "pred": classes[j],
                "count": int(cm[i, j]),
                "share": cm[i, j] / support if support else 0.0,
            }
        )
    return out


class ConfusionSection(Section):
    id = "confusion"
    title = "Confusion matrix"

    def build(self, shared: Shared) -> Confusion | None:
        m = shared.metrics
        if m is None:
            return None
        classes = shared.class_map.classes
        return Confusion(m.confusion, classes, top_confusions(m.confusion, classes), len(classes) <= FULL_TABLE)

    def json_items(self, content: Confusion | None) -> dict[str, Any]:
        return {"confusion_matrix": None if content is None else content.matrix.tolist()}

    def pictures(self, content: Confusion) -> PictureRequest:
        return PictureRequest(charts={"confusion": lambda: figures.confusion_figure(content.matrix, content.classes)})
