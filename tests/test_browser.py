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
from urllib.parse import quote

import numpy as np
import pytest
from conftest import SAMPLE, load_json, run_cli
from corpus import build_corpus
from test_explorer import page_payload

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


def _open(browser, html: Path, fragment: str = ""):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    events: dict[str, list[str]] = {"requests": [], "errors": [], "dialogs": []}
    page.on("request", lambda r: events["requests"].append(r.url))
    page.on("console", lambda m: events["errors"].append(m.text) if m.type == "error" else None)
    page.on("pageerror", lambda e: events["errors"].append(str(e)))
    page.on("dialog", lambda d: (events["dialogs"].append(d.message), d.dismiss()))
    page.goto(html.resolve().as_uri() + fragment)
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


# Reads the laid-out page (getBoundingClientRect) for what a reader would trip over; each
# finding is one line naming the element.  Inside a box that scrolls sideways (a wide
# table, a strip of thumbnails, the explorer's canvas) content may extend beyond the page.
LAYOUT_PROBLEMS = r"""
(() => {
  const out = [];
  const main = document.querySelector("main");
  const limit = main.getBoundingClientRect().right + 1;
  const name = e => e.tagName.toLowerCase() + (e.id ? "#" + e.id : "") +
    (e.className && typeof e.className === "string" ? "." + e.className.trim().split(/\s+/).join(".") : "");
  const scrolls = e => { for (let a = e.parentElement; a && a !== main; a = a.parentElement) {
      const o = getComputedStyle(a).overflowX; if (o === "auto" || o === "scroll") return true; } return false; };
  const visible = e => e.offsetParent !== null && getComputedStyle(e).visibility !== "hidden";
  // 1. Nothing runs off the right edge of the page's column, outside a sideways-scrolling box.
  for (const e of main.querySelectorAll("*")) {
    if (!visible(e) || scrolls(e)) continue;
    const r = e.getBoundingClientRect();
    if (r.width > 0 && r.right > limit) out.push("past the column: " + name(e) + " right " + Math.round(r.right));
  }
  // 2. Thumbnails sit inside their frames.
  for (const img of main.querySelectorAll(".tile img, .gtile img, .pair img, .ucell img, li.suspect img")) {
    if (!visible(img)) continue;
    const frame = img.closest(".tile, .gtile, .ucell, li.suspect");
    const a = img.getBoundingClientRect(), b = frame.getBoundingClientRect();
    if (a.left < b.left - 0.5 || a.right > b.right + 0.5 || a.top < b.top - 0.5 || a.bottom > b.bottom + 0.5)
      out.push("out of its frame: " + name(img) + " in " + name(frame) + " " + (img.alt || ""));
  }
  // 3. Table cells hold their text.
  for (const c of main.querySelectorAll("td, th")) {
    if (!visible(c)) continue;
    if (c.scrollWidth > c.clientWidth + 1) out.push("overflowing cell: " + name(c) + " " + c.textContent.trim().slice(0, 40));
  }
  // 4. Tiles, cards and suspects of one row do not overlap.
  for (const box of main.querySelectorAll(".gallery, .strip, .cards, ol.suspects, .utop")) {
    const kids = Array.from(box.children).filter(visible).map(k => [k, k.getBoundingClientRect()]);
    for (let i = 0; i < kids.length; i++) for (let j = i + 1; j < kids.length; j++) {
      const a = kids[i][1], b = kids[j][1];
      const w = Math.min(a.right, b.right) - Math.max(a.left, b.left), h = Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top);
      if (w > 1 && h > 1) out.push("overlapping: " + name(kids[i][0]) + " and " + name(kids[j][0]) + " in " + name(box));
    }
  }
  // 5. No name breaks inside a token: every piece between separators sits on one line.
  const walker = document.createTreeWalker(main, NodeFilter.SHOW_TEXT);
  const range = document.createRange();
  for (let node = walker.nextNode(); node; node = walker.nextNode()) {
    const el = node.parentElement;
    if (!el || !visible(el) || el.closest("script, style, .help, p, li.suspect .muted, .warn")) continue;
    const text = node.textContent, token = /[^\s\/_.\-×]+/g;
    for (let m = token.exec(text); m; m = token.exec(text)) {
      if (m[0].length < 2 || m[0].length > 24) continue;  // a long token (a hash) may wrap anywhere
      range.setStart(node, m.index); range.setEnd(node, m.index + m[0].length);
      const tops = new Set(Array.from(range.getClientRects()).filter(r => r.width > 0).map(r => Math.round(r.top)));
      if (tops.size > 1) out.push("broken word: '" + m[0] + "' in " + name(el));
    }
  }
  return Array.from(new Set(out));
})()
"""


@pytest.mark.parametrize("width", [1400, 1000])
def test_the_report_reads_without_broken_names_or_clipped_boxes(browser, sample_audits, artifacts: Path, width: int):
    page = browser.new_page(viewport={"width": width, "height": 1000})
    page.goto(sample_audits["onnx"].resolve().as_uri())
    page.wait_for_load_state("load")
    page.evaluate("document.querySelectorAll('details').forEach(d => d.open = true)")  # everything, as a reader may
    page.wait_for_timeout(200)
    page.screenshot(path=str(artifacts / f"report-full-{width}.png"), full_page=True)
    problems = page.evaluate(LAYOUT_PROBLEMS)
    page.close()
    assert problems == [], "\n".join(problems[:40])


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


MAP = "[data-explorer] .xcanvas > canvas"
PANEL = "[data-explorer-panel]"


def _wait(page, condition: str, timeout_s: float = 10.0) -> None:
    """Poll a JavaScript expression until it is true (the page's policy forbids the
    eval that ``wait_for_function`` uses)."""
    import time

    end = time.monotonic() + timeout_s
    while not page.evaluate(condition):
        assert time.monotonic() < end, f"timed out waiting for {condition}"
        page.wait_for_timeout(50)


def _positions(page) -> np.ndarray:
    """Where the page draws every point, in CSS px from the canvas's top left corner."""
    return np.array(
        page.evaluate(
            "(() => { const e = window.reportgenExplorer, out = [];"
            " for (let i = 0; i < e.count; i++) out.push(e.project(i)); return out; })()"
        )
    )


def _panel_neighbours(page) -> list[str]:
    return page.locator(f"{PANEL} .xnb img").evaluate_all("els => els.map(e => e.getAttribute('data-file'))")


def _hash(file: str, layer: str) -> str:
    return "#explore=" + quote(file, safe="") + "&layer=" + quote(layer, safe="")


def test_explorer_hover_click_slider_and_link(browser, sample_audits, artifacts: Path) -> None:
    html = sample_audits["onnx"]
    data, payload = load_json(html), page_payload(html)
    files, layers = payload["files"], payload["layers"]
    page, events = _open(browser, html)
    _wait(page, "window.reportgenExplorer !== undefined")
    assert page.locator("[data-explorer] canvas").count() == 1
    canvas = page.locator(MAP)
    canvas.scroll_into_view_if_needed()
    box = canvas.bounding_box()
    assert box is not None and box["width"] > 300 and box["height"] > 300
    assert page.evaluate("window.reportgenExplorer.layer()") == len(layers) - 1  # opens at the deepest layer

    # The kNN query drawn farthest from any other point: hovering it can hit nothing else.
    deepest = {q["query"]: q for q in data["knn"][layers[-1]]}
    pts = _positions(page)
    gaps = np.sqrt(((pts[:, None, :] - pts[None, :, :]) ** 2).sum(-1))
    np.fill_diagonal(gaps, np.inf)
    inside = (pts[:, 0] > 10) & (pts[:, 0] < box["width"] - 10) & (pts[:, 1] > 10) & (pts[:, 1] < box["height"] - 10)
    i = max((j for j, f in enumerate(files) if f in deepest and inside[j]), key=lambda j: gaps[j].min())
    assert gaps[i].min() > 8
    x, y = box["x"] + pts[i][0], box["y"] + pts[i][1]
    page.mouse.move(x, y)
    hover = page.locator("[data-explorer-hover]")
    hover.wait_for(state="visible")
    assert files[i] in hover.inner_text()
    page.mouse.move(box["x"] + 2, box["y"] + 2)  # away from every point: the card goes
    hover.wait_for(state="hidden")

    # Click: the panel names the image and shows the JSON's neighbours at this layer.
    page.mouse.click(x, y)
    assert page.locator(f"{PANEL} .xfile").inner_text() == files[i]
    expected = [n["file"] for n in deepest[files[i]]["neighbours"]]
    assert _panel_neighbours(page) == expected
    _wait(
        page, f"Array.from(document.querySelectorAll('{PANEL} .xnb img')).every(i => i.complete && i.naturalWidth > 0)"
    )
    assert page.evaluate("location.hash") == _hash(files[i], layers[-1])
    page.locator("#explore").screenshot(path=str(artifacts / "explorer.png"))
    # Clicking a neighbour moves the selection to it.
    page.locator(f"{PANEL} .xnb button").first.click()
    assert page.locator(f"{PANEL} .xfile").inner_text() == expected[0]
    assert page.evaluate("location.hash") == _hash(expected[0], layers[-1])

    # The slider: the points move to the first layer's map, and the drawing changes.
    pixels = page.evaluate(f"document.querySelector('{MAP}').toDataURL()")
    page.locator('[data-explorer] input[data-x="layer"]').focus()
    page.keyboard.press("Home")
    _wait(page, "!window.reportgenExplorer.moving()")
    assert page.evaluate("window.reportgenExplorer.layer()") == 0
    moved = _positions(page)
    assert np.abs(moved - pts).max() > 20
    assert page.evaluate(f"document.querySelector('{MAP}').toDataURL()") != pixels

    # The search box selects by file name; the panel shows the first layer's neighbours.
    page.fill('[data-explorer] input[data-x="search"]', files[i])
    page.press('[data-explorer] input[data-x="search"]', "Enter")
    assert page.locator(f"{PANEL} .xfile").inner_text() == files[i]
    first = {q["query"]: q for q in data["knn"][layers[0]]}
    assert _panel_neighbours(page) == [n["file"] for n in first[files[i]]["neighbours"]]
    page.fill('[data-explorer] input[data-x="search"]', "")

    # Filters: misclassified only leaves exactly the misclassified points.
    wrong = sum(1 for p in data["predictions"] if p["label"] is not None and p["label"] != p["pred"])
    page.check('[data-explorer] input[data-x="wrong"]')
    assert page.inner_text('[data-explorer] [data-x="count"]').startswith(f"{wrong} of {len(files)}")
    page.uncheck('[data-explorer] input[data-x="wrong"]')

    # The keyboard: from the map, Escape clears the selection and an arrow key makes one.
    canvas.focus()
    page.keyboard.press("Escape")
    assert page.locator(f"{PANEL} .xfile").count() == 0
    page.keyboard.press("ArrowRight")
    assert page.locator(f"{PANEL} .xfile").count() == 1
    page.keyboard.press("]")
    _wait(page, "window.reportgenExplorer.layer() === 1")

    assert [u for u in events["requests"] if not u.startswith(("file:", "data:"))] == []
    assert events["errors"] == [] and events["dialogs"] == []
    page.close()

    # A link with the selection in its hash opens the report on that image and layer.
    page, events = _open(browser, html, _hash(files[i], layers[0]))
    _wait(page, "window.reportgenExplorer !== undefined")
    assert page.locator(f"{PANEL} .xfile").inner_text() == files[i]
    assert page.evaluate("window.reportgenExplorer.layer()") == 0
    assert page.evaluate("window.reportgenExplorer.selected()") == i
    assert _panel_neighbours(page) == [n["file"] for n in first[files[i]]["neighbours"]]
    assert events["errors"] == []
    page.close()


def test_explorer_on_an_unlabeled_folder(browser, tmp_path: Path) -> None:
    """A flat folder: colour by prediction or confidence only, no right/wrong, no errors."""
    images = tmp_path / "flat"
    images.mkdir()
    for path in sorted((SAMPLE / "images").glob("*/*.jpg"))[::9]:
        shutil.copy(path, images / f"{path.parent.name}_{path.name}")
    out = tmp_path / "out" / "r.html"
    result = run_cli("audit", SAMPLE / "model.onnx", images, "-o", out, "-q", "--gallery-size", "0", "--channels", "0")
    assert result.code == 0, result.err
    page, events = _open(browser, out)
    _wait(page, "window.reportgenExplorer !== undefined")
    modes = page.eval_on_selector_all('[data-explorer] select[data-x="colour"] option', "os => os.map(o => o.value)")
    assert modes == ["pred", "conf"]
    assert page.locator('[data-explorer] input[data-x="wrong"]').count() == 0
    assert "misclassified" not in page.inner_text('[data-explorer] [data-x="legend"]')
    page.locator(MAP).focus()
    page.keyboard.press("ArrowRight")
    assert page.locator(f"{PANEL} .xfile").count() == 1 and len(_panel_neighbours(page)) == 10
    page.select_option('[data-explorer] select[data-x="colour"]', "conf")
    assert "confidence" in page.inner_text('[data-explorer] [data-x="legend"]')
    assert events["errors"] == [] and [u for u in events["requests"] if not u.startswith(("file:", "data:"))] == []
    page.close()
