"""Possible shortcuts: where each class's evidence sits, and a test of the spots that
stand out by covering them (see ``reportgen.analyses.shortcuts``).  Shown only when a
class is flagged; its JSON is written either way."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from reportgen.analyses.cam import compute_cam
from reportgen.analyses.shortcuts import (
    GRID,
    MIN_MAPS,
    ClassEvidence,
    cell_box,
    cell_shares,
    class_evidence,
    describe_cell,
    occlusion_verdict,
    random_cells,
)
from reportgen.data import Preprocess
from reportgen.errors import UserError
from reportgen.models import SplitModel
from reportgen.report import PictureRequest, Section
from reportgen.sections.base import Shared, load_pixels
from reportgen.sections.maps import cam_model, mean_blend

# Maps in all: every class gets ``--shortcut-images`` maps up to this budget, at least
# MIN_MAPS each (a 1000-class model gets fewer per class rather than 24,000 maps).
MAP_BUDGET = 2400


@dataclass
class Shortcut:
    """A flagged class: its evidence sits in one spot, and covering the spot costs it."""

    cls: str
    where: str  # e.g. "top-left corner"
    cell: tuple[int, int]  # (row, column) in the GRID x GRID grid
    box: tuple[int, int, int, int]  # the cell in input pixels (x0, y0, x1, y1), exclusive ends
    images: int  # of the class, whose maps and occlusions were measured
    concentration: float  # mean share of the map mass in the cell
    consistency: float  # share of the images whose map peaks in the cell
    specificity: float  # concentration over the other classes' median share in the cell
    border_share: float  # mean share of the map mass in the outer ring of cells
    occlusion_drop: float  # mean drop of the class's probability with the cell swapped for other classes' (see DONORS)
    random_drop: float  # the same with another cell covered (RANDOM_CELLS cells per image, seeded)
    picture: str = ""  # picture key: the class's mean map over its images' mean


@dataclass
class Shortcuts:
    flagged: list[Shortcut]
    checked: int  # classes with enough maps to judge
    candidates: int  # classes whose evidence stood out before the occlusion test
    images_per_class: int
    method: str | None
    note: str = ""
    blends: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # key -> (mean image, mean map)
    grid: int = GRID
    occlusion: str = "swap"  # "swap": the cell of other classes' images; "grey": a model with one class


# Occlusion swaps a cell for the same cell of this many images of other classes (seeded):
# what the dataset holds there when the class is absent.  A constant patch is no neutral
# occlusion: mid-grey over the corner of a black picture is itself a bright mark there (a
# model that learned "a bright spot in the corner" kept its class at 0.57 with the spot
# greyed out, 0.007 with another picture's corner pasted in), black over a white one a dark mark.
DONORS = 3


def grey_fill(pre: Preprocess) -> np.ndarray:
    """The model-input value of mid-grey (0.5 in every channel), per channel: the occlusion
    of a model with one class only, which has no other class's images to swap in."""
    mean = np.resize(np.asarray(pre.mean, np.float32), pre.channels)
    std = np.resize(np.asarray(pre.std, np.float32), pre.channels)
    return (0.5 - mean) / std


def cover(x: np.ndarray, box: tuple[int, int, int, int], fill: np.ndarray, channels_last: bool) -> np.ndarray:
    """A copy of the input tensor ``x`` (C, H, W) or (H, W, C) with ``box`` taken from
    ``fill``: a value per channel, or an input tensor of the same shape (a donor image)."""
    x0, y0, x1, y1 = box
    out = x.copy()
    if fill.shape == x.shape:
        if channels_last:
            out[y0:y1, x0:x1, :] = fill[y0:y1, x0:x1, :]
        else:
            out[:, y0:y1, x0:x1] = fill[:, y0:y1, x0:x1]
    elif channels_last:
        out[y0:y1, x0:x1, :] = fill
    else:
        out[:, y0:y1, x0:x1] = fill[:, None, None]
    return out


def pick_images(log_odds: np.ndarray, truth: np.ndarray, pred: np.ndarray, per_class: int) -> dict[int, list[int]]:
    """Per class, the rows of its own images the model gets right (predicted images when
    unlabeled), most confident first, at most ``per_class``."""
    labeled = bool((truth >= 0).any())
    out = {}
    for c in range(log_odds.shape[1]):
        rows = np.flatnonzero((truth == c) & (pred == c)) if labeled else np.flatnonzero(pred == c)
        order = rows[np.argsort(-log_odds[rows, c], kind="stable")]
        if len(order):
            out[c] = [int(r) for r in order[:per_class]]
    return out


class ShortcutsSection(Section):
    id = "shortcuts"
    title = "Possible shortcuts"

    def build(self, shared: Shared) -> Shortcuts | None:
        cfg = shared.cfg
        if cfg.shortcut_images <= 0 or shared.multilabel is not None:
            return None  # the test compares one class's images with the others'; a multi-label run has no such split
        model = shared.once(cam_model)
        if model.split is None:
            return Shortcuts([], 0, 0, cfg.shortcut_images, None, model.note or "no maps")
        try:
            return find_shortcuts(shared, model.split, lambda x: model.adapter.extract(x, [])[0])
        except UserError as exc:
            if cfg.cam_layer:
                raise
            return Shortcuts([], 0, 0, cfg.shortcut_images, None, f"no maps: {exc}")

    def shown(self, content: Shortcuts) -> bool:
        return bool(content.flagged)

    def count(self, content: Shortcuts) -> int:
        return len(content.flagged)

    def json_items(self, content: Shortcuts | None) -> dict[str, Any]:
        if content is None:
            return {}
        return {
            "shortcuts": [
                {
                    "class": s.cls,
                    "where": s.where,
                    "cell": list(s.cell),
                    "box": list(s.box),
                    "images": s.images,
                    "concentration": s.concentration,
                    "consistency": s.consistency,
                    "specificity": None if not np.isfinite(s.specificity) else s.specificity,
                    "border_share": s.border_share,
                    "occlusion_drop": s.occlusion_drop,
                    "random_occlusion_drop": s.random_drop,
                }
                for s in content.flagged
            ],
            "shortcut_settings": {
                "grid": GRID,
                "classes_checked": content.checked,
                "candidates": content.candidates,
                "images_per_class": content.images_per_class,
                "occlusion": content.occlusion,
                "method": content.method,
                "note": content.note or None,
            },
        }

    def pictures(self, content: Shortcuts) -> PictureRequest:
        return PictureRequest(blends=dict(content.blends))


def find_shortcuts(shared: Shared, split: SplitModel, run_model: Any) -> Shortcuts:
    """Maps of the classes' own images, where their evidence sits, and the occlusion test
    of the spots that stand out; ``run_model`` is the forward pass (input -> outputs)
    that Score-CAM and the occlusion test need."""
    cfg, clock, features, pre = shared.cfg, shared.clock, shared.features, shared.pre
    classes = shared.class_map.classes
    per_class = min(cfg.shortcut_images, max(MIN_MAPS, MAP_BUDGET // max(1, len(classes))))
    picks = pick_images(shared.log_odds, shared.truth, shared.pred, per_class)
    with clock("shortcuts"), clock.bar("shortcuts", sum(len(v) for v in picks.values()), "map") as bar:
        pixels = load_pixels(shared.dataset, sorted({features.files[r] for rows in picks.values() for r in rows}), pre)
        shares: dict[int, np.ndarray] = {}
        class_maps: dict[int, np.ndarray] = {}
        for c, rows in picks.items():
            rows = [r for r in rows if features.files[r] in pixels]
            maps = []
            for start in range(0, len(rows), cfg.batch_size):
                chunk = rows[start : start + cfg.batch_size]
                batch = np.stack([pixels[features.files[r]] for r in chunk])
                cams = compute_cam(
                    cfg.cam,
                    split,
                    batch,
                    np.full(len(chunk), c),
                    pre.size,
                    run_model=run_model,
                    batch_size=cfg.batch_size,
                    channels_last=pre.channels_last,
                )
                maps.append(cams.maps)
                bar.update(len(chunk))
            picks[c] = rows
            if maps:
                class_maps[c] = np.concatenate(maps)
                placed = class_maps[c][class_maps[c].reshape(len(class_maps[c]), -1).any(axis=1)]
                shares[c] = cell_shares(placed)  # blank maps place nothing
        evidence = class_evidence(shares)
        candidates = [e for e in evidence if e.candidate]
        grey = grey_fill(pre)
        rng = np.random.default_rng(cfg.seed)
        flagged = []
        blends: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for e in candidates:
            rows = picks[e.cls]
            others = [pixels[features.files[r]] for c, rs in sorted(picks.items()) if c != e.cls for r in rs]
            shortcut = _occlusion_test(
                e, rows, pixels, features.files, others or [grey], rng, run_model, shared, classes
            )
            if shortcut is None:
                continue
            key = f"shortcut:{e.cls}"
            shortcut.picture = key
            blends[key] = mean_blend([pixels[features.files[r]] for r in rows], class_maps[e.cls], pre)
            flagged.append(shortcut)
    return Shortcuts(
        flagged,
        checked=sum(1 for e in evidence if e.n_maps >= MIN_MAPS),
        candidates=len(candidates),
        images_per_class=per_class,
        method=cfg.cam,
        blends=blends,
        occlusion="swap" if sum(1 for rows in picks.values() if rows) > 1 else "grey",
    )


def _occlusion_test(
    e: ClassEvidence,
    rows: list[int],
    pixels: dict[str, np.ndarray],
    files: list[str],
    donors: list[np.ndarray],
    rng: np.random.Generator,
    run_model: Any,
    shared: Shared,
    classes: list[str],
) -> Shortcut | None:
    """Swap the class's peak cell, on each of its images, for the same cell of
    :data:`DONORS` images of other classes (their mean probability), and RANDOM_CELLS other
    cells the same way, one donor each; ``donors`` holds one grey fill when no other class
    has images."""
    pre = shared.pre
    spot = cell_box(e.peak, pre.size)
    per_spot = min(DONORS, len(donors))
    batch = []
    for r in rows:
        x = pixels[files[r]]
        batch.append(x)
        for d in rng.choice(len(donors), size=per_spot, replace=False):
            batch.append(cover(x, spot, donors[d], pre.channels_last))
        for cell in random_cells(e.peak, rng):
            batch.append(cover(x, cell_box(cell, pre.size), donors[rng.integers(len(donors))], pre.channels_last))
    outputs = np.concatenate(
        [run_model(np.stack(batch[i : i + shared.cfg.batch_size])) for i in range(0, len(batch), shared.cfg.batch_size)]
    )
    p = _probabilities(outputs, shared.result.model.output_kind)[:, e.cls].reshape(len(rows), -1)
    spots = p[:, 1 : 1 + per_spot].mean(axis=1)
    drop, other, flagged = occlusion_verdict(p[:, 0], spots, p[:, 1 + per_spot :])
    if not flagged:
        return None
    return Shortcut(
        classes[e.cls],
        describe_cell(e.peak),
        e.peak,
        spot,
        len(rows),
        e.concentration,
        e.consistency,
        e.specificity,
        e.border_share,
        drop,
        other,
    )


def _probabilities(outputs: np.ndarray, output_kind: str) -> np.ndarray:
    """The model's outputs as probabilities, the way the audit read them."""
    if output_kind == "probabilities":
        return outputs.astype(np.float64)
    z = outputs.astype(np.float64)
    z = np.exp(z - z.max(axis=1, keepdims=True))
    return z / z.sum(axis=1, keepdims=True)
