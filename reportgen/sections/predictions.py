"""Predictions: every audited image with its label, prediction and probability."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from reportgen.report import Section
from reportgen.sections.base import Shared

PREDICTIONS_INLINE = 200_000  # per-image predictions beyond this go to a gzipped CSV beside the JSON
HTML_ROWS = 2_000  # rows the page's table holds; every row is in the JSON or the CSV


@dataclass
class Prediction:
    file: str
    label: str | None  # folder class name
    truth: int  # output index of the true class, -1 unknown
    pred: int
    score: float  # probability of the predicted class
    sha256: str = ""  # of the file's bytes
    metadata: dict[str, object] | None = None  # a manifest's other columns for this image
    # Multi-label: the given labels (None: not known) and the labels at the thresholds.
    labels: list[str] | None = None
    predicted: list[str] | None = None

    @property
    def correct(self) -> bool | None:
        if self.predicted is not None:  # multi-label: the predicted set is the given one
            return None if self.labels is None else set(self.labels) == set(self.predicted)
        return None if self.truth < 0 else self.truth == self.pred


@dataclass
class Predictions:
    rows: list[Prediction]  # every audited image, in the features' order
    classes: list[str]  # the model's class names, which ``pred`` indexes
    shown: list[Prediction] = field(default_factory=list)  # what the page lists (see :func:`shown_rows`)

    @property
    def inline(self) -> bool:
        """Whether the JSON holds the rows (else the CSV beside it does)."""
        return len(self.rows) <= PREDICTIONS_INLINE

    def json_rows(self) -> list[dict[str, Any]]:
        """One entry per audited image, the keys of ``outputs.PREDICTION_COLUMNS``."""
        return [
            {
                "file": p.file,
                "label": p.label,
                "pred": self.classes[p.pred],
                "score": p.score,
                "sha256": p.sha256,
                **({"metadata": p.metadata} if p.metadata is not None else {}),
                **({"labels": p.labels, "predicted": p.predicted} if p.predicted is not None else {}),
            }
            for p in self.rows
        ]


def shown_rows(rows: list[Prediction], limit: int | None = None) -> list[Prediction]:
    """The predictions the page lists: all of them up to ``limit`` (:data:`HTML_ROWS`);
    beyond it, the misclassified images, most confident first, then the least confident
    of the rest."""
    limit = HTML_ROWS if limit is None else limit
    if len(rows) <= limit:
        return rows
    wrong = sorted((p for p in rows if p.correct is False), key=lambda p: (-p.score, p.file))
    rest = sorted((p for p in rows if p.correct is not False), key=lambda p: (p.score, p.file))
    return (wrong + rest)[:limit]


class PredictionsSection(Section):
    id = "predictions"
    title = "Predictions"

    def build(self, shared: Shared) -> Predictions:
        features, probs, folder = shared.features, shared.probs, shared.result.dataset.folder_classes
        columns, metadata = shared.dataset.metadata_columns, shared.dataset.metadata
        rows = [
            Prediction(
                file=f,
                label=folder[lab] if lab >= 0 else None,
                truth=int(t),
                pred=int(p),
                score=float(probs[i, p]),
                sha256=features.sha256[i],
                metadata=dict(zip(columns, metadata[f], strict=True)) if columns and f in metadata else None,
            )
            for i, (f, lab, t, p) in enumerate(
                zip(features.files, features.labels, shared.truth, shared.pred, strict=True)
            )
        ]
        multi = shared.multilabel
        if multi is not None:
            classes = shared.class_map.classes
            for i, p in enumerate(rows):
                p.predicted = [classes[j] for j in np.flatnonzero(multi.predicted[i])]
                p.labels = [classes[j] for j in np.flatnonzero(multi.truth[i])] if multi.known[i] else None
        return Predictions(rows, shared.class_map.classes, shown_rows(rows))

    def json_items(self, content: Predictions | None) -> dict[str, Any]:
        if content is None:
            return {}
        return {"predictions": content.json_rows() if content.inline else None}
