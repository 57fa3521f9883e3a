"""The "Possible shortcuts" section: where each class's evidence sits, and a test of the
spots that stand out by covering them (see ``reportgen.analyses.shortcuts``)."""

from __future__ import annotations

from typing import Any

import numpy as np

from reportgen.analyses.cam import compute_cam
from reportgen.analyses.shortcuts import (
    MIN_MAPS,
    RANDOM_CELLS,
    ClassEvidence,
    cell_box,
    cell_shares,
    class_evidence,
    describe_cell,
    occlusion_verdict,
    random_cells,
)
from reportgen.contents import Shortcut, ShortcutsSection
from reportgen.data import Preprocess
from reportgen.models import ModelAdapter, SplitModel
from reportgen.sections import SectionInputs, load_pixels

# Maps in all: every class gets ``--shortcut-images`` maps up to this budget, at least
# MIN_MAPS each (a 1000-class model gets fewer per class rather than 24,000 maps).
MAP_BUDGET = 2400


def grey_fill(pre: Preprocess) -> np.ndarray:
    """The model-input value of mid-grey (0.5 in every channel), per channel."""
    mean = np.resize(np.asarray(pre.mean, np.float32), pre.channels)
    std = np.resize(np.asarray(pre.std, np.float32), pre.channels)
    return (0.5 - mean) / std


def cover(x: np.ndarray, box: tuple[int, int, int, int], fill: np.ndarray, channels_last: bool) -> np.ndarray:
    """A copy of the input tensor ``x`` (C, H, W) or (H, W, C) with ``box`` set to ``fill``."""
    x0, y0, x1, y1 = box
    out = x.copy()
    if channels_last:
        out[y0:y1, x0:x1, :] = fill
    else:
        out[:, y0:y1, x0:x1] = fill[:, None, None]
    return out


def to_image(x: np.ndarray, pre: Preprocess) -> np.ndarray:
    """A model input back to a [0, 1] (H, W, C) picture."""
    hwc = x if pre.channels_last else np.moveaxis(x, 0, -1)
    mean = np.resize(np.asarray(pre.mean, np.float32), pre.channels)
    std = np.resize(np.asarray(pre.std, np.float32), pre.channels)
    return np.clip(hwc * std + mean, 0, 1)


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


def build(inputs: SectionInputs, adapter: ModelAdapter, split: SplitModel) -> ShortcutsSection:
    """Maps of the classes' own images, where their evidence sits, and the occlusion test
    of the spots that stand out."""
    cfg, clock, features, pre = inputs.cfg, inputs.clock, inputs.features, inputs.pre
    classes = inputs.class_map.classes
    per_class = min(cfg.shortcut_images, max(MIN_MAPS, MAP_BUDGET // max(1, len(classes))))
    picks = pick_images(inputs.log_odds, inputs.truth, inputs.pred, per_class)
    with clock("shortcuts"), clock.bar("shortcuts", sum(len(v) for v in picks.values()), "map") as bar:
        pixels = load_pixels(inputs.dataset, sorted({features.files[r] for rows in picks.values() for r in rows}), pre)
        run_model = lambda x: adapter.extract(x, [])[0]  # noqa: E731 - Score-CAM's and the occlusion's forward pass
        shares: dict[int, np.ndarray] = {}
        mean_maps: dict[int, np.ndarray] = {}
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
                stacked = np.concatenate(maps)
                stacked = stacked[stacked.reshape(len(stacked), -1).any(axis=1)]  # blank maps place nothing
                shares[c] = cell_shares(stacked)
                total = stacked.sum(axis=(1, 2), keepdims=True)
                mean_maps[c] = np.divide(stacked, total, out=np.zeros_like(stacked), where=total > 0).mean(axis=0)
        evidence = class_evidence(shares)
        candidates = [e for e in evidence if e.candidate]
        fill = grey_fill(pre)
        rng = np.random.default_rng(cfg.seed)
        flagged = []
        blends: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        for e in candidates:
            rows = picks[e.cls]
            shortcut = _occlusion_test(e, rows, pixels, features.files, fill, rng, run_model, inputs, classes)
            if shortcut is None:
                continue
            key = f"shortcut:{e.cls}"
            shortcut.picture = key
            mean_image = np.mean([to_image(pixels[features.files[r]], pre) for r in rows], axis=0)
            peak = mean_maps[e.cls].max()
            blends[key] = (mean_image, mean_maps[e.cls] / peak if peak > 0 else mean_maps[e.cls])
            flagged.append(shortcut)
    return ShortcutsSection(
        flagged,
        checked=sum(1 for e in evidence if e.n_maps >= MIN_MAPS),
        candidates=len(candidates),
        images_per_class=per_class,
        method=cfg.cam,
        blends=blends,
    )


def _occlusion_test(
    e: ClassEvidence,
    rows: list[int],
    pixels: dict[str, np.ndarray],
    files: list[str],
    fill: np.ndarray,
    rng: np.random.Generator,
    run_model: Any,
    inputs: SectionInputs,
    classes: list[str],
) -> Shortcut | None:
    """Cover the class's peak cell, and RANDOM_CELLS other cells, on each of its images."""
    pre = inputs.pre
    spot = cell_box(e.peak, pre.size)
    batch = []
    for r in rows:
        x = pixels[files[r]]
        batch.append(x)
        batch.append(cover(x, spot, fill, pre.channels_last))
        for cell in random_cells(e.peak, rng):
            batch.append(cover(x, cell_box(cell, pre.size), fill, pre.channels_last))
    outputs = np.concatenate(
        [run_model(np.stack(batch[i : i + inputs.cfg.batch_size])) for i in range(0, len(batch), inputs.cfg.batch_size)]
    )
    probs = _probabilities(outputs, inputs.result.model.output_kind)[:, e.cls].reshape(len(rows), 2 + RANDOM_CELLS)
    drop, other, flagged = occlusion_verdict(probs[:, 0], probs[:, 1], probs[:, 2:])
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
