"""The report in a real browser: headless Chromium (Debian's package), driven by Playwright.

Checks that every section renders, every image (the GIF included) loads, thumbnails
are filled in, the class selector works, the page makes no network request and logs no
console error, and that hostile names trigger nothing.  Saves screenshots as artifacts.
``.ci/run`` installs Chromium and sets REPORTGEN_REQUIRE_BROWSER=1, so there a missing
browser fails the test instead of skipping it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from conftest import SAMPLE, run_cli
from corpus import build_corpus

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:
        if os.environ.get("REPORTGEN_REQUIRE_BROWSER"):
            pytest.fail("Chromium is required (REPORTGEN_REQUIRE_BROWSER is set) but not installed")
        pytest.skip("Chromium is not installed")
    playwright = pytest.importorskip("playwright.sync_api")
    with playwright.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


def _open(browser, html: Path):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    events: dict[str, list[str]] = {"requests": [], "errors": [], "dialogs": []}
    page.on("request", lambda r: events["requests"].append(r.url))
    page.on("console", lambda m: events["errors"].append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: events["errors"].append(str(e)))
    page.on("dialog", lambda d: (events["dialogs"].append(d.message), d.dismiss()))
    page.goto(html.resolve().as_uri())
    page.wait_for_load_state("load")
    return page, events


def test_sample_report_renders_offline(browser, sample_audits, artifacts: Path) -> None:
    page, events = _open(browser, sample_audits["onnx"])
    targets = page.eval_on_selector_all("nav.toc a", "links => links.map(a => a.getAttribute('href'))")
    assert len(targets) >= 12
    for href in targets:
        box = page.locator(href).bounding_box()
        assert box is not None and box["height"] > 20, href
    broken = page.evaluate(
        "Array.from(document.images).filter(i => !(i.complete && i.naturalWidth > 0)).map(i => i.alt || i.src.slice(0, 40))"
    )
    assert broken == []
    assert page.evaluate("document.querySelectorAll('img[data-thumb]:not([src])').length") == 0
    assert page.evaluate("document.querySelectorAll('img[data-thumb]').length") > 500
    assert page.evaluate("document.getElementById('tsne-gif').naturalWidth") > 300
    # The class selector shows one class's galleries at a time.
    page.select_option('select[data-controls="gal"]', "c5")
    visible = page.eval_on_selector_all('[data-group="gal"]', "els => els.filter(e => e.offsetParent !== null).length")
    assert visible == 1
    page.select_option('select[data-controls="knn-l"]', "all")
    strips = page.eval_on_selector_all('[data-group="knn-l"]', "els => els.filter(e => e.offsetParent !== null).length")
    assert strips == page.evaluate("document.querySelectorAll('[data-group=\"knn-l\"]').length")
    page.screenshot(path=str(artifacts / "report-full.png"), full_page=True)
    page.locator("#galleries").screenshot(path=str(artifacts / "report-galleries.png"))
    page.locator("#tsne").screenshot(path=str(artifacts / "report-tsne.png"))
    network = [u for u in events["requests"] if not u.startswith(("file:", "data:"))]
    assert network == []
    assert events["errors"] == [] and events["dialogs"] == []
    page.close()


def test_hostile_corpus_report_triggers_nothing(browser, tmp_path: Path, artifacts: Path) -> None:
    corpus = build_corpus(tmp_path / "images")
    out = tmp_path / "out" / "r.html"
    result = run_cli("audit", SAMPLE / "model.onnx", corpus.root, "-o", out, "-q", "--no-tsne")
    assert result.code == 0, result.err
    page, events = _open(browser, out)
    page.select_option('select[data-controls="gal"]', "*")
    page.wait_for_timeout(300)
    assert events["dialogs"] == [] and events["errors"] == []
    assert [u for u in events["requests"] if not u.startswith(("file:", "data:"))] == []
    assert "<img src=x onerror=alert(1)>" in page.inner_text("body")  # shown as text
    page.locator("#skipped").screenshot(path=str(artifacts / "report-skipped.png"))
    page.close()
