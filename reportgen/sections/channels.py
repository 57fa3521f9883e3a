"""Channel view: the channels of the CAM layer that vary most across the images, each
with the images that excite it most and where in them it fires."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from reportgen.analyses.cam import resize_bilinear
from reportgen.analyses.channels import top_channels
from reportgen.models import channel_means
from reportgen.report import PictureRequest, Section
from reportgen.sections.base import Shared, load_pixels, overlay_key, small_map, thumb_key
from reportgen.sections.maps import cam_model


@dataclass
class ChannelTile:
    file: str
    thumb: str
    overlay: str | None
    activation: float


@dataclass
class ChannelEntry:
    channel: int
    variance: float
    tiles: list[ChannelTile]


@dataclass
class Channels:
    layer: str
    channels: list[ChannelEntry]
    note: str = ""
    maps: dict[str, np.ndarray] = field(default_factory=dict)


class ChannelsSection(Section):
    id = "channels"
    title = "Channel view"

    def build(self, shared: Shared) -> Channels | None:
        cfg, features, pre = shared.cfg, shared.features, shared.pre
        if cfg.channels <= 0:
            return None
        model = shared.once(cam_model)
        layer, split = model.layer, model.split
        if split is None or layer is None:
            return None
        if layer not in features.arrays:
            return Channels(
                layer, [], f"the layer {layer} is not among the audited layers; add it to --layers to see its channels"
            )
        with shared.clock("channels"):
            info = next(item for item in features.layers if item.name == layer)
            picks = top_channels(channel_means(features.arrays[layer], info), cfg.channels, cfg.channel_images)
            rows = sorted({r for p in picks for r in p.rows})
            pixels = load_pixels(shared.dataset, [features.files[r] for r in rows], pre)
            ok = [r for r in rows if features.files[r] in pixels]
            activation = {}
            for start in range(0, len(ok), cfg.batch_size):
                chunk = ok[start : start + cfg.batch_size]
                a, _ = split.body(np.stack([pixels[features.files[r]] for r in chunk]))
                for r, maps_r in zip(chunk, a, strict=True):
                    activation[r] = maps_r
            entries = []
            maps: dict[str, np.ndarray] = {}
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
                        maps[key] = small_map(resize_bilinear(m[None], pre.size)[0])
                    tiles.append(ChannelTile(features.files[r], thumb_key(features.files[r]), key, value))
                entries.append(ChannelEntry(p.channel, p.variance, tiles))
        return Channels(layer, entries, "", maps)

    def json_items(self, content: Channels | None) -> dict[str, Any]:
        if content is None:
            return {}
        return {
            "channels": {
                "layer": content.layer,
                "note": content.note or None,
                "items": [
                    {
                        "channel": c.channel,
                        "variance": c.variance,
                        "top": [{"file": t.file, "activation": t.activation} for t in c.tiles],
                    }
                    for c in content.channels
                ],
            }
        }

    def pictures(self, content: Channels) -> PictureRequest:
        return PictureRequest(thumbs={t.thumb for c in content.channels for t in c.tiles}, overlays=dict(content.maps))
