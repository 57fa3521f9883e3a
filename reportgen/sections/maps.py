"""The model cut for the audit's activation maps, opened once for the units that draw
them (galleries, possible shortcuts, error slices, channel view), and the mean map those
units show over a group of images."""

from __future__ import annotations

import numpy as np

from reportgen.data import Preprocess
from reportgen.map_model import MapModel, open_for_maps
from reportgen.sections.base import Shared


def cam_model(shared: Shared) -> MapModel:
    """The model prepared at the audit's input size and cut at ``--cam-layer`` (or the
    default CAM layer); without a layer to explain, a ``MapModel`` whose note says why.
    A ``--cam-layer`` that cannot be explained stops the audit: the user asked for it."""
    cfg = shared.cfg
    with shared.clock("load model"):
        return open_for_maps(shared.handle, pre=shared.pre, layer=cfg.cam_layer, strict=False)


def to_image(x: np.ndarray, pre: Preprocess) -> np.ndarray:
    """A model input back to a [0, 1] (H, W, C) picture."""
    hwc = x if pre.channels_last else np.moveaxis(x, 0, -1)
    mean = np.resize(np.asarray(pre.mean, np.float32), pre.channels)
    std = np.resize(np.asarray(pre.std, np.float32), pre.channels)
    return np.clip(hwc * std + mean, 0, 1)


def mean_blend(inputs: list[np.ndarray], maps: np.ndarray, pre: Preprocess) -> tuple[np.ndarray, np.ndarray]:
    """The mean picture of model inputs and the mean of their maps: each map first scaled
    to sum 1 (every image weighs the same; a blank map places nothing), the mean then to
    peak 1."""
    total = maps.sum(axis=(1, 2), keepdims=True)
    mean_map = np.divide(maps, total, out=np.zeros_like(maps), where=total > 0).mean(axis=0)
    peak = mean_map.max()
    mean_image = np.mean([to_image(x, pre) for x in inputs], axis=0)
    return mean_image, (mean_map / peak if peak > 0 else mean_map)
