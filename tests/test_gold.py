"""Gold report: the sample's report, reduced to its outline, against a stored copy.

As coverage.py's ``tests/goldtest.py`` does, the output is scrubbed of what varies from
run to run and machine to machine before it is compared: here every digit (scores,
counts, timings, versions, dates), every path and every embedded picture.  What is left is the
report's shape: its sections and headings, its table columns, the JSON's keys and the
type of every value, the class and layer names.  Numbers are checked elsewhere against
independent computations; this test catches a section, column or key that appears,
disappears or moves without the gold copy being updated on purpose.

After a deliberate change, rewrite the gold copy and review its diff::

    REPORTGEN_UPDATE_GOLD=1 python -m pytest tests/test_gold.py
"""

from __future__ import annotations

import difflib
import json
import os
import re
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

GOLD = Path(__file__).resolve().parent / "gold" / "sample_onnx.txt"


def scrub(text: str) -> str:
    return re.sub(r"\d+", "#", " ".join(text.split()))


class Outline(HTMLParser):
    """Headings, element ids, table header cells and navigation links, in page order."""

    WATCHED = ("h1", "h2", "h3", "h4", "th", "a")

    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []
        self.open: list[tuple[str, str]] = []  # (tag, text so far) of watched elements
        self.nav = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        named = dict(attrs)
        if tag == "nav":
            self.nav += 1
        if named.get("id"):
            self.lines.append(f"{tag}#{named['id']}")
        if tag in self.WATCHED and (tag != "a" or self.nav):
            self.open.append((tag, ""))

    def handle_endtag(self, tag: str) -> None:
        if tag == "nav":
            self.nav -= 1
        if self.open and self.open[-1][0] == tag:
            _, text = self.open.pop()
            self.lines.append(f"  {tag}: {scrub(text)}")

    def handle_data(self, data: str) -> None:
        if self.open:
            tag, text = self.open[-1]
            self.open[-1] = (tag, text + data)


def json_schema(value: Any, path: str = "") -> set[str]:
    """Every key path with the type found there; list items share the path ``[]``."""
    if isinstance(value, dict):
        out = {f"{path or '.'} object"}
        for key, item in value.items():
            out |= json_schema(item, f"{path}.{scrub(key)}")
        return out
    if isinstance(value, list):
        out = {f"{path} list"}
        for item in value:
            out |= json_schema(item, f"{path}[]")
        return out
    kind = {bool: "bool", str: "string", type(None): "null"}.get(type(value), "number")
    return {f"{path} {kind}"}


def option(value: Any) -> str:
    """An option's value; paths depend on where the checkout and the temporary folder are."""
    return "<path>" if isinstance(value, str) and "/" in value else scrub(json.dumps(value))


def outline(html: Path) -> str:
    page = Outline()
    page.feed(html.read_text())
    doc = json.loads(html.with_suffix(".json").read_text())
    names = [
        "classes: " + ", ".join(doc["classes"]),
        "layers: " + ", ".join(f"{layer['name']} ({layer['op']}, {layer['pooling']})" for layer in doc["layers"]),
        "options: " + ", ".join(f"{k}={option(v)}" for k, v in sorted(doc["options"].items())),
    ]
    return "\n".join(["# HTML", *page.lines, "# JSON", *names, *sorted(json_schema(doc))]) + "\n"


def test_sample_report_matches_the_gold_outline(sample_audits: dict[str, Path]) -> None:
    actual = outline(sample_audits["onnx"])
    if os.environ.get("REPORTGEN_UPDATE_GOLD"):
        GOLD.parent.mkdir(exist_ok=True)
        GOLD.write_text(actual)
    expected = GOLD.read_text()
    diff = "".join(difflib.unified_diff(expected.splitlines(True), actual.splitlines(True), str(GOLD), "this run", n=2))
    assert actual == expected, (
        "the report's outline changed; if on purpose, rerun with REPORTGEN_UPDATE_GOLD=1 and review the diff:\n" + diff
    )


def test_outline_sees_a_changed_report(sample_audits: dict[str, Path], tmp_path: Path) -> None:
    """The scrubbing keeps what the gold copy guards: a renamed column or a lost key shows."""
    html = sample_audits["onnx"]
    base = outline(html)
    changed = tmp_path / "report.html"
    changed.write_text(html.read_text().replace(">precision</th>", ">precision (macro)</th>", 1))
    doc = json.loads(html.with_suffix(".json").read_text())
    del doc["class_balance"]
    changed.with_suffix(".json").write_text(json.dumps(doc))
    lines = set(outline(changed).splitlines())
    assert "  th: precision (macro)" in lines and "  th: precision" not in lines
    assert ".class_balance object" in base.splitlines() and ".class_balance object" not in lines
