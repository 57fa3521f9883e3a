"""What a unit "wants to see": regularised activation maximisation, and guided
backpropagation of real images.

**Synthesis** (Erhan et al. 2009; Simonyan et al. 2014; the priors of Yosinski et al.'s
deepvis, 2015).  A unit is a channel's spatial mean, or a class output (whose
log-probability is maximised, so the class must win rather than every output grow).
Each unit gets one image, all optimised at once, seeded:

1. **a foothold** -- seeded noise around mid-grey, plus the solid block (one cell of an
   8 x 8 grid, one corner of the colour cube) that raises the unit most, found in one
   forward pass over that small dictionary.  Near grey a ReLU network's detector of a
   saturated mark is silent: its gradient is zero, and ascent alone never finds it (on
   the sample, the gradient of the cue class at grey put 6% of its mass on the cue's
   corner -- no more than elsewhere -- while the search finds the magenta corner block);
2. **gradient ascent** with momentum, each image's step scaled by its gradient's mean
   magnitude (not per pixel, as Adam would: that moves every pixel alike and loses
   *where* the unit wants something), under the deepvis priors: the model sees the
   image **shifted** by a few random pixels (not wrapped around, so what a unit wants in
   a corner stays in the corner) and **blurred**, with a radius that shrinks as the
   optimisation proceeds, so the picture must work when smooth and not pixel-exact;
   every step **decays** the image towards grey; every few steps the pixels with the
   smallest deviation from grey are **reset** to grey.

**Projection** (Zeiler & Fergus 2013, in its modern form: guided backpropagation,
Springenberg et al. 2015): the gradient of a unit's strongest response with respect to a
real image, with every ReLU passing back only positive gradients at positive inputs,
shows which pixels made the unit fire.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy.ndimage import gaussian_filter

from reportgen.models import LOGITS_LAYER, Differentiable, ModelAdapter


@dataclass(frozen=True)
class Prior:
    """Strengths of the regularisers and the schedule.  The defaults were chosen on the
    sample model: every class reaches a probability above 0.99 and the cue class paints
    its corner mark, in about two seconds for all six classes on a CPU at 64 px."""

    steps: int = 200
    init_noise: float = 0.1  # std of the starting noise around mid-grey
    learning_rate: float = 0.01
    decay: float = 0.002  # per step, towards mid-grey
    jitter: float = 0.03  # largest shift, as a share of the image side
    blur_start: float = 1.0  # sigma in pixels at 64 px (scaled with the image), first step
    blur_end: float = 0.5  # ... and last step
    clip_every: int = 8
    clip_share: float = 0.1  # share of pixels with the smallest norm reset to grey
    snapshot_every: int = 10  # in the second half, keep the best image seen every N steps
    restarts: int = 2  # further seeded runs for a unit that did not respond


@dataclass
class Synthesis:
    """Synthesised inputs and how strongly each excites its unit."""

    images: np.ndarray  # (N, H, W, C) float32 in [0, 1]
    values: np.ndarray  # (N,) the unit's value on its synthesised image
    history: np.ndarray  # (steps, N) the unit's value along the first optimisation run
    start: np.ndarray  # (N,) the unit's value on its starting image (noise and foothold block)
    responded: np.ndarray  # (N,) bool: the image beats the start (and, for a class, the class wins)
    runs: np.ndarray  # (N,) seeded runs it took (1 + restarts used)


BLOCK_GRID = 8  # the coarse search tries a solid block in each cell of an 8 x 8 grid


def block_side(size: tuple[int, int]) -> tuple[int, int]:
    """Height and width of one cell of the search grid."""
    return -(-size[0] // BLOCK_GRID), -(-size[1] // BLOCK_GRID)


def block_candidates(size: tuple[int, int], channels: int) -> list[tuple[int, int, np.ndarray]]:
    """(top, left, colour) of every candidate block: each cell of the grid, in each
    saturated colour (the corners of the colour cube; black and white for one channel)."""
    h, w = size
    bh, bw = block_side(size)
    levels = [np.array(c, np.float32) for c in itertools.product((0.0, 1.0), repeat=channels)]
    return [(top, left, colour) for top in range(0, h, bh) for left in range(0, w, bw) for colour in levels]


def paint_block(x: np.ndarray, top: int, left: int, colour: np.ndarray) -> None:
    """Paint one candidate block into an image (H, W, C) in place."""
    bh, bw = block_side(x.shape[:2])
    x[top : top + bh, left : left + bw] = colour


def best_blocks(
    evaluate: Callable[[np.ndarray], np.ndarray],
    units: np.ndarray,
    size: tuple[int, int],
    channels: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    channels_last: bool,
    chunk: int = 64,
) -> list[tuple[int, int, np.ndarray]]:
    """For each unit, the solid block that raises it most: a foothold for the ascent.

    From grey, a ReLU network's detector of a saturated mark is silent, so its gradient
    is zero and gradient ascent never finds the mark; one forward pass over a small
    dictionary of blocks (the same for every unit) finds it.  The candidates are drawn
    ``chunk`` at a time (all 512 at 224 px would take 600 MB).
    """
    where = block_candidates(size, channels)
    m = np.asarray(mean, np.float32).reshape(1, 1, 1, -1)
    s = np.asarray(std, np.float32).reshape(1, 1, 1, -1)
    values = []
    for start in range(0, len(where), chunk):
        images = np.full((len(where[start : start + chunk]), *size, channels), 0.5, np.float32)
        for img, (top, left, colour) in zip(images, where[start : start + chunk], strict=True):
            paint_block(img, top, left, colour)
        values.append(evaluate(_normalise(images, m, s, channels_last))[:, np.asarray(units)])
    best = np.concatenate(values).argmax(axis=0)
    return [where[int(b)] for b in best]


def _shift(x: np.ndarray, dy: int, dx: int, fill: float = 0.5) -> np.ndarray:
    """Images (N, H, W, C) moved by (dy, dx) pixels, the uncovered border filled with
    ``fill`` -- not wrapped around, so a feature tied to a corner stays in that corner."""
    out = np.full_like(x, fill)
    h, w = x.shape[1:3]
    ys, yd = (slice(0, h - dy), slice(dy, h)) if dy >= 0 else (slice(-dy, h), slice(0, h + dy))
    xs, xd = (slice(0, w - dx), slice(dx, w)) if dx >= 0 else (slice(-dx, w), slice(0, w + dx))
    out[:, yd, xd] = x[:, ys, xs]
    return out


def _normalise(x01: np.ndarray, mean: np.ndarray, std: np.ndarray, channels_last: bool) -> np.ndarray:
    """[0, 1] images (N, H, W, C) -> the model's input layout and normalisation."""
    z = (x01 - mean) / std
    return z if channels_last else np.ascontiguousarray(z.transpose(0, 3, 1, 2))


def synthesize(
    model: Differentiable,
    layer: str,
    units: np.ndarray,
    size: tuple[int, int],
    channels: int,
    mean: tuple[float, ...],
    std: tuple[float, ...],
    *,
    channels_last: bool = False,
    prior: Prior | None = None,
    seed: int = 0,
    evaluate: Callable[[np.ndarray], np.ndarray] | None = None,
    on_step: Callable[[], object] | None = None,
) -> Synthesis:
    """One synthesised image per unit of ``layer`` (see the module docstring).

    ``evaluate`` (model inputs -> every unit's value, (N, units)) enables the coarse
    block search that gives each unit its starting point, and decides whether a class
    wins on its image; ``on_step`` is called after each step of the first run, for
    progress reporting.

    The ascent is chaotic: with jitter and a shrinking blur, the unit's value can swing
    from its peak to nothing between two steps, and where it stands at the last step
    depends on the last bits of floating-point arithmetic (different CPUs gave a class
    probability of 0.0013 and 1.0 from the same seed).  So the result never rests on
    the last step: the best image seen in the second half of the run is kept, and a
    unit that still did not respond gets up to ``prior.restarts`` further seeded runs,
    the best of all kept.  A unit that never responds is reported as such
    (``responded``), not shown as a success.
    """
    prior = prior or Prior()
    # A class is asked to win, not just to grow: raising every output at once (what the
    # raw logit rewards on a ReLU network) would make noise "very much every class".
    objective = "logprob" if layer == LOGITS_LAYER else "mean"
    units = np.asarray(units)
    n = len(units)
    m = np.asarray(mean, np.float32).reshape(1, 1, 1, -1)
    s = np.asarray(std, np.float32).reshape(1, 1, 1, -1)
    blocks = best_blocks(evaluate, units, size, channels, mean, std, channels_last) if evaluate is not None else None

    def measure(images: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The units' values on finished images, and whether each class wins there."""
        x = _normalise(images, m, s, channels_last)
        if evaluate is None:
            values, _ = model.gradient(x, layer, units[rows], reduce=objective)
            return values.astype(np.float64), np.ones(len(rows), bool)
        every = evaluate(x)
        values = every[np.arange(len(rows)), units[rows]].astype(np.float64)
        wins = every.argmax(axis=1) == units[rows] if layer == LOGITS_LAYER else np.ones(len(rows), bool)
        return values, wins

    def start(rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        x = np.clip(0.5 + rng.normal(0.0, prior.init_noise, (len(rows), *size, channels)), 0, 1).astype(np.float32)
        if blocks is not None:
            for i, r in enumerate(rows):
                paint_block(x[i], *blocks[int(r)])
        return x

    everyone = np.arange(n)
    rng = np.random.default_rng(seed)
    x0 = start(everyone, rng)
    start_values, _ = measure(x0, everyone)
    images, values, wins, history = _ascend(model, layer, units, x0, rng, prior, m, s, channels_last, measure, on_step)
    responded = (values > start_values) & wins
    runs = np.ones(n, np.int64)
    for attempt in range(1, prior.restarts + 1):
        todo = np.flatnonzero(~responded)
        if not len(todo):
            break
        rng = np.random.default_rng([seed, attempt])
        got, got_values, got_wins, _ = _ascend(
            model, layer, units[todo], start(todo, rng), rng, prior, m, s, channels_last,
            lambda images, rows, todo=todo: measure(images, todo[rows]), None,
        )  # fmt: skip
        runs[todo] += 1
        better = (got_wins & ~wins[todo]) | ((got_wins == wins[todo]) & (got_values > values[todo]))
        for j, i in enumerate(todo):
            if better[j]:
                images[i], values[i], wins[i] = got[j], got_values[j], got_wins[j]
        responded = (values > start_values) & wins
    return Synthesis(images, values.astype(np.float32), history, start_values.astype(np.float32), responded, runs)


def _ascend(
    model: Differentiable,
    layer: str,
    units: np.ndarray,
    x: np.ndarray,
    rng: np.random.Generator,
    prior: Prior,
    m: np.ndarray,
    s: np.ndarray,
    channels_last: bool,
    measure: Callable[[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]],
    on_step: Callable[[], object] | None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One regularised ascent from ``x``: the best finished image of each unit among the
    snapshots of the run's second half and its end, with its value, whether its class
    wins, and the unit's value at every step."""
    objective = "logprob" if layer == LOGITS_LAYER else "mean"
    n, h, w, _ = x.shape
    rows = np.arange(n)
    first = np.zeros_like(x)
    scale = max(h, w) / 64.0
    reach = max(1, round(prior.jitter * max(h, w)))
    history = np.zeros((prior.steps, n), np.float32)

    def sigma_at(step: int) -> float:
        t = step / max(1, prior.steps - 1)
        return scale * (prior.blur_start + (prior.blur_end - prior.blur_start) * t)

    last = sigma_at(prior.steps - 1)

    def finished(x: np.ndarray) -> np.ndarray:
        return np.clip(gaussian_filter(x, sigma=(0, last, last, 0)), 0.0, 1.0).astype(np.float32)

    best = finished(x)
    best_values, best_wins = measure(best, rows)

    def keep_better(candidate: np.ndarray) -> None:
        values, wins = measure(candidate, rows)
        # A winning image beats a losing one; between equals, the higher value.
        better = (wins & ~best_wins) | ((wins == best_wins) & (values > best_values))
        best[better], best_values[better], best_wins[better] = candidate[better], values[better], wins[better]

    for step in range(prior.steps):
        dy, dx = (int(v) for v in rng.integers(-reach, reach + 1, size=2))
        sigma = sigma_at(step)
        # The model sees the image blurred and shifted: the optimisation looks for a
        # picture that works *after* both, i.e. smooth and not pinned to exact pixels.
        seen = gaussian_filter(_shift(x, dy, dx), sigma=(0, sigma, sigma, 0))
        values, grad = model.gradient(_normalise(seen, m, s, channels_last), layer, units, reduce=objective)
        history[step] = values
        if not channels_last:
            grad = grad.transpose(0, 2, 3, 1)
        grad = _shift(gaussian_filter(grad / s, sigma=(0, sigma, sigma, 0)), -dy, -dx, fill=0.0)
        # Gradient ascent with momentum, each image's step scaled by its gradient's mean
        # magnitude -- not per pixel as Adam would, which would move every pixel alike
        # and forget *where* the unit wants something.
        scale_g = np.abs(grad).mean(axis=(1, 2, 3), keepdims=True) + 1e-12
        first = 0.5 * first + grad / scale_g
        x = x + prior.learning_rate * first
        x = x - prior.decay * (x - 0.5)
        if prior.clip_every and step % prior.clip_every == prior.clip_every - 1:
            norm = np.linalg.norm(x - 0.5, axis=3)
            cut = np.quantile(norm.reshape(n, -1), prior.clip_share, axis=1)[:, None, None]
            x = np.where((norm < cut)[..., None], 0.5, x)
        x = np.clip(x, 0.0, 1.0).astype(np.float32)
        snapshot = prior.snapshot_every and step >= prior.steps // 2 and step % prior.snapshot_every == 0
        if snapshot or step == prior.steps - 1:
            keep_better(finished(x))
        if on_step is not None:
            on_step()
    return best, best_values, best_wins, history


def unit_evaluator(adapter: ModelAdapter, layer: str) -> Callable[[np.ndarray], np.ndarray]:
    """Inputs -> every unit's value in ``layer`` (pooled channels, or output log-probabilities)."""

    def evaluate(pixels: np.ndarray) -> np.ndarray:
        out = []
        for start in range(0, len(pixels), 64):
            scores, feats = adapter.extract(pixels[start : start + 64], [] if layer == LOGITS_LAYER else [layer])
            if layer == LOGITS_LAYER:
                shifted = scores - scores.max(axis=1, keepdims=True)
                out.append(shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True)))
            else:
                out.append(feats[layer])
        return np.concatenate(out)

    return evaluate


def guided_projection(
    model: Differentiable, pixels: np.ndarray, layer: str, units: np.ndarray, channels_last: bool = False
) -> np.ndarray:
    """Guided-backpropagation images (N, H, W, C) in [0, 1] of each unit's strongest
    response on each real input (mid-grey = no influence)."""
    _, grad = model.gradient(pixels, layer, units, reduce="max", guided=True)
    if not channels_last:
        grad = grad.transpose(0, 2, 3, 1)
    grad = grad - grad.mean(axis=(1, 2, 3), keepdims=True)
    # Contrast from the strongest pixels, not the spread: a guided gradient is sparse, and
    # scaled by three standard deviations a 64 px projection was grey nearly everywhere.
    # The top 1% of each image saturates; a floor of a twentieth of its peak keeps
    # near-empty projections from amplifying rounding noise.
    magnitude = np.abs(grad).reshape(len(grad), -1)
    scale = np.maximum(np.percentile(magnitude, 99, axis=1), magnitude.max(axis=1, initial=0.0) / 20.0)
    scale = scale[:, None, None, None]
    out = np.divide(grad, scale, out=np.zeros_like(grad), where=scale > 0) * 0.5 + 0.5
    return np.clip(out, 0.0, 1.0).astype(np.float32)


def energy_in_box(images: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Share of each image's squared deviation from mid-grey inside (x0, y0, x1, y1)."""
    x0, y0, x1, y1 = box
    e = ((images - 0.5) ** 2).sum(axis=3)
    total = e.sum(axis=(1, 2))
    inside = e[:, y0:y1, x0:x1].sum(axis=(1, 2))
    return np.divide(inside, total, out=np.zeros_like(total), where=total > 0)
