"""Class balance: images per class in the folder beside how often each is predicted."""

from __future__ import annotations

from typing import Any

from reportgen import figures
from reportgen.analyses.metrics import ClassBalance
from reportgen.report import PictureRequest, Section
from reportgen.sections.base import Shared


class BalanceSection(Section):
    id = "balance"
    title = "Class balance"

    def build(self, shared: Shared) -> ClassBalance | None:
        # Several labels per image: the label table counts each label (see ``multilabel``).
        return None if shared.multilabel is not None else shared.balance

    def json_items(self, content: ClassBalance | None) -> dict[str, Any]:
        if content is None:
            return {}
        return {
            "class_balance": {
                "true_counts": content.true_counts,
                "predicted_counts": content.predicted_counts,
                "imbalance_ratio": content.imbalance_ratio,
            }
        }

    def pictures(self, content: ClassBalance) -> PictureRequest:
        return PictureRequest(
            charts={
                "balance": lambda: figures.balance_figure(
                    content.classes, content.true_counts, content.predicted_counts
                )
            }
        )
