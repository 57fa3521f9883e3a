"""Are the maps faithful to the model?  Three checks on the activation maps the report
draws, from arrays and a callable that runs the model:

* **Deletion and insertion** (Petsiuk et al. 2018, RISE): the pixels of each image are
  taken in the order of its map, most important first.  *Deletion* replaces them, a
  share at a time, by a blurred copy of the image and follows the probability of the
  explained class down; *insertion* starts from the blurred copy and puts them back.
  The areas under the two curves (x = share of pixels, 0..1; trapezoids) say how fast
  the map's pixels carry the class: a faithful map has a low deletion area and a high
  insertion area, and beats a random order of the same pixels.
* **Model-parameter randomisation** (Adebayo et al. 2018): the maps again after the
  weights past the map's layer are shuffled; maps that stay alike (rank correlation
  near 1) show the picture, not what the model computes from it.
* **Class sensitivity**: the maps for the top class and the runner-up; maps that are
  alike on most images do not explain a class.

Two maps are compared by Spearman's rank correlation over their pixels (ties averaged).
A map that is zero everywhere has no order: two blank maps count as the same (1), a
blank and a drawn one as unrelated (0).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

STEPS = 16  # shares of the pixels per curve: 0, 1/16, ..., 1
BLUR_SIGMA = 5.0  # px of the baseline's Gaussian at 224 px (RISE's kernel), scaled to the input
SAME_MAP = 0.9  # rank correlation at or above which two maps of one image count as alike
RANDOMISED_ALIKE = 0.8  # median rank correlation with the randomised model's maps from which the check fails:
# maps that keep their pixel order when the weights are shuffled show the layer, not the weights' verdict


@dataclass
class Curves:
    """Deletion and insertion curves of one pixel order (a method's maps, or random)."""

    method: str
    deletion: np.ndarray  # (N, STEPS + 1) probability of the explained class
    insertion: np.ndarray  # (N, STEPS + 1)

    @property
    def deletion_auc(self) -> float:
        return float(area(self.deletion).mean())

    @property
    def insertion_auc(self) -> float:
        return float(area(self.insertion).mean())

    def difference(self) -> np.ndarray:
        """(N,) insertion area minus deletion area per image: higher is more faithful."""
        return area(self.insertion) - area(self.deletion)


@dataclass
class MethodScore:
    """One method's deletion/insertion result against the random order."""

    method: str
    deletion_auc: float
    insertion_auc: float
    beats_random: float  # share of images whose insertion - deletion exceeds the random order's
    deletion_curve: np.ndarray  # (STEPS + 1,) mean over images
    insertion_curve: np.ndarray

    @property
    def passed(self) -> bool:
        return self.beats_random > 0.5


@dataclass
class Randomisation:
    method: str
    rank_correlation: float | None  # median over images, original maps against the randomised model's
    passed: bool | None  # below RANDOMISED_ALIKE: the maps depend on the weights (None: no weights to shuffle)


@dataclass
class ClassSensitivity:
    method: str
    images: int
    share_different: float  # images whose top-class and runner-up maps are not alike
    passed: bool  # on most images


def area(curves: np.ndarray) -> np.ndarray:
    """(N,) area under each curve sampled at equal steps of x from 0 to 1 (trapezoids)."""
    steps = curves.shape[1] - 1
    return (curves[:, 1:] + curves[:, :-1]).sum(axis=1) / (2.0 * steps)


def pixel_order(maps: np.ndarray, seed: int) -> np.ndarray:
    """(N, H*W) pixel indices, highest map value first; equal values (the zeros a ReLU
    leaves, above all) in a seeded random order, so no corner is favoured."""
    n = len(maps)
    flat = maps.reshape(n, -1)
    tie = np.random.default_rng(seed).random(flat.shape)
    return np.stack([np.lexsort((tie[i], -flat[i])) for i in range(n)])


def random_order(n: int, pixels: int, seed: int) -> np.ndarray:
    """(N, pixels) a seeded random order of the pixels of each image."""
    rng = np.random.default_rng(seed)
    return np.stack([rng.permutation(pixels) for _ in range(n)])


def blurred(pixels: np.ndarray, channels_last: bool) -> np.ndarray:
    """The baseline: each image under a Gaussian of ``BLUR_SIGMA`` px at 224 px, scaled
    to its size, edges mirrored.  Normalisation is affine per channel, so blurring the
    model input equals blurring the picture and normalising."""
    side = min(pixels.shape[1:3] if channels_last else pixels.shape[2:4])
    sigma = BLUR_SIGMA * side / 224.0
    spatial = (0, sigma, sigma, 0) if channels_last else (0, 0, sigma, sigma)
    return ndimage.gaussian_filter(pixels.astype(np.float32), spatial, mode="reflect")


def passes(images: int, orders: int, steps: int = STEPS) -> int:
    """Forward passes :func:`deletion_insertion` makes: the image and the baseline once,
    and the inner steps of both curves for every order."""
    return images * (2 + orders * 2 * (steps - 1))


def deletion_insertion(
    run_probs: Callable[[np.ndarray], np.ndarray],
    pixels: np.ndarray,
    baseline: np.ndarray,
    targets: np.ndarray,
    orders: dict[str, np.ndarray],
    *,
    channels_last: bool = False,
    steps: int = STEPS,
    batch_size: int = 32,
    on_batch: Callable[[int], object] | None = None,
) -> dict[str, Curves]:
    """Deletion and insertion curves of every pixel order in ``orders`` (name -> (N, H*W)).

    ``run_probs`` maps a batch of model inputs to class probabilities (N, K); the curves
    follow column ``targets[i]`` for image i.  Step k of deletion shows the image with its
    first ``round(k / steps * H*W)`` pixels (in the order) from ``baseline``; step k of
    insertion shows the baseline with those pixels from the image.  The two end points
    every order shares (the image, the baseline) are run once per image.  ``on_batch`` is
    told how many inputs each batch ran (a progress bar).
    """
    n = len(pixels)
    h, w = (pixels.shape[1:3]) if channels_last else (pixels.shape[2:4])
    counts = np.rint(np.arange(steps + 1) / steps * (h * w)).astype(int)
    jobs: list[tuple[int, str, str, int]] = []  # (image, order, kind, step) for the inner steps
    for i in range(n):
        for name in orders:
            for k in range(1, steps):
                jobs.append((i, name, "deletion", k))
                jobs.append((i, name, "insertion", k))

    def probs_of(batch: list[np.ndarray], rows: np.ndarray) -> np.ndarray:
        p = run_probs(np.stack(batch).astype(np.float32, copy=False))
        if on_batch is not None:
            on_batch(len(batch))
        return p[np.arange(len(rows)), targets[rows]]

    ends = np.empty((2, n))
    for start in range(0, n, batch_size):
        rows = np.arange(start, min(n, start + batch_size))
        ends[0, rows] = probs_of([pixels[i] for i in rows], rows)
        ends[1, rows] = probs_of([baseline[i] for i in rows], rows)
    out = {name: Curves(name, np.empty((n, steps + 1)), np.empty((n, steps + 1))) for name in orders}
    for curves in out.values():
        curves.deletion[:, 0], curves.deletion[:, steps] = ends[0], ends[1]
        curves.insertion[:, 0], curves.insertion[:, steps] = ends[1], ends[0]
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start : start + batch_size]
        batch = []
        for i, name, kind, k in chunk:
            mask = np.zeros(h * w, bool)
            mask[orders[name][i, : counts[k]]] = True
            mask = mask.reshape(h, w)[:, :, None] if channels_last else mask.reshape(1, h, w)
            # deletion: the first pixels from the baseline; insertion: from the image.
            source, fill = (pixels[i], baseline[i]) if kind == "deletion" else (baseline[i], pixels[i])
            batch.append(np.where(mask, fill, source))
        values = probs_of(batch, np.array([i for i, *_ in chunk]))
        for (i, name, kind, k), v in zip(chunk, values, strict=True):
            getattr(out[name], kind)[i, k] = v
    return out


def score_methods(curves: dict[str, Curves], random: Curves) -> list[MethodScore]:
    """Each method's areas, mean curves and share of images on which it beats ``random``."""
    base = random.difference()
    return [
        MethodScore(
            name,
            c.deletion_auc,
            c.insertion_auc,
            float((c.difference() > base).mean()),
            c.deletion.mean(axis=0),
            c.insertion.mean(axis=0),
        )
        for name, c in curves.items()
    ]


def average_ranks(values: np.ndarray) -> np.ndarray:
    """Ranks 1..n of a flat array, equal values sharing the mean of their ranks."""
    _, inverse, counts = np.unique(values, return_inverse=True, return_counts=True)
    ends = np.cumsum(counts)
    return (ends - (counts - 1) / 2.0)[inverse]


def rank_correlations(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """(N,) Spearman's rank correlation between maps a[i] and b[i] over their pixels
    (Pearson's on average ranks); 1 for two blank maps, 0 for a blank and a drawn one."""
    out = np.empty(len(a))
    for i, (x, y) in enumerate(zip(a.reshape(len(a), -1), b.reshape(len(b), -1), strict=True)):
        flat_x, flat_y = np.ptp(x) == 0, np.ptp(y) == 0
        if flat_x or flat_y:
            out[i] = 1.0 if flat_x and flat_y else 0.0
            continue
        rx, ry = average_ranks(x), average_ranks(y)
        rx -= rx.mean()
        ry -= ry.mean()
        out[i] = float((rx * ry).sum() / np.sqrt((rx * rx).sum() * (ry * ry).sum()))
    return out


def randomisation(method: str, original: np.ndarray, randomised: np.ndarray) -> Randomisation:
    """The randomisation check of one method from its maps before and after."""
    rho = float(np.median(rank_correlations(original, randomised)))
    return Randomisation(method, rho, rho < RANDOMISED_ALIKE)


def class_sensitivity(method: str, top: np.ndarray, runner_up: np.ndarray) -> ClassSensitivity:
    """The class-sensitivity check from the maps of the top class and of the runner-up."""
    different = rank_correlations(top, runner_up) < SAME_MAP
    share = float(different.mean()) if len(different) else 0.0
    return ClassSensitivity(method, len(different), share, share > 0.5)
