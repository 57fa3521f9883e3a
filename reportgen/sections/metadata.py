"""Metadata: accuracy by each column a manifest gives beside the path and the label
(the breakdown is ``analyses/metadata.py``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from reportgen.analyses.metadata import ColumnBreakdown, metadata_breakdown
from reportgen.report import Section
from reportgen.sections.base import Shared


@dataclass
class MetadataView:
    columns: list[ColumnBreakdown]  # widest accuracy spread first
    images: int  # labelled images broken down
    accuracy: float

    @property
    def worse(self) -> int:
        return sum(g.worse for c in self.columns for g in c.groups)


def metadata_values(shared: Shared, rows: np.ndarray) -> dict[str, list[object]]:
    """Each metadata column's value for ``rows`` of the audited images."""
    dataset, files = shared.dataset, shared.features.files
    out: dict[str, list[object]] = {}
    for j, name in enumerate(dataset.metadata_columns):
        out[name] = [dataset.metadata[files[r]][j] if files[r] in dataset.metadata else None for r in rows]
    return out


class MetadataSection(Section):
    id = "metadata"
    title = "Metadata"

    def build(self, shared: Shared) -> MetadataView | None:
        if not shared.dataset.metadata_columns:
            return None
        multi = shared.multilabel
        if multi is not None and multi.metrics is not None:
            # Several labels per image: right means the predicted set is the given set.
            rows = np.flatnonzero(multi.known)
            correct = np.all(multi.predicted[rows] == multi.truth[rows].astype(bool), axis=1)
        elif shared.metrics is not None:
            rows = np.flatnonzero(shared.truth >= 0)
            correct = shared.pred[rows] == shared.truth[rows]
        else:
            return None
        with shared.clock("metadata"):
            columns = metadata_breakdown(metadata_values(shared, rows), correct)
        columns.sort(key=lambda c: (-c.spread, c.column))
        return MetadataView(columns, len(rows), float(correct.mean()))

    def count(self, content: MetadataView) -> int | None:
        return content.worse or None

    def json_items(self, content: MetadataView | None) -> dict[str, Any]:
        if content is None:
            return {"metadata_breakdown": None}
        return {
            "metadata_breakdown": [
                {
                    "column": c.column,
                    "kind": c.kind,
                    "distinct": c.distinct,
                    "missing": c.missing,
                    "spread": c.spread,
                    "groups": [
                        {
                            "value": g.value,
                            "n": g.n,
                            "accuracy": g.accuracy,
                            "ci": list(g.ci),
                            "rest_accuracy": g.rest_accuracy,
                            "p_value": g.p_value,
                            "worse": g.worse,
                        }
                        for g in c.groups
                    ],
                }
                for c in content.columns
            ]
        }
