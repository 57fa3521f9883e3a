"""Robustness to everyday corruptions: six of the ImageNet-C recipes (Hendrycks and
Dietterich 2019) at three severities, applied to the pictures at the model's input size
(8-bit, before normalisation), and what they cost the model.

The recipes follow the benchmark's code (``imagecorruptions``), at its severities 1, 3
and 5, with sizes in pixels scaled from its 224-pixel images to the model's input:

==============  ===============================================  =====================
brightness      HSV value + c (hue and saturation kept)          c = 0.1, 0.3, 0.5
contrast        (x - mean per channel) * c + mean                c = 0.4, 0.2, 0.05
gaussian noise  x + N(0, c), per pixel and channel, seeded       c = 0.08, 0.18, 0.38
defocus blur    a disk of radius r, then a Gaussian of sigma s   (r, s) = (3, 0.1), (6, 0.5), (10, 0.5) px at 224
jpeg            saved as JPEG at quality q and decoded again     q = 25, 15, 7
pixelate        box-shrunk to c of the side, box-enlarged back   c = 0.6, 0.4, 0.25
==============  ===============================================  =====================

Values are in [0, 1] until the end, then rounded to 8 bits (as the benchmark saves them).
"""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
from PIL import Image
from scipy import ndimage, signal

SEVERITIES = (1, 3, 5)  # ImageNet-C's levels kept: the mildest, the middle, the worst
REFERENCE_SIDE = 224  # the side ImageNet-C's pixel sizes are given for


def _hwc(x: np.ndarray) -> np.ndarray:
    return x[:, :, None] if x.ndim == 2 else x


def brightness(x: np.ndarray, c: float) -> np.ndarray:
    """HSV value raised by ``c``: every channel scaled by the new value over the old (a
    black pixel becomes grey at the new value), so hue and saturation stay."""
    x = _hwc(x)
    v = x.max(axis=2, keepdims=True)
    new = np.minimum(v + c, 1.0)
    scaled = np.divide(x * new, v, out=np.broadcast_to(new, x.shape).copy(), where=v > 0)
    return np.clip(scaled, 0.0, 1.0)


def contrast(x: np.ndarray, c: float) -> np.ndarray:
    x = _hwc(x)
    mean = x.mean(axis=(0, 1), keepdims=True)
    return np.clip((x - mean) * c + mean, 0.0, 1.0)


def gaussian_noise(x: np.ndarray, c: float, rng: np.random.Generator) -> np.ndarray:
    x = _hwc(x)
    return np.clip(x + rng.normal(0.0, c, size=x.shape), 0.0, 1.0)


def disk_kernel(radius: float, alias_blur: float) -> np.ndarray:
    """ImageNet-C's defocus kernel: a disk of ``radius`` px (sum 1), softened by a Gaussian
    of sigma ``alias_blur``."""
    side = max(8, int(np.ceil(radius)))
    grid = np.arange(-side, side + 1)
    xx, yy = np.meshgrid(grid, grid)
    disk = (xx**2 + yy**2 <= radius**2).astype(np.float64)
    disk /= disk.sum()
    return ndimage.gaussian_filter(disk, alias_blur) if alias_blur > 0 else disk


def defocus_blur(x: np.ndarray, radius: float, alias_blur: float) -> np.ndarray:
    """The disk kernel convolved with the picture, its edges mirrored (``scipy.ndimage``'s
    "reflect"), by FFT: a 21-pixel disk at 224 px costs 2 ms instead of 70."""
    x = _hwc(x)
    kernel = disk_kernel(radius, alias_blur)
    half = kernel.shape[0] // 2
    padded = np.pad(x, ((half, half), (half, half), (0, 0)), mode="symmetric")
    out = signal.fftconvolve(padded, kernel[:, :, None], mode="valid", axes=(0, 1))
    return np.clip(out, 0.0, 1.0)


def jpeg(x: np.ndarray, quality: int) -> np.ndarray:
    x = _hwc(x)
    img = Image.fromarray(_to_8bit(x)[:, :, 0] if x.shape[2] == 1 else _to_8bit(x))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=quality)
    return _hwc(np.asarray(Image.open(buf), np.float64) / 255.0)


def pixelate(x: np.ndarray, c: float) -> np.ndarray:
    x = _hwc(x)
    h, w = x.shape[:2]
    img = Image.fromarray(_to_8bit(x)[:, :, 0] if x.shape[2] == 1 else _to_8bit(x))
    small = img.resize((max(1, int(w * c)), max(1, int(h * c))), Image.Resampling.BOX)
    return _hwc(np.asarray(small.resize((w, h), Image.Resampling.BOX), np.float64) / 255.0)


def _to_8bit(x: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(x * 255.0), 0, 255).astype(np.uint8)


@dataclass(frozen=True)
class Corruption:
    name: str
    severity: int  # ImageNet-C's level (1 mildest, 5 worst)
    apply: Callable[[np.ndarray, np.random.Generator, int], np.ndarray]  # ([0,1] HWC, rng, side) -> [0,1] HWC


def _scaled(side: int, px: float) -> float:
    return px * side / REFERENCE_SIDE


CORRUPTIONS: tuple[Corruption, ...] = tuple(
    [
        Corruption("brightness", s, lambda x, r, n, c=c: brightness(x, c))
        for s, c in zip(SEVERITIES, (0.1, 0.3, 0.5), strict=True)
    ]
    + [
        Corruption("contrast", s, lambda x, r, n, c=c: contrast(x, c))
        for s, c in zip(SEVERITIES, (0.4, 0.2, 0.05), strict=True)
    ]
    + [
        Corruption("gaussian noise", s, lambda x, r, n, c=c: gaussian_noise(x, c, r))
        for s, c in zip(SEVERITIES, (0.08, 0.18, 0.38), strict=True)
    ]
    + [
        Corruption("defocus blur", s, lambda x, r, n, c=c: defocus_blur(x, _scaled(n, c[0]), _scaled(n, c[1])))
        for s, c in zip(SEVERITIES, ((3, 0.1), (6, 0.5), (10, 0.5)), strict=True)
    ]
    + [Corruption("jpeg", s, lambda x, r, n, q=q: jpeg(x, q)) for s, q in zip(SEVERITIES, (25, 15, 7), strict=True)]
    + [
        Corruption("pixelate", s, lambda x, r, n, c=c: pixelate(x, c))
        for s, c in zip(SEVERITIES, (0.6, 0.4, 0.25), strict=True)
    ]
)


def corrupt(picture: np.ndarray, corruption: Corruption, seed: int) -> np.ndarray:
    """An 8-bit picture (H, W) or (H, W, C) with ``corruption`` applied, 8-bit, same shape.
    ``seed`` makes the noise of one picture under one corruption reproducible."""
    x = picture.astype(np.float32) / np.float32(255.0)
    out = corruption.apply(x, np.random.default_rng(seed), min(picture.shape[:2]))
    out = _to_8bit(out)
    return out[:, :, 0] if picture.ndim == 2 else out


@dataclass
class CorruptionResult:
    name: str
    severity: int
    accuracy: float
    flipped: int  # images right when clean, wrong under this corruption


@dataclass
class Robustness:
    """Accuracy of a stratified sample under each corruption, and what it costs."""

    rows: np.ndarray  # the sampled rows (audited images)
    clean_accuracy: float
    results: list[CorruptionResult]
    class_drops: list[tuple[str, float, float]]  # (class, clean accuracy, mean corrupted accuracy), worst first
    first_flips: list[tuple[int, str, int, int]]  # (row, corruption, severity, new prediction), earliest first
    pictures: dict[str, np.ndarray] = field(default_factory=dict)  # key -> [0, 1] HWC picture for the page
    maps: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # key -> (picture, map)

    @property
    def mean_drop(self) -> float:
        """Clean accuracy minus the mean accuracy over every corruption and severity."""
        return self.clean_accuracy - float(np.mean([r.accuracy for r in self.results]))

    def by_corruption(self) -> dict[str, list[CorruptionResult]]:
        out: dict[str, list[CorruptionResult]] = {}
        for r in self.results:
            out.setdefault(r.name, []).append(r)
        return out


def summarise(
    rows: np.ndarray,
    truth: np.ndarray,
    clean_pred: np.ndarray,
    corrupted_pred: np.ndarray,
    class_names: list[str],
    shown_flips: int = 8,
) -> Robustness:
    """The numbers from the predictions: ``truth`` and ``clean_pred`` (n,) for the sampled
    rows, ``corrupted_pred`` (len(CORRUPTIONS), n) in :data:`CORRUPTIONS` order."""
    right = clean_pred == truth
    results = [
        CorruptionResult(c.name, c.severity, float((p == truth).mean()), int((right & (p != truth)).sum()))
        for c, p in zip(CORRUPTIONS, corrupted_pred, strict=True)
    ]
    drops = []
    for k in np.unique(truth):
        mask = truth == k
        drops.append((class_names[int(k)], float(right[mask].mean()), float((corrupted_pred[:, mask] == k).mean())))
    drops.sort(key=lambda d: (-(d[1] - d[2]), d[0]))
    # The images that break first: right when clean, wrong at the mildest severity of some
    # corruption (the earliest in the table's order), mildest first.
    flips = []
    for level in SEVERITIES:
        for c, p in zip(CORRUPTIONS, corrupted_pred, strict=True):
            if c.severity != level:
                continue
            for j in np.flatnonzero(right & (p != truth)):
                if all(f[0] != int(rows[j]) for f in flips):
                    flips.append((int(rows[j]), c.name, c.severity, int(p[j])))
        if len(flips) >= shown_flips:
            break
    return Robustness(rows, float(right.mean()), results, drops, flips[:shown_flips])
