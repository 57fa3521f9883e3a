"""A report section is one unit: listed once (``sections/order.py``), drawn by its own
partial, and the side bar, the body and the JSON follow the list.  Adding one is a class,
a partial and a line: shown here with a section the test defines."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jinja2
import pytest
from conftest import NO_RERUNS, SAMPLE, load_json

from reportgen import cli, render
from reportgen.report import PictureRequest, Section
from reportgen.resources import templates_dir
from reportgen.sections import order

FAST = ["-q", "--no-tsne", *NO_RERUNS]


def test_every_section_has_its_partial_and_every_partial_its_section() -> None:
    ids = [s.id for s in order.REPORT]
    assert len(ids) == len(set(ids)), ids
    partials = {p.name.removesuffix(".html.j2") for p in (templates_dir() / "sections").glob("*.html.j2")}
    assert partials == set(ids)
    assert all(s.title for s in order.REPORT)


def test_the_side_bar_and_the_body_follow_the_list(sample_audits: dict[str, Path]) -> None:
    html = sample_audits["onnx"].read_text()
    nav = html[html.index('<nav class="toc"') : html.index("</nav>")]
    links = re.findall(r'<a href="#([^"]+)">', nav)
    bodies = re.findall(r'<section id="([^"]+)">', html)
    assert links == bodies
    listed = [s.id for s in order.REPORT]
    assert links == [i for i in listed if i in links]  # report order, absent sections skipped
    assert {"summary", "predictions", "skipped", "configuration", "knn", "layers"} <= set(links)


@dataclass
class Mood:
    images: int
    phrase: str


class MoodSection(Section):
    """A section a test adds: its content, side-bar count, JSON and a picture request."""

    id = "mood"
    title = "Mood of the folder"

    def build(self, shared: Any) -> Mood:
        return Mood(shared.features.n, "<b>calm</b>")

    def count(self, content: Mood) -> int:
        return content.images

    def json_items(self, content: Mood | None) -> dict[str, Any]:
        return {"mood": None if content is None else {"images": content.images}}

    def pictures(self, content: Mood) -> PictureRequest:
        return PictureRequest(charts={"mood": lambda: render.plots.balance_figure(["a"], None, [content.images])})


def test_adding_a_section_is_one_class_one_partial_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sample_audits: dict[str, Path]
) -> None:
    partials = tmp_path / "templates"
    (partials / "sections").mkdir(parents=True)
    (partials / "sections" / "mood.html.j2").write_text(
        '<h2>Mood</h2><p id="mood-text">{{ c.images }} images, {{ c.phrase }}</p>'
        '<img class="plot" alt="mood" src="{{ fig.mood }}">\n'
    )
    real = render.environment

    def environment() -> jinja2.Environment:
        env = real()
        env.loader = jinja2.ChoiceLoader([env.loader, jinja2.FileSystemLoader(str(partials))])
        return env

    # The pipeline is imported before the list is patched: imported after, it would take
    # the patched list as its own, and keep it once the test is over.
    from reportgen import pipeline

    monkeypatch.setattr(render, "environment", environment)
    monkeypatch.setattr(order, "REPORT", [*order.REPORT[:2], MoodSection(), *order.REPORT[2:]])
    monkeypatch.setattr(pipeline, "REPORT", order.REPORT)
    cache = tmp_path / "r.features"
    out = tmp_path / "r.html"
    args = [
        "audit",
        str(SAMPLE / "model.onnx"),
        str(SAMPLE / "images"),
        "-o",
        str(out),
        *FAST,
        "--features",
        str(cache),
    ]
    assert cli.main(args) == 0
    html = out.read_text()
    nav = html[html.index('<nav class="toc"') : html.index("</nav>")]
    assert '<a href="#mood">Mood of the folder <span class="count">274</span></a>' in nav
    assert re.findall(r'<section id="([^"]+)">', html)[:3] == ["summary", "mood", "confusion"]
    assert "274 images, &lt;b&gt;calm&lt;/b&gt;" in html  # escaped like every other partial
    assert re.search(r'alt="mood" src="data:image/png;base64,', html)
    assert load_json(out)["mood"] == {"images": 274}
    assert json.loads(out.with_suffix(".json").read_text())["schema_version"] == 2
