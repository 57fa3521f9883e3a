"""Max/min-activating images: per class, the images the model finds most and least like
it and the confidently wrong ones, each with its activation map for the class."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from reportgen.analyses.cam import compute_cam
from reportgen.analyses.galleries import class_galleries, label_galleries
from reportgen.errors import UserError
from reportgen.models import ModelAdapter, SplitModel
from reportgen.report import PictureRequest, Section
from reportgen.sections.base import Shared, load_pixels, overlay_key, small_map, thumb_key
from reportgen.sections.maps import cam_model


@dataclass
class GalleryTile:
    file: str
    thumb: str
    overlay: str | None  # overlay thumbnail key, None when no map could be computed or it is blank
    score: float  # probability of the gallery's class
    predicted: str
    truth: str | None
    correct: bool | None
    blank: bool = False  # a map was computed and is zero everywhere (shown as such, not as an overlay)


@dataclass
class ClassGallery:
    index: int
    name: str
    max: list[GalleryTile]
    min: list[GalleryTile]
    wrong: list[GalleryTile]


@dataclass
class Galleries:
    """Max/min-activating and confidently-wrong images per class, with CAM overlays."""

    method: str | None  # CAM method, None when no map could be made
    layer: str | None
    classes: list[ClassGallery]
    size: int
    note: str = ""
    maps: dict[str, np.ndarray] = field(default_factory=dict)  # overlay key -> (H, W) map
    score_source: str = "logits"  # which score the maps explain (see ``pipeline.class_scores``)
    blank: int = 0  # maps that came out zero everywhere

    def explained(self) -> str:
        """The report's sentence on what the maps explain and the galleries are ranked by."""
        return explained_scores(self.score_source)


def explained_scores(source: str) -> str:
    """One sentence for the report: which score the maps explain, what ranks the galleries."""
    if source == "logits before softmax":
        return (
            "The maps explain each class's logit, taken before the model's final softmax (a saturated "
            "softmax has no gradient, so maps of the probability would be blank exactly where the model "
            "is surest); galleries are ranked by the log-odds computed from the logits (the logit margin, for two "
            "classes), so images at probability 1.0 are still ordered by how far ahead the class is."
        )
    if source == "logits before sigmoid":
        return (
            "The maps explain each label's logit, taken before the model's final sigmoid (a saturated "
            "sigmoid has no gradient, so maps of the probability would be blank exactly where the model is "
            "surest); galleries are ranked by that logit, the label's log-odds, so images at probability 1.0 "
            "are still ordered."
        )
    if source == "logits":
        return (
            "The maps explain each class's logit (the model's output); galleries are ranked by the "
            "log-odds computed from the logits, so images at probability 1.0 are still ordered."
        )
    return (
        "The model outputs probabilities and its graph has no final softmax to cut before, so the maps "
        "explain the probability itself: where the model is sure, its gradient vanishes and maps can "
        "be blank, and images at probability 1.0 tie (ties keep file order)."
    )


def _draw_maps(
    shared: Shared,
    adapter: ModelAdapter,
    split: SplitModel,
    pairs: list[tuple[int, int]],
    maps: dict[str, np.ndarray],
    keys: dict[tuple[int, int], str],
    blank: set[tuple[int, int]],
) -> None:
    """The activation map of every (row, class) pair the galleries show, into ``maps``
    (by overlay key) and ``keys``; pairs whose map is zero everywhere go to ``blank``."""
    cfg, clock, features, pre = shared.cfg, shared.clock, shared.features, shared.pre
    with clock("cam"), clock.bar(f"{cfg.cam}", len(pairs), "map") as bar:
        pixels = load_pixels(shared.dataset, sorted({features.files[r] for r, _ in pairs}), pre)
        todo = [(r, c) for r, c in pairs if features.files[r] in pixels]
        bar.update(len(pairs) - len(todo))
        run_model = lambda x: adapter.extract(x, [])[0]  # noqa: E731 - Score-CAM's forward pass
        for start in range(0, len(todo), cfg.batch_size):
            chunk = todo[start : start + cfg.batch_size]
            batch = np.stack([pixels[features.files[r]] for r, _ in chunk])
            cams = compute_cam(
                cfg.cam,
                split,
                batch,
                np.array([c for _, c in chunk]),
                pre.size,
                run_model=run_model,
                batch_size=cfg.batch_size,
                channels_last=pre.channels_last,
            )
            for (r, c), cam in zip(chunk, cams.maps, strict=True):
                if not cam.any():
                    # An all-zero map is no picture of where the evidence lies:
                    # the tile says so instead of showing an empty overlay.
                    blank.add((r, c))
                    continue
                key = overlay_key("cam", c, features.files[r])
                keys[(r, c)] = key
                maps[key] = small_map(cam)
            bar.update(len(chunk))


def gallery_maps(shared: Shared) -> Galleries | None:
    """The galleries and their maps (None with ``--gallery-size 0``); the explorer shows
    the same maps for the points that have one."""
    cfg, features, probs, truth, pred = shared.cfg, shared.features, shared.probs, shared.truth, shared.pred
    if cfg.gallery_size <= 0:
        return None
    model = shared.once(cam_model)
    note = model.note
    classes = shared.class_map.classes
    folder = shared.result.dataset.folder_classes
    multi = shared.multilabel
    if multi is not None:
        galleries = label_galleries(shared.log_odds, multi.truth, multi.known, multi.predicted, cfg.gallery_size)
    else:
        galleries = class_galleries(shared.log_odds, truth, cfg.gallery_size, labeled=bool((truth >= 0).any()))
    pairs = sorted({(row, g.cls) for g in galleries for row in (*g.max, *g.min, *g.wrong)})
    maps: dict[str, np.ndarray] = {}
    keys: dict[tuple[int, int], str] = {}
    blank: set[tuple[int, int]] = set()
    drawn = model.split is not None
    if model.split is not None and pairs:
        try:
            _draw_maps(shared, model.adapter, model.split, pairs, maps, keys, blank)
        except UserError as exc:
            if cfg.cam_layer:
                raise
            # A graph the gradient cannot pass through: the galleries still show.
            note, drawn = f"no CAM: {exc}", False
            maps.clear()
            keys.clear()
            blank.clear()

    def tile(row: int, cls: int) -> GalleryTile:
        if multi is not None:
            return _label_tile(row, cls)
        t = int(truth[row])
        return GalleryTile(
            features.files[row],
            thumb_key(features.files[row]),
            keys.get((row, cls)),
            float(probs[row, cls]),
            classes[pred[row]],
            classes[t] if t >= 0 else (folder[features.labels[row]] if features.labels[row] >= 0 else None),
            None if t < 0 else bool(pred[row] == t),
            (row, cls) in blank,
        )

    def _label_tile(row: int, cls: int) -> GalleryTile:
        assert multi is not None
        given = [classes[j] for j in np.flatnonzero(multi.predicted[row])]
        known = bool(multi.known[row])
        true = [classes[j] for j in np.flatnonzero(multi.truth[row])] if known else None
        return GalleryTile(
            features.files[row],
            thumb_key(features.files[row]),
            keys.get((row, cls)),
            float(probs[row, cls]),
            ", ".join(given) or "no label",
            None if true is None else (", ".join(true) or "no label"),
            bool(multi.predicted[row, cls] == bool(multi.truth[row, cls])) if known else None,
            (row, cls) in blank,
        )

    return Galleries(
        cfg.cam if drawn else None,
        model.layer if drawn else None,
        [
            ClassGallery(
                g.cls,
                classes[g.cls],
                [tile(r, g.cls) for r in g.max],
                [tile(r, g.cls) for r in g.min],
                [tile(r, g.cls) for r in g.wrong],
            )
            for g in galleries
        ],
        cfg.gallery_size,
        note,
        maps,
        shared.score_source,
        len(blank),
    )


class GalleriesSection(Section):
    id = "galleries"
    title = "Max/min-activating images"

    def build(self, shared: Shared) -> Galleries | None:
        return shared.once(gallery_maps)

    def json_items(self, content: Galleries | None) -> dict[str, Any]:
        if content is None:
            return {}

        def tiles(items: list[GalleryTile]) -> list[dict[str, Any]]:
            return [{"file": t.file, "score": t.score, "pred": t.predicted, "blank_map": t.blank} for t in items]

        return {
            "galleries": {
                g.name: {"max": tiles(g.max), "min": tiles(g.min), "wrong": tiles(g.wrong)} for g in content.classes
            },
            "cam": {
                "method": content.method,
                "layer": content.layer,
                "note": content.note or None,
                "explains": content.score_source,
                "blank_maps": content.blank,
            },
        }

    def pictures(self, content: Galleries) -> PictureRequest:
        thumbs = {t.thumb for g in content.classes for t in (*g.max, *g.min, *g.wrong)}
        return PictureRequest(thumbs=thumbs, overlays=dict(content.maps))
