"""What the units respond to (``--units``): for chosen channels and every class, the input
the model would most like to see, beside the real images that excite the unit most."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from reportgen.analyses.channels import top_channels
from reportgen.analyses.visualize import Prior, guided_projection, synthesize, unit_evaluator
from reportgen.errors import UserError
from reportgen.models import CHW, INPUT_LAYER, LOGITS_LAYER, channel_means
from reportgen.report import PictureRequest, Section
from reportgen.sections.base import Shared, load_pixels, thumb_key

# Images shown beside each synthesised unit: its top activators, as deepvis shows them;
# four keep a row of the section within the page's width.
UNIT_IMAGES = 4


@dataclass
class UnitTile:
    """A unit: its synthesised input, and its top real images with their projections."""

    layer: str
    index: int
    name: str  # "channel 12" or the class name
    value: float  # on its synthesised input: mean activation, or probability for a class
    mean_value: float  # the same measure averaged over the audited images
    picture: str  # picture key of the synthesised input
    top: list[tuple[str, str, str | None]]  # (file, thumbnail key, projection picture key)
    responded: bool = True  # False: no run beat its start (for a class: made the class win)
    runs: int = 1  # seeded runs it took


@dataclass
class UnitViews:
    """Activation maximisation and guided backpropagation for chosen units."""

    route: str
    steps: int
    seed: int
    groups: list[tuple[str, list[UnitTile]]]  # (heading, units)
    note: str = ""
    pictures: dict[str, np.ndarray] = field(default_factory=dict)  # key -> (H, W, C) in [0, 1]


class UnitsSection(Section):
    id = "units"
    title = "What the units respond to"

    def build(self, shared: Shared) -> UnitViews | None:
        if shared.cfg.units <= 0:
            return None
        with shared.clock("units"):
            return synthesised_units(shared)

    def json_items(self, content: UnitViews | None) -> dict[str, Any]:
        if content is None:
            return {}
        return {
            "units": {
                "route": content.route or None,
                "steps": content.steps,
                "seed": content.seed,
                "note": content.note or None,
                "groups": [
                    {
                        "heading": heading,
                        "units": [
                            {
                                "layer": t.layer,
                                "index": t.index,
                                "name": t.name,
                                "synthesized_value": t.value,
                                "mean_value": t.mean_value,
                                "responded": t.responded,
                                "runs": t.runs,
                                "top": [f for f, _, _ in t.top],
                            }
                            for t in tiles
                        ],
                    }
                    for heading, tiles in content.groups
                ],
            }
        }

    def pictures(self, content: UnitViews) -> PictureRequest:
        thumbs = {thumb for _, tiles in content.groups for t in tiles for _, thumb, _ in t.top}
        return PictureRequest(thumbs=thumbs, pictures=dict(content.pictures))


@dataclass
class UnitPlan:
    """One group of units to synthesise: a layer's strongest channels, or the classes."""

    heading: str
    layer: str
    units: list[int]  # channel or output indices
    names: list[str]  # as the report labels them
    top_rows: list[list[int]]  # per unit, the rows of its top-activating images
    means: list[float]  # per unit, its mean activation (probability for classes) over the set


def synthesised_units(shared: Shared) -> UnitViews:
    """Synthesised inputs for the most variable channels of the last two spatial layers
    and for the classes, each beside its top real images and their guided projections."""
    cfg, features, probs, pre = shared.cfg, shared.features, shared.probs, shared.pre

    adapter = shared.handle.prepared(pre.size)
    try:
        model = adapter.differentiable()
    except UserError as exc:
        return UnitViews("", cfg.unit_steps, cfg.seed, [], str(exc))
    prior = Prior(steps=cfg.unit_steps)
    section = UnitViews(model.route, cfg.unit_steps, cfg.seed, [])
    n_top = UNIT_IMAGES
    # Channel units are read on the channel axis of (C, H, W) maps; channels-last maps and
    # token sequences get class units only.
    spatial = [
        layer
        for layer in features.layers
        if layer.spatial and layer.layout == CHW and layer.name not in (INPUT_LAYER, LOGITS_LAYER)
    ][-2:]
    plans: list[UnitPlan] = []
    for layer in spatial:
        per_channel = channel_means(features.arrays[layer.name], layer)
        picks = top_channels(per_channel, cfg.units, n_top)
        means = per_channel.mean(axis=0)
        plans.append(
            UnitPlan(
                f"Channels of {layer.name}",
                layer.name,
                [p.channel for p in picks],
                [f"channel {p.channel}" for p in picks],
                [p.rows for p in picks],
                [float(means[p.channel]) for p in picks],
            )
        )
    k = len(shared.class_map.classes)
    truth = shared.truth
    support = np.bincount(truth[truth >= 0], minlength=k) if (truth >= 0).any() else np.zeros(k, int)
    classes = sorted(range(k), key=lambda c: (-support[c], c))[:20] if k > 20 else list(range(k))
    # Ranked by log-odds, not probability: a confident model has many images at p = 1.0.
    rows = [[int(r) for r in np.argsort(-shared.log_odds[:, c], kind="stable")[:n_top]] for c in classes]
    plans.append(
        UnitPlan(
            "Classes",
            LOGITS_LAYER,
            classes,
            [shared.class_map.classes[c] for c in classes],
            rows,
            [float(probs[:, c].mean()) for c in classes],
        )
    )
    needed = sorted({features.files[r] for plan in plans for group in plan.top_rows for r in group})
    pixels = load_pixels(shared.dataset, needed, pre)
    with shared.clock.bar("feature visualisation", prior.steps * sum(1 for plan in plans if plan.units), "step") as bar:
        for plan in plans:
            heading, layer, units, names, top_rows, means = (
                plan.heading,
                plan.layer,
                plan.units,
                plan.names,
                plan.top_rows,
                plan.means,
            )
            if not units:
                continue
            bar.set_postfix_str(layer, refresh=False)
            synth = synthesize(
                model,
                layer,
                np.array(units),
                pre.size,
                pre.channels,
                pre.mean,
                pre.std,
                channels_last=pre.channels_last,
                prior=prior,
                seed=cfg.seed,
                evaluate=unit_evaluator(adapter, layer),
                on_step=bar.update,
            )
            tiles = []
            for i, (unit, name, group, mean) in enumerate(zip(units, names, top_rows, means, strict=True)):
                key = f"unit:{layer}:{unit}"
                section.pictures[key] = synth.images[i]
                files = [features.files[r] for r in group if features.files[r] in pixels]
                projections: list[str | None] = [None] * len(files)
                if files:
                    proj = guided_projection(
                        model, np.stack([pixels[f] for f in files]), layer, np.full(len(files), unit), pre.channels_last
                    )
                    projections = []
                    for f, image in zip(files, proj, strict=True):
                        pkey = f"gbp:{layer}:{unit}:{f}"
                        section.pictures[pkey] = image
                        projections.append(pkey)
                top = [(f, thumb_key(f), pk) for f, pk in zip(files, projections, strict=True)]
                # Classes are shown as probabilities (the synthesis maximises the log-probability).
                value = float(np.exp(synth.values[i])) if layer == LOGITS_LAYER else float(synth.values[i])
                tiles.append(
                    UnitTile(
                        layer, int(unit), name, value, mean, key, top, bool(synth.responded[i]), int(synth.runs[i])
                    )
                )
            section.groups.append((heading, tiles))
    return section
