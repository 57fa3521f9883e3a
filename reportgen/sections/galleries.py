"""Max/min-activating galleries with CAM overlays, and the channel view."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from reportgen.analyses.cam import compute_cam, resize_bilinear
from reportgen.analyses.channels import top_channels
from reportgen.analyses.galleries import class_galleries
from reportgen.contents import (
    ChannelEntry,
    ChannelsSection,
    ChannelTile,
    ClassGallery,
    GalleriesSection,
    GalleryTile,
    ShortcutsSection,
)
from reportgen.errors import UserError
from reportgen.models import ModelAdapter, SplitModel, last_spatial_layer
from reportgen.models.base import channel_means
from reportgen.sections import SectionInputs, load_pixels, overlay_key, small_map, thumb_key
from reportgen.sections import shortcuts as shortcuts_section


def _draw_maps(
    inputs: SectionInputs,
    adapter: ModelAdapter,
    split: SplitModel,
    pairs: list[tuple[int, int]],
    maps: dict[str, np.ndarray],
    keys: dict[tuple[int, int], str],
    blank: set[tuple[int, int]],
) -> None:
    """The activation map of every (row, class) pair the galleries show, into ``maps``
    (by overlay key) and ``keys``; pairs whose map is zero everywhere go to ``blank``."""
    cfg, clock, features, dataset, pre = inputs.cfg, inputs.clock, inputs.features, inputs.dataset, inputs.pre
    with clock("cam"), clock.bar(f"{cfg.cam}", len(pairs), "map") as bar:
        pixels = load_pixels(dataset, sorted({features.files[r] for r, _ in pairs}), pre)
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


@dataclass
class GallerySections:
    """What :func:`build` makes (each ``None`` where the options or the model leave it out)."""

    galleries: GalleriesSection | None = None
    shortcuts: ShortcutsSection | None = None
    channels: ChannelsSection | None = None


def build(inputs: SectionInputs) -> GallerySections:
    """Per-class galleries with CAM overlays, the shortcut test, and the channel view of
    the CAM layer."""
    cfg, result, features, clock = inputs.cfg, inputs.result, inputs.features, inputs.clock
    probs, truth, pred, pre, dataset = inputs.probs, inputs.truth, inputs.pred, inputs.pre, inputs.dataset

    out = GallerySections()
    if cfg.gallery_size <= 0 and cfg.channels <= 0 and cfg.shortcut_images <= 0:
        return out
    with clock("load model"):
        adapter = inputs.handle.prepared(pre.size)
    layer = adapter.resolve(cfg.cam_layer) if cfg.cam_layer else last_spatial_layer(adapter.layers())
    split = None
    note = ""
    if layer is None:
        note = "the model has no tensor with spatial extent, so no activation map can be drawn"
    else:
        try:
            split = adapter.split(layer)
        except UserError as exc:
            if cfg.cam_layer:
                raise
            note = f"no CAM: {exc}"
    classes = inputs.class_map.classes
    folder = result.dataset.folder_classes

    def tile(row: int, cls: int, keys: dict[tuple[int, int], str]) -> GalleryTile:
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

    if cfg.gallery_size > 0:
        galleries = class_galleries(inputs.log_odds, truth, cfg.gallery_size, labeled=bool((truth >= 0).any()))
        pairs = sorted({(row, g.cls) for g in galleries for row in (*g.max, *g.min, *g.wrong)})
        maps: dict[str, np.ndarray] = {}
        keys: dict[tuple[int, int], str] = {}
        blank: set[tuple[int, int]] = set()
        drawn = split is not None
        if split is not None and pairs:
            try:
                _draw_maps(inputs, adapter, split, pairs, maps, keys, blank)
            except UserError as exc:
                if cfg.cam_layer:
                    raise
                # A graph the gradient cannot pass through: the galleries still show.
                note, drawn = f"no CAM: {exc}", False
                maps.clear()
                keys.clear()
                blank.clear()
        out.galleries = GalleriesSection(
            cfg.cam if drawn else None,
            layer if drawn else None,
            [
                ClassGallery(
                    g.cls,
                    classes[g.cls],
                    [tile(r, g.cls, keys) for r in g.max],
                    [tile(r, g.cls, keys) for r in g.min],
                    [tile(r, g.cls, keys) for r in g.wrong],
                )
                for g in galleries
            ],
            cfg.gallery_size,
            note,
            maps,
            inputs.score_source,
            len(blank),
        )

    if cfg.shortcut_images > 0:
        if split is None:
            out.shortcuts = ShortcutsSection([], 0, 0, cfg.shortcut_images, None, note or "no maps")
        else:
            try:
                out.shortcuts = shortcuts_section.build(inputs, adapter, split)
            except UserError as exc:
                if cfg.cam_layer:
                    raise
                out.shortcuts = ShortcutsSection([], 0, 0, cfg.shortcut_images, None, f"no maps: {exc}")

    if cfg.channels > 0 and split is not None:
        if layer not in features.arrays:
            out.channels = ChannelsSection(
                layer, [], f"the layer {layer} is not among the audited layers; add it to --layers to see its channels"
            )
            return out
        with clock("channels"):
            info = next(item for item in features.layers if item.name == layer)
            picks = top_channels(channel_means(features.arrays[layer], info), cfg.channels, cfg.channel_images)
            rows = sorted({r for p in picks for r in p.rows})
            pixels = load_pixels(dataset, [features.files[r] for r in rows], pre)
            ok = [r for r in rows if features.files[r] in pixels]
            activation = {}
            for start in range(0, len(ok), cfg.batch_size):
                chunk = ok[start : start + cfg.batch_size]
                a, _ = split.body(np.stack([pixels[features.files[r]] for r in chunk]))
                for r, maps_r in zip(chunk, a, strict=True):
                    activation[r] = maps_r
            entries = []
            ch_maps: dict[str, np.ndarray] = {}
            for p in picks:
                stack = [activation[r][p.channel] for r in p.rows if r in activation]
                # One scale per channel: its strongest response over its top images is 1.
                top = max((float(np.max(m)) for m in stack), default=0.0)
                tiles = []
                for r, value in zip(p.rows, p.activations, strict=True):
                    key = None
                    if r in activation and top > 0:
                        key = overlay_key("ch", p.channel, features.files[r])
                        m = np.clip(activation[r][p.channel] / top, 0, 1)
                        ch_maps[key] = small_map(resize_bilinear(m[None], pre.size)[0])
                    tiles.append(ChannelTile(features.files[r], thumb_key(features.files[r]), key, value))
                entries.append(ChannelEntry(p.channel, p.variance, tiles))
        out.channels = ChannelsSection(layer, entries, "", ch_maps)
    return out
