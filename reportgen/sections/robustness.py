"""Robustness: a stratified sample of the labelled images run again under everyday
corruptions (the recipes are ``analyses/robustness.py``)."""

from __future__ import annotations

import os
import zlib
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from reportgen import figures
from reportgen.analyses.cam import compute_cam
from reportgen.analyses.robustness import CORRUPTIONS, Robustness, corrupt, summarise
from reportgen.analyses.tsne import stratified_sample
from reportgen.data import DecodeError, open_image, resize_for_model, to_tensor
from reportgen.errors import UserError
from reportgen.report import PictureRequest, Section
from reportgen.sections.base import Shared, thumb_key
from reportgen.sections.maps import cam_model, to_image


def _seed(seed: int, file: str, corruption: int) -> int:
    """The noise of one picture under one corruption: the same whatever else is sampled."""
    return zlib.crc32(f"{seed}:{corruption}:{file}".encode())


def robustness(shared: Shared) -> Robustness | None:
    """The stratified sample decoded again at the model's input size, every picture run
    under every corruption; None without labels or with ``--robustness-images 0``."""
    cfg, features, pre = shared.cfg, shared.features, shared.pre
    labeled = np.flatnonzero(shared.truth >= 0)
    if cfg.robustness_images <= 0 or shared.metrics is None or not len(labeled):
        return None
    rows = labeled[stratified_sample(shared.truth[labeled], cfg.robustness_images, cfg.seed)]
    with shared.clock("load model"):
        adapter = shared.handle.prepared(pre.size)
    with shared.clock("robustness"), shared.clock.bar("robustness", len(rows), "img") as bar:
        kept, pictures = [], []
        for r in rows:
            try:
                img, _ = open_image(
                    shared.dataset.root / features.files[r], pre.channels, pre.size, shared.dataset.max_bytes
                )
            except DecodeError:
                continue  # changed on disk since extraction: left out of the sample
            kept.append(r)
            pictures.append(np.asarray(resize_for_model(img, pre)))
        rows = np.array(kept, np.int64)
        predicted = np.empty((len(CORRUPTIONS), len(rows)), np.int64)

        def corrupted(c: int, i: int) -> np.ndarray:
            picture = corrupt(pictures[i], CORRUPTIONS[c], _seed(cfg.seed, features.files[rows[i]], c))
            return to_tensor(Image.fromarray(picture), pre)

        # The corruptions are array work on the CPU (numpy, scipy and Pillow let go of the
        # GIL), seeded per picture and corruption: threads give the same pictures faster,
        # which on a GPU run is most of this section's time.
        with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
            for start in range(0, len(rows), cfg.batch_size):
                chunk = range(start, min(start + cfg.batch_size, len(rows)))
                for c in range(len(CORRUPTIONS)):
                    batch = np.stack(list(pool.map(lambda i, c=c: corrupted(c, i), chunk)))
                    predicted[c, chunk.start : chunk.stop] = adapter.extract(batch, [])[0].argmax(axis=1)
                bar.update(len(chunk))
        result = summarise(rows, shared.truth[rows], shared.pred[rows], predicted, shared.class_map.classes)
        index = {int(r): i for i, r in enumerate(rows)}
        before, after = [], []
        for row, name, severity, _ in result.first_flips:
            c = next(i for i, k in enumerate(CORRUPTIONS) if (k.name, k.severity) == (name, severity))
            i = index[row]
            picture = corrupt(pictures[i], CORRUPTIONS[c], _seed(cfg.seed, features.files[row], c))
            result.pictures[f"corrupt:{row}"] = (picture if picture.ndim == 3 else picture[:, :, None]) / 255.0
            before.append(to_tensor(Image.fromarray(pictures[i]), pre))
            after.append(to_tensor(Image.fromarray(picture), pre))
    if before:
        _flip_maps(shared, result, np.stack(before), np.stack(after))
    return result


def _flip_maps(shared: Shared, result: Robustness, before: np.ndarray, after: np.ndarray) -> None:
    """Maps of the class predicted on the clean picture, on the clean and the corrupted
    picture of every image that breaks first (into ``result.maps``): where the evidence
    for the right class was, and where it went.  None where no map can be drawn."""
    cfg, pre = shared.cfg, shared.pre
    model = shared.once(cam_model)
    if model.split is None:
        return
    flips = result.first_flips
    targets = np.array([shared.pred[row] for row, *_ in flips] * 2)
    try:
        with shared.clock("cam"):
            maps = compute_cam(
                cfg.cam, model.split, np.concatenate([before, after]), targets, pre.size,
                run_model=lambda x: model.adapter.extract(x, [])[0], batch_size=cfg.batch_size,
                channels_last=pre.channels_last,
            ).maps  # fmt: skip
    except UserError:
        return  # a graph the gradient cannot pass: the galleries say why
    for j, (row, *_) in enumerate(flips):
        result.maps[f"rbcam:clean:{row}"] = (to_image(before[j], pre), maps[j])
        result.maps[f"rbcam:corrupt:{row}"] = (to_image(after[j], pre), maps[len(flips) + j])


@dataclass
class FlipTile:
    """An image that breaks first: right when clean, wrong under the mildest corruption."""

    row: int
    file: str
    thumb: str  # the clean picture
    corrupted: str  # picture key of the corrupted one
    corruption: str
    severity: int
    predicted: str
    corrupted_pred: str


@dataclass
class RobustnessView:
    found: Robustness
    flips: list[FlipTile]
    sample_note: str
    method: str  # the CAM method of the flips' maps (``found.maps``)


class RobustnessSection(Section):
    id = "robustness"
    title = "Robustness"

    def build(self, shared: Shared) -> RobustnessView | None:
        found = robustness(shared)
        if found is None:
            return None
        classes = shared.class_map.classes
        files = shared.features.files
        flips = [
            FlipTile(
                row,
                files[row],
                thumb_key(files[row]),
                f"corrupt:{row}",
                name,
                severity,
                classes[shared.pred[row]],
                classes[new],
            )
            for row, name, severity, new in found.first_flips
        ]
        labeled = int((shared.truth >= 0).sum())
        sample_note = (
            f"a sample of {len(found.rows)} of the {labeled} labelled images, the same share of every class"
            if len(found.rows) < labeled
            else f"all {labeled} labelled images"
        )
        return RobustnessView(found, flips, sample_note, shared.cfg.cam)

    def json_items(self, view: RobustnessView | None) -> dict[str, Any]:
        if view is None:
            return {"robustness": None}
        content = view.found
        return {
            "robustness": {
                "images": len(content.rows),
                "clean_accuracy": content.clean_accuracy,
                "corruptions": [
                    {"name": r.name, "severity": r.severity, "accuracy": r.accuracy, "flipped": r.flipped}
                    for r in content.results
                ],
                "mean_drop": content.mean_drop,
                "class_drops": [
                    {"class": name, "clean_accuracy": clean, "corrupted_accuracy": corrupted}
                    for name, clean, corrupted in content.class_drops
                ],
                "first_flips": [
                    {
                        "file": t.file,
                        "corruption": t.corruption,
                        "severity": t.severity,
                        "pred": t.predicted,
                        "corrupted_pred": t.corrupted_pred,
                    }
                    for t in view.flips
                ],
            }
        }

    def pictures(self, view: RobustnessView) -> PictureRequest:
        content = view.found
        by_name = content.by_corruption()
        return PictureRequest(
            charts={
                "robustness": lambda: figures.robustness_figure(
                    {name: [(r.severity, r.accuracy) for r in results] for name, results in by_name.items()},
                    content.clean_accuracy,
                )
            },
            thumbs={t.thumb for t in view.flips},
            pictures=dict(content.pictures),
            blends=dict(content.maps),
        )
