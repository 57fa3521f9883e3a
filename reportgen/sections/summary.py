"""Summary: what was audited (model, folder, preprocessing) and the headline numbers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from reportgen.analyses.metrics import ClassificationMetrics
from reportgen.analyses.multilabel import MultiLabelMetrics
from reportgen.report import Section
from reportgen.sections.base import Shared


@dataclass
class Summary:
    metrics: ClassificationMetrics | None  # None without labels that match the model's classes
    skipped: int  # inputs left out
    reference: tuple[str, int, list[str]] | None  # --reference: its folder, images and classes
    multilabel: MultiLabelMetrics | None = None  # a multi-label run with given labels


class SummarySection(Section):
    id = "summary"
    title = "Summary"

    def build(self, shared: Shared) -> Summary:
        reference = None
        if shared.reference is not None:
            ref_features, ref_classes = shared.reference
            reference = (str(shared.cfg.reference), ref_features.n, ref_classes)
        multi = shared.multilabel.metrics if shared.multilabel is not None else None
        return Summary(shared.metrics, len(shared.skipped), reference, multi)

    def json_items(self, content: Summary | None) -> dict[str, Any]:
        m = content.metrics if content is not None else None
        out: dict[str, Any] = {"accuracy": None, "top5_accuracy": None}
        if m is not None:
            out = {
                "accuracy": m.accuracy,
                "top5_accuracy": m.top5_accuracy,
                "balanced_accuracy": m.balanced_accuracy,
                "macro_f1": m.macro_f1,
                "n_evaluated": m.n,
            }
        if content is not None and content.multilabel is not None:
            # The headline of a multi-label run (the rest is under ``multilabel``).
            out["mean_average_precision"] = content.multilabel.mean_average_precision
            out["micro_f1"] = content.multilabel.micro_f1
        if content is not None and content.reference is not None:
            root, n, classes = content.reference
            out["reference"] = {"root": root, "n_images": n, "classes": classes}
        return out
