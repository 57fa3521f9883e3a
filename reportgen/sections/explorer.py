"""Explore: every embedded image as a point on the aligned t-SNE maps, with what the page
needs to answer "which image is this, and who are its neighbours?".

The section's content holds numbers only (positions per layer, neighbour indices, labels,
scores); :func:`explorer_payload` packs them for the page and the picture step draws the
thumbnails into sprite sheets.  Points are the t-SNE's points: every image up to
``--tsne-max-points``, above that the same seeded stratified sample as the maps.

Neighbours are taken among the points themselves, so that every neighbour is a point on
the map one can click.  When the map holds every audited image and the kNN tables read
the audited folder (no ``--reference``), they are the kNN tables' own neighbours
(leave-one-out, same metric, same tie rule); otherwise they are computed here, exactly,
among the points, and the page says so.

The page's data is compact and typed: at 10,000 points and ten layers a JSON list of
coordinates and neighbour indices would be several times larger than the packed arrays,
and slower to parse.  Every array is
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
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from reportgen import figures
from reportgen.analyses.cam import CAM_NAMES
from reportgen.analyses.knn import LayerKnn, knn_search
from reportgen.analyses.suspects import LabelScores
from reportgen.report import Figures, PictureRequest, Section
from reportgen.sections.base import Shared, overlay_key
from reportgen.sections.galleries import gallery_maps
from reportgen.sections.neighbours import embedding, neighbourhood, suspicions
from reportgen.thumbs import SpriteSheets
from reportgen.util import data_uri


@dataclass
class Explorer:
    """One point per embedded image (index ``i`` is row ``rows[i]`` of the features)."""

    layers: list[str]  # layers with a t-SNE map, in layer order
    rows: np.ndarray  # (n,) feature rows of the points
    files: list[str]  # (n,) file names, relative to the image folder
    positions: np.ndarray  # (L, n, 2) float32 aligned t-SNE coordinates, the GIF's frames
    neighbours: np.ndarray  # (L, n, k) int point indices, nearest first
    labels: np.ndarray  # (n,) index into ``names``, -1 unlabeled
    preds: np.ndarray  # (n,) index into ``names`` of the predicted class
    pred_outputs: np.ndarray  # (n,) the same prediction as the model's output index (names its Grad-CAM)
    confidence: np.ndarray  # (n,) probability of the predicted class
    correct: np.ndarray  # (n,) int8: 1 right, 0 wrong, -1 unknown (no label, or a label that is no model class)
    suspect: np.ndarray  # (n,) mislabel score in [0, 1], NaN where none (unlabeled)
    names: list[str]  # class names: the folder's labels, then output classes not among them
    mislabels: dict[int, str] = field(default_factory=dict)  # flagged point -> suggested label
    duplicates: dict[int, list[str]] = field(default_factory=dict)  # point -> files it near-duplicates
    metric: str = "euclidean"
    sampled: bool = False
    n_total: int = 0
    neighbour_scope: str = "all audited images"
    labeled: bool = True
    cam_method: str | None = None  # the method of the maps the report drew (a point shows its own)
    tsne_max_points: int = 0

    @property
    def k(self) -> int:
        return int(self.neighbours.shape[2])


def point_neighbours(
    arrays: dict[str, np.ndarray],
    layers: list[str],
    rows: np.ndarray,
    k: int,
    metric: str,
    knn: dict[str, LayerKnn] | None,
) -> np.ndarray:
    """(L, n, k) neighbour indices among the points ``rows`` at every layer.

    ``knn`` is the kNN section's result when it was computed leave-one-out over exactly
    these rows (all of them, in order): then its neighbours are reused as they are.
    """
    n = len(rows)
    k = max(0, min(k, n - 1))
    out = np.zeros((len(layers), n, k), np.int64)
    for li, name in enumerate(layers):
        if knn is not None:
            out[li] = knn[name].neighbours.indices[:, :k]
            continue
        x = arrays[name][rows]
        out[li] = knn_search(x, x, k, metric=metric, query_rows=np.arange(n)).indices
    return out


def build_explorer(
    *,
    layers: list[str],
    rows: np.ndarray,
    embeddings: dict[str, np.ndarray | None],
    arrays: dict[str, np.ndarray],
    files: list[str],
    labels: np.ndarray,
    label_names: list[str],
    preds: np.ndarray,
    truth: np.ndarray,
    class_names: list[str],
    probs: np.ndarray,
    scores: LabelScores | None,
    mislabels: dict[int, int],
    duplicates: dict[int, list[str]],
    k: int,
    metric: str,
    knn: dict[str, LayerKnn] | None,
    n_total: int,
    labeled: bool,
) -> Explorer | None:
    """The explorer's data for the points ``rows`` (the t-SNE's points).

    ``labels`` index ``label_names`` (-1 unlabeled) and ``preds`` index ``class_names``,
    both per feature row; ``truth`` is the true output index (-1 unknown), so that "right"
    and "wrong" are the report's; ``mislabels`` maps a flagged row to its suggested label;
    ``duplicates`` a row to the files it near-duplicates; ``knn`` as in
    :func:`point_neighbours`.  None when no layer has a map.
    """
    shown = [name for name in layers if embeddings.get(name) is not None]
    if not shown or len(rows) < 2:
        return None
    # One vocabulary for both labels and predictions, so a class has one colour whichever
    # the page colours by.
    names = list(label_names) + [c for c in class_names if c not in label_names]
    pred_names = np.array([names.index(c) for c in class_names], np.int64)
    point_of = {int(r): i for i, r in enumerate(rows)}
    positions = np.stack([np.asarray(embeddings[name], np.float32) for name in shown])
    full = knn is not None and np.array_equal(rows, np.arange(n_total))
    return Explorer(
        layers=shown,
        rows=np.asarray(rows, np.int64),
        files=[files[r] for r in rows],
        positions=positions,
        neighbours=point_neighbours(arrays, shown, rows, k, metric, knn if full else None),
        labels=np.asarray(labels, np.int64)[rows],
        preds=pred_names[np.asarray(preds, np.int64)[rows]],
        pred_outputs=np.asarray(preds, np.int64)[rows],
        confidence=probs[rows, preds[rows]].astype(np.float64),
        correct=np.where(truth[rows] < 0, -1, truth[rows] == preds[rows]).astype(np.int8),
        suspect=(np.full(len(rows), np.nan) if scores is None else scores.score[rows].astype(np.float64)),
        names=names,
        mislabels={point_of[r]: label_names[s] for r, s in mislabels.items() if r in point_of},
        duplicates={point_of[r]: v for r, v in duplicates.items() if r in point_of},
        metric=metric,
        sampled=len(rows) < n_total,
        n_total=n_total,
        neighbour_scope="all audited images" if full else f"the {len(rows):,} images on the map",
        labeled=labeled,
    )


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
    section: Explorer, sprites: SpriteSheets, thumbs: dict[str, str], colours: list[str], cam_method: str | None
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


class ExplorerSection(Section):
    id = "explore"
    title = "Explore"

    def build(self, shared: Shared) -> Explorer | None:
        cfg = shared.cfg
        tsne = shared.once(embedding)
        if tsne is None or not cfg.explorer:
            return None
        hood = shared.once(neighbourhood)
        found = shared.once(suspicions)
        partners: dict[int, list[str]] = {}
        for d in found.duplicates if found is not None else []:
            # A reference image is not on the map: named as such, so the page never
            # mistakes it for an audited file of the same name.
            partners.setdefault(d.a, []).append(
                f"{cfg.reference}/{hood.ref.files[d.b]} (reference)" if d.cross else hood.audited.files[d.b]
            )
            if not d.cross:
                partners.setdefault(d.b, []).append(hood.audited.files[d.a])
        with shared.clock("explorer"):
            explorer = build_explorer(
                layers=hood.names,
                rows=tsne.rows,
                embeddings=tsne.embeddings,
                arrays=shared.features.arrays,
                files=shared.features.files,
                labels=hood.audited.labels,
                label_names=hood.vocab,
                preds=shared.pred,
                truth=shared.truth,
                class_names=shared.class_map.classes,
                probs=shared.probs,
                scores=found.evidence if found is not None else None,
                mislabels={m.row: m.suggested for m in found.mislabels} if found is not None else {},
                duplicates=partners,
                k=cfg.k,
                metric=cfg.metric,
                knn=hood.knn if shared.reference is None else None,
                n_total=shared.features.n,
                labeled=bool(shared.result.dataset.labeled),
            )
        if explorer is not None:
            maps = shared.once(gallery_maps)
            explorer.cam_method = maps.method if maps is not None else None
            explorer.tsne_max_points = cfg.tsne_max_points
        return explorer

    def json_items(self, content: Explorer | None) -> dict[str, Any]:
        if content is None:
            return {}
        return {
            "explorer": {
                "n_points": len(content.files),
                "n_total": content.n_total,
                "sampled": content.sampled,
                "layers": content.layers,
                "k": content.k,
                "metric": content.metric,
                "neighbours_among": content.neighbour_scope,
            }
        }

    def pictures(self, content: Explorer) -> PictureRequest:
        return PictureRequest(sprites=list(content.files))

    def page_data(self, content: Explorer, figs: Figures) -> dict[str, Any] | None:
        if figs.sprites is None:
            return None
        colours = [s["colour"] for s in figures.class_swatches(content.names)]
        return explorer_payload(content, figs.sprites, figs.thumbs, colours, content.cam_method)
