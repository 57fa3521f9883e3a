"""Skipped inputs: every file that looked like an image and was left out, with the reason."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from reportgen.data import Skipped
from reportgen.report import Section
from reportgen.sections.base import Shared

HTML_ROWS = 2_000  # rows the page lists; the JSON holds every one


@dataclass
class SkippedInputs:
    rows: list[Skipped]
    html_rows: int = HTML_ROWS


class SkippedSection(Section):
    id = "skipped"
    title = "Skipped inputs"

    def build(self, shared: Shared) -> SkippedInputs:
        return SkippedInputs(shared.skipped)

    def count(self, content: SkippedInputs) -> int:
        return len(content.rows)

    def json_items(self, content: SkippedInputs | None) -> dict[str, Any]:
        return {} if content is None else {"skipped": [{"file": s.file, "reason": s.reason} for s in content.rows]}
