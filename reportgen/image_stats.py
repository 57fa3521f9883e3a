"""Measurable properties of each audited picture, taken while it is decoded for the model
(the error slices are described by them; see ``analyses/slices.py``).

The pixel properties are read from the picture at the model's input size, before
normalisation: what the model sees, at a cost of a fraction of a millisecond per image.
The size and EXIF presence are the file's own.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class SourceFacts:
    """What the file says about the picture before any resizing: its size as shown (EXIF
    rotation applied) and whether it carries EXIF data."""

    width: int
    height: int
    exif: bool


# Column order of the stored (N, len(PROPERTIES)) float32 array (``image_stats.npy``).
PROPERTIES = ("brightness", "contrast", "colourfulness", "sharpness", "width", "height", "exif")


def image_stats(pixels: np.ndarray, facts: SourceFacts) -> np.ndarray:
    """The properties of one picture: ``pixels`` is (H, W, C) uint8 (C = 1 or 3).

    brightness and contrast are the mean and standard deviation of the luminance (Rec. 601
    weights) in [0, 1]; colourfulness is Hasler and Süsstrunk's (2003) measure on the
    0-1 scale (0 for grey pictures); sharpness is the mean absolute Laplacian of the
    luminance (a blurred picture has small second differences).
    """
    rgb = pixels.astype(np.float32) * np.float32(1 / 255)
    if rgb.ndim == 2:
        rgb = rgb[:, :, None]
    if rgb.shape[2] >= 3:
        r, g, b = rgb[:, :, 0], rgb[:, :, 1], rgb[:, :, 2]
        luma = 0.299 * r + 0.587 * g + 0.114 * b
        rg = r - g
        yb = 0.5 * (r + g) - b
        colourful = float(np.hypot(rg.std(), yb.std()) + 0.3 * np.hypot(rg.mean(), yb.mean()))
    else:
        luma = rgb[:, :, 0]
        colourful = 0.0
    if luma.shape[0] >= 3 and luma.shape[1] >= 3:
        lap = 4 * luma[1:-1, 1:-1] - luma[:-2, 1:-1] - luma[2:, 1:-1] - luma[1:-1, :-2] - luma[1:-1, 2:]
        sharp = float(np.abs(lap).mean())
    else:
        sharp = 0.0
    return np.array(
        [luma.mean(), luma.std(), colourful, sharp, facts.width, facts.height, float(facts.exif)], np.float32
    )
