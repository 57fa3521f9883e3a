"""The explorer's data as the page's script reads it: compact, typed, base64.

At 10,000 points and ten layers a JSON list of coordinates and neighbour indices would
be several times larger than the packed arrays, and slower to parse.  Every array is
little-endian and base64-encoded (the page decodes it into a typed array):

``pos``
    uint16, (L, n, 2): the t-SNE positions, each axis quantised over its range across all
    layers (``bounds`` = [x_min, x_max, y_min, y_max]); the error is at most 1/131070 of
    the map's width, far below a pixel.
``nb``
    uint16 (uint32 above 65,536 points), (L, n, k): neighbour point indices, nearest first.
``label``, ``pred``
    int32, (n,): indices into ``names`` (label -1: unlabeled).
``conf``
    uint16, (n,): probability of the predicted class x 65535.
``correct``
    int8, (n,): 1 right, 0 wrong, -1 unknown (as the report's metrics count them).
``suspect``
    uint16, (n,): mislabel score x 65534; 65535 where the image has none (unlabeled).

``cams`` lists ``[point, thumbnail key]`` for the points whose predicted class has a
Grad-CAM overlay in the report; ``thumbs`` describes the sprite sheets
(:class:`reportgen.thumbs.SpriteSheets`).
"""

from __future__ import annotations

import base64
from typing import Any

import numpy as np

from reportgen.analyses.cam import CAM_NAMES
from reportgen.sections import overlay_key
from reportgen.sections.explorer import ExplorerSection
from reportgen.thumbs import SpriteSheets
from reportgen.util import data_uri

NO_SCORE = 65535


def pack(values: np.ndarray, dtype: str) -> str:
    """base64 of the array's bytes as ``dtype`` (little-endian), in C order."""
    return base64.b64encode(np.ascontiguousarray(values, dtype=np.dtype(dtype)).tobytes()).decode("ascii")


def quantise_positions(positions: np.ndarray) -> tuple[np.ndarray, list[float]]:
    """(L, n, 2) floats -> uint16 over each axis's range across all layers, and the bounds."""
    lo = positions.reshape(-1, 2).min(axis=0).astype(np.float64)
    hi = positions.reshape(-1, 2).max(axis=0).astype(np.float64)
    span = np.where(hi > lo, hi - lo, 1.0)
    q = np.rint((positions - lo) / span * 65535.0)
    return np.clip(q, 0, 65535).astype(np.uint16), [float(lo[0]), float(hi[0]), float(lo[1]), float(hi[1])]


def explorer_payload(
    section: ExplorerSection, sprites: SpriteSheets, thumbs: dict[str, str], colours: list[str], cam_method: str | None
) -> dict[str, Any]:
    """What the page's explorer reads (see the module docstring); ``thumbs`` are the
    report's embedded thumbnails (to find which points have a Grad-CAM overlay) and
    ``colours`` one CSS colour per class name."""
    n = len(section.files)
    pos, bounds = quantise_positions(section.positions)
    suspect = np.where(np.isfinite(section.suspect), np.rint(np.nan_to_num(section.suspect) * 65534.0), NO_SCORE)
    cams = []
    for i, (file, cls) in enumerate(zip(section.files, section.pred_outputs, strict=True)):
        key = overlay_key("cam", int(cls), file)
        if key in thumbs:
            cams.append([i, key])
    return {
        "n": n,
        "k": section.k,
        "layers": section.layers,
        "names": section.names,
        "colours": colours,
        "files": section.files,
        "labeled": section.labeled,
        "sampled": section.sampled,
        "nTotal": section.n_total,
        "scope": section.neighbour_scope,
        "metric": section.metric,
        "bounds": bounds,
        "pos": pack(pos, "<u2"),
        "nb": pack(section.neighbours, "<u2" if n <= 65536 else "<u4"),
        "nbBytes": 2 if n <= 65536 else 4,
        "label": pack(section.labels, "<i4"),
        "pred": pack(section.preds, "<i4"),
        "conf": pack(np.rint(np.clip(section.confidence, 0, 1) * 65535.0), "<u2"),
        "correct": pack(section.correct, "i1"),
        "suspect": pack(suspect, "<u2"),
        "mislabels": [[i, s] for i, s in sorted(section.mislabels.items())],
        "duplicates": [[i, files] for i, files in sorted(section.duplicates.items())],
        "cams": cams,
        "camMethod": CAM_NAMES.get(cam_method) if cam_method else None,
        "thumbs": {
            "side": sprites.side,
            "columns": sprites.columns,
            "perSheet": sprites.per_sheet,
            "sheets": [data_uri(sheet, sprites.mime) for sheet in sprites.sheets],
        },
    }
