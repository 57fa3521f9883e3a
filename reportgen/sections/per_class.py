"""Per-class metrics: precision, recall, F1, support and predictions of every class."""

from __future__ import annotations

from typing import Any

from reportgen.analyses.metrics import ClassScores
from reportgen.report import Section
from reportgen.sections.base import Shared


class PerClassSection(Section):
    id = "per-class"
    title = "Per-class metrics"

    def build(self, shared: Shared) -> list[ClassScores] | None:
        return None if shared.metrics is None else shared.metrics.per_class

    def json_items(self, content: list[ClassScores] | None) -> dict[str, Any]:
        if content is None:
            return {"per_class": None}
        return {
            "per_class": [
                {
                    "class": c.name,
                    "precision": c.precision,
                    "recall": c.recall,
                    "f1": c.f1,
                    "support": c.support,
                    "predicted": c.predicted,
                }
                for c in content
            ]
        }
