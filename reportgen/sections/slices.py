"""Error slices: the groups of images the model fails on, found and described
automatically (the search is ``analyses/slices.py``), each with an exemplar strip of its
errors and the mean activation map of those errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from reportgen.analyses.cam import compute_cam
from reportgen.analyses.slices import Slice, SliceSearch, find_slices
from reportgen.errors import UserError
from reportgen.models import INPUT_LAYER, LOGITS_LAYER
from reportgen.report import PictureRequest, Section
from reportgen.sections.base import Shared, load_pixels, thumb_key
from reportgen.sections.maps import cam_model, mean_blend
from reportgen.sections.metadata import metadata_values

EXEMPLARS = 8  # errors shown per slice, most confident first
MAPPED_ERRORS = 12  # errors whose maps are averaged per slice


@dataclass
class SliceView:
    """A slice as the page shows it."""

    found: Slice
    files: list[str]  # every member, in row order
    exemplars: list[tuple[str, str, str, float]]  # (file, thumb key, predicted class, its probability)
    error_files: list[str]  # the members the model gets wrong, most confident first
    blend: str | None = None  # key of the mean map over the mean image of the mapped errors
    mapped: int = 0
    blank_maps: bool = False  # every mapped error's map is zero everywhere


@dataclass
class Slices:
    search: SliceSearch
    views: list[SliceView]
    method: str | None  # CAM method of the mean maps, None when none could be drawn
    note: str = ""
    blends: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)


def slice_layers(shared: Shared) -> list[str]:
    """The penultimate layer and one earlier, half-way through the audited feature layers
    (not the pixels, not the logits, none that no distance can use)."""
    inner = [
        layer.name
        for layer in shared.features.layers
        if layer.name not in (INPUT_LAYER, LOGITS_LAYER) and layer.name not in shared.unusable
    ]
    if not inner:
        return [LOGITS_LAYER] if LOGITS_LAYER not in shared.unusable else []
    return list(dict.fromkeys([inner[(len(inner) - 1) // 2], inner[-1]]))


def slice_metadata(shared: Shared) -> dict[str, list[str | None]] | None:
    """Every audited image's metadata values as text (None where missing), per column."""
    dataset = shared.dataset
    if not dataset.metadata_columns:
        return None
    out: dict[str, list[str | None]] = {}
    for column, values in metadata_values(shared, np.arange(shared.features.n)).items():
        out[column] = [None if v is None or not str(v).strip() else str(v) for v in values]
    return out


class SlicesSection(Section):
    id = "slices"
    title = "Error slices"

    def build(self, shared: Shared) -> Slices | None:
        if shared.metrics is None:
            return None
        names = slice_layers(shared)
        features = shared.features
        if not names:
            return None
        with shared.clock("slices"):
            search = find_slices(
                [features.arrays[n] for n in names],
                names,
                shared.truth,
                shared.pred,
                shared.class_map.classes,
                files=features.files,
                image_stats=features.image_stats,
                metadata=slice_metadata(shared),
                seed=shared.cfg.seed,
            )
        views = []
        for s in search.slices:
            wrong = s.rows[shared.pred[s.rows] != shared.truth[s.rows]]
            confidence = shared.probs[wrong, shared.pred[wrong]]
            order = wrong[np.argsort(-confidence, kind="stable")]
            views.append(
                SliceView(
                    s,
                    [features.files[r] for r in s.rows],
                    [
                        (
                            features.files[r],
                            thumb_key(features.files[r]),
                            shared.class_map.classes[shared.pred[r]],
                            float(shared.probs[r, shared.pred[r]]),
                        )
                        for r in order[:EXEMPLARS]
                    ],
                    [features.files[r] for r in order],
                )
            )
        out = Slices(search, views, None)
        if views and shared.cfg.gallery_size > 0:
            _mean_maps(shared, out)
        return out

    def count(self, content: Slices) -> int | None:
        return len(content.views)

    def json_items(self, content: Slices | None) -> dict[str, Any]:
        if content is None:
            return {"slices": None, "slice_search": None}
        search = content.search
        return {
            "slices": [
                {
                    "id": i + 1,
                    "size": v.found.size,
                    "errors": v.found.errors,
                    "accuracy": v.found.accuracy,
                    "ci": list(v.found.ci),
                    "overall_accuracy": search.overall_accuracy,
                    "excess_errors": v.found.excess_errors,
                    "held_out": {
                        "size": v.found.held_out_size,
                        "accuracy": v.found.held_out_accuracy,
                        "p_value": v.found.p_value,
                    },
                    "description": v.found.description(),
                    "classes": [
                        {"name": c.name, "count": c.count, "errors": c.errors, "rest_share": c.rest_share}
                        for c in v.found.classes
                    ],
                    "confusion": None
                    if v.found.confusion is None
                    else dict(zip(("label", "pred", "count"), v.found.confusion, strict=True)),
                    "properties": [
                        {"name": p.name, "slice_mean": p.slice_mean, "rest_mean": p.rest_mean, "effect": p.effect}
                        for p in v.found.properties
                    ],
                    "exemplars": [e[0] for e in v.exemplars],
                    "files": v.files,
                }
                for i, v in enumerate(content.views)
            ],
            "slice_search": {
                "layers": search.layers,
                "labeled": search.labeled,
                "components": search.components,
                "min_size": search.min_size,
                "tested": search.tested,
                "dropped_overlapping": search.dropped_overlapping,
                "image_properties": search.properties,
                "note": search.note or None,
                "map_method": content.method,
            },
        }

    def pictures(self, content: Slices) -> PictureRequest:
        return PictureRequest(thumbs={e[1] for v in content.views for e in v.exemplars}, blends=dict(content.blends))


def _mean_maps(shared: Shared, out: Slices) -> None:
    """Each slice's mean map (of the predicted class) over its most confident errors."""
    model = shared.once(cam_model)
    if model.split is None:
        out.note = model.note
        return
    cfg, pre = shared.cfg, shared.pre
    run_model = lambda x: model.adapter.extract(x, [])[0]  # noqa: E731 - Score-CAM's forward pass
    picks = {i: v.error_files[:MAPPED_ERRORS] for i, v in enumerate(out.views)}
    row_of = {f: r for v in out.views for r, f in zip(v.found.rows, v.files, strict=True)}
    try:
        with shared.clock("slices"):
            pixels = load_pixels(shared.dataset, sorted({f for fs in picks.values() for f in fs}), pre)
            for i, files in picks.items():
                files = [f for f in files if f in pixels]
                if not files:
                    continue
                batch = np.stack([pixels[f] for f in files])
                targets = np.array([shared.pred[row_of[f]] for f in files])
                maps = compute_cam(
                    cfg.cam, model.split, batch, targets, pre.size,
                    run_model=run_model, batch_size=cfg.batch_size, channels_last=pre.channels_last,
                ).maps  # fmt: skip
                out.views[i].mapped = len(files)
                if not maps.any():
                    out.views[i].blank_maps = True
                    continue
                key = f"slice:{i + 1}"
                out.blends[key] = mean_blend([pixels[f] for f in files], maps, pre)
                out.views[i].blend = key
        out.method = cfg.cam
    except UserError as exc:
        if cfg.cam_layer:
            raise
        out.note = f"no maps: {exc}"
        out.blends.clear()
