"""The channel view: which channels of a layer vary most across the images, and the
images that excite each of them most (the deepvis / Keras "what does this filter
respond to" view, from real images)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class ChannelPick:
    channel: int
    variance: float  # variance over the images of the channel's mean activation
    rows: list[int]  # images with the highest mean activation, highest first
    activations: list[float]


def top_channels(pooled: np.ndarray, n_channels: int, n_images: int) -> list[ChannelPick]:
    """The ``n_channels`` channels with the largest variance of their pooled activation,
    each with its ``n_images`` most activating images (ties by row)."""
    if pooled.ndim != 2 or pooled.shape[0] == 0 or n_channels <= 0:
        return []
    variance = pooled.astype(np.float64).var(axis=0)
    order = np.lexsort((np.arange(len(variance)), -variance))[:n_channels]
    picks = []
    rows = np.arange(pooled.shape[0])
    for ch in order:
        values = pooled[:, ch]
        best = np.lexsort((rows, -values))[:n_images]
        picks.append(
            ChannelPick(int(ch), float(variance[ch]), [int(r) for r in best], [float(values[r]) for r in best])
        )
    return picks
