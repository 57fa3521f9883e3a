"""The last stage: pictures from the result, then one HTML file and its JSON sidecar.

The HTML is self-contained: CSS and JavaScript are read from the templates folder and
inlined, pictures are ``data:`` URIs, and a Content-Security-Policy forbids the page any
network access.  Jinja autoescapes everything (file, class and layer names come from
disk or from the model and are untrusted) and fails on undefined names.
"""

from __future__ import annotations

import base64
import csv
import gzip
import hashlib
import io
import json
import re
from pathlib import Path
from typing import Any

import jinja2
import numpy as np
from markupsafe import Markup, escape

from reportgen import figures as plots
from reportgen import interrupts
from reportgen.analyses.cam import CAM_NAMES
from reportgen.outputs import PREDICTION_COLUMNS, write_together
from reportgen.overlay import overlay_thumbnail
from reportgen.report import AuditResult, Figures, report_outputs, to_json
from reportgen.resources import templates_dir
from reportgen.thumbs import jpeg_uri, placeholder, thumbnail_uri
from reportgen.util import data_uri, round_floats


def _mime(data: bytes) -> str:
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if data[:3] == b"\xff\xd8\xff":
        return "image/jpeg"
    return "image/png"


# ------------------------------------------------------------------ filters


def fmt_pct(value: float | None, digits: int = 1) -> str:
    """0.8734 -> '87.3%'; None -> '–'."""
    if value is None or (isinstance(value, float) and not np.isfinite(value)):
        return "–"
    return f"{100.0 * value:.{digits}f}%"


def fmt_num(value: float | None, digits: int = 3) -> str:
    """A float with ``digits`` decimals; integers as they are; None -> '–'."""
    if value is None:
        return "–"
    if isinstance(value, (int, np.integer)):
        return f"{int(value):,}"
    if not np.isfinite(value):
        return "–"
    return f"{value:.{digits}f}"


def fmt_seconds(value: float | None) -> str:
    if value is None:
        return "–"
    if value < 1:
        return f"{value * 1000:.0f} ms"
    if value < 120:
        return f"{value:.1f} s"
    return f"{value / 60:.1f} min"


def fmt_bytes(value: int) -> str:
    size = float(value)
    for unit in ("B", "KB", "MB", "GB"):
        if size < 1024 or unit == "GB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GB"  # pragma: no cover


_SEPARATOR = re.compile(r"([/_.\-])")
_SHAPE_X = re.compile(r"(?<=\d)([x×])(?=\d)")


def shorten_value(value: object, limit: int = 80) -> str:
    """A value from the data (a metadata cell) cut to ``limit`` characters for a table;
    the JSON and the cell's title keep it whole."""
    text = str(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def breakable(value: object) -> Markup:
    """``value`` escaped, with a line-break opportunity after each separator (``/``,
    ``_``, ``.``, ``-``) and after the ``x`` of a shape (``24x64``): long names and paths
    wrap where a reader expects, never inside a short token (``relu_`` / ``1``)."""
    text = str(escape(str(value)))  # entities (&amp; &#39;) hold none of the separators
    text = _SEPARATOR.sub(r"\1<wbr>", text)
    return Markup(_SHAPE_X.sub(r"\1<wbr>", text))


def environment() -> jinja2.Environment:
    """The one Jinja environment: autoescape on for every template, undefined is an error."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
    )
    env.filters["pct"] = fmt_pct
    env.filters["num"] = fmt_num
    env.filters["seconds"] = fmt_seconds
    env.filters["filesize"] = fmt_bytes
    env.filters["cam_name"] = lambda method: CAM_NAMES.get(method, "activation")
    env.filters["breakable"] = breakable
    env.filters["shorten_value"] = shorten_value
    return env


def _asset(name: str) -> str:
    return (templates_dir() / name).read_text(encoding="utf-8")


def csp(script: str) -> str:
    """A policy that allows only this page's own inline script and style, and data: images."""
    digest = base64.b64encode(hashlib.sha256(script.encode("utf-8")).digest()).decode()
    return (
        "default-src 'none'; img-src data:; style-src 'unsafe-inline'; "
        f"script-src 'sha256-{digest}'; base-uri 'none'; form-action 'none'; connect-src 'none'"
    )


# ------------------------------------------------------------------ HTML


def render_html(result: AuditResult, figures: Figures) -> str:
    """The report as one HTML string: the side bar and the body both walk the built
    sections, each drawn by its partial ``templates/sections/<id>.html.j2``."""
    env = environment()
    # One inline script, so the policy names one hash: the report's behaviour, then the explorer.
    script = _asset("report.js") + "\n" + _asset("explorer.js")
    images = {name: data_uri(data, _mime(data)) for name, data in figures.images.items()}
    shown = [b for b in result.sections if b.shown]
    page = {b.id: b.section.page_data(b.content, figures) for b in shown}
    template = env.get_template("report.html.j2")
    return template.render(
        r=result,
        sections=shown,
        page=page,
        fig=images,
        css=_asset("report.css"),
        script=script,
        csp=csp(script),
        page_data={"thumbs": figures.thumbs},
    )


def write_report(result: AuditResult, figures: Figures, html_path: Path, json_path: Path) -> None:
    """Write the report, its JSON sidecar and (above ``predictions.PREDICTIONS_INLINE``
    images) the predictions CSV as one step (``outputs.write_together``); a CSV left by
    an earlier, larger run goes, so its rows cannot pass for this run's."""
    payload = to_json(result)
    html = render_html(result, figures)
    interrupts.check()  # an interrupt something swallowed: nothing is written or replaced
    (csv_path, csv_proof, csv_what), (_, json_proof, json_what), (_, html_proof, html_what) = report_outputs(
        html_path, json_path
    )
    predictions = result.content("predictions")
    files = []
    inline = predictions is None or predictions.inline
    if not inline:
        payload["predictions_file"] = {
            "name": csv_path.name,
            "format": "csv.gz",
            "rows": len(predictions.rows),
            "columns": list(PREDICTION_COLUMNS),
        }
        files.append((csv_path, predictions_csv(predictions.json_rows()), csv_proof, csv_what))
    files.append((json_path, _json_bytes(payload), json_proof, json_what))
    files.append((html_path, html.encode("utf-8"), html_proof, html_what))
    write_together(files, remove=[(csv_path, csv_proof, csv_what)] if inline else [])


def predictions_csv(rows: list[dict[str, Any]]) -> bytes:
    """The rows as gzipped CSV (header :data:`PREDICTION_COLUMNS`; an empty label for an
    unlabeled image; scores to 6 significant digits as in the JSON), byte-stable.  A
    multi-label run's label and pred cells hold JSON lists of label names."""
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(PREDICTION_COLUMNS)
    for row in round_floats(rows):
        if "predicted" in row:
            # Multi-label: the label and pred cells hold JSON lists of the given (empty:
            # not known) and the predicted labels.
            row = {**row, "label": None if row["labels"] is None else json.dumps(row["labels"], ensure_ascii=False),
                   "pred": json.dumps(row["predicted"], ensure_ascii=False)}  # fmt: skip
        writer.writerow(["" if row[c] is None else row[c] for c in PREDICTION_COLUMNS])
    return gzip.compress(text.getvalue().encode("utf-8"), compresslevel=6, mtime=0)


def _json_bytes(payload: dict[str, Any]) -> bytes:
    return (json.dumps(payload, indent=1, ensure_ascii=False, allow_nan=False) + "\n").encode("utf-8")


# ------------------------------------------------------------------ compare


def render_compare(result: Any, payload: dict[str, Any]) -> str:  # result: compare.CompareResult
    """The release-to-release report as one HTML string."""
    figs: dict[str, str] = {}
    if result.confusion_old is not None:
        figs["confusion_diff"] = data_uri(
            plots.confusion_difference_figure(result.confusion_old, result.confusion_new, result.classes), "image/png"
        )
    if result.similarity:
        names = [
            f"{s.old_layer}" if s.old_layer == s.new_layer else f"{s.old_layer} / {s.new_layer}"
            for s in result.similarity
        ]
        png = plots.layer_curve_figure(
            names,
            {
                "linear CKA": [s.cka for s in result.similarity],
                "kNN overlap@10": [s.knn_overlap for s in result.similarity],
            },
            "similarity",
        )
        figs["similarity"] = data_uri(png, "image/png")
    from reportgen.compare import SHOWN_FLIPS

    shown = result.shown_flips()
    # The file names come from the audits' JSON: only the files compare.picture_paths
    # allowed are decoded (the others get the grey "cannot decode" square).
    thumbs = {f.thumb: thumbnail_uri(result.pictures[f.file]) for f in shown if f.file in result.pictures}
    thumbs.update({f.thumb: jpeg_uri(placeholder()) for f in shown if f.file not in result.pictures})
    resize_old = str(result.old.data["preprocessing"].get("resize", "stretch"))
    resize_new = str(result.new.data["preprocessing"].get("resize", "stretch"))
    for key, cam in result.overlays.items():
        side, _, file = key.partition(":")
        thumbs[key] = overlay_thumbnail(
            result.pictures[file], cam, resize_old if side == "old" else resize_new
        )  # allowed: checked before its map was made
    env = environment()
    script = _asset("report.js")
    return env.get_template("compare.html.j2").render(
        c=result,
        j=payload,
        fig=figs,
        css=_asset("report.css"),
        script=script,
        csp=csp(script),
        page_data={"thumbs": thumbs},
        shown=SHOWN_FLIPS,
    )


def write_compare(result: Any, payload: dict[str, Any], html_path: Path, json_path: Path) -> None:
    """Write diff.json and diff.html as one step (``outputs.write_together``)."""
    _, (_, json_proof, json_what), (_, html_proof, html_what) = report_outputs(html_path, json_path)
    html = render_compare(result, payload)
    write_together(
        [
            (json_path, _json_bytes(payload), json_proof, json_what),
            (html_path, html.encode("utf-8"), html_proof, html_what),
        ]
    )
