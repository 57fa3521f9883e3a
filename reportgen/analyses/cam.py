"""Class activation maps on every model format: Grad-CAM, Ablation-CAM, Score-CAM.

All three weight the channels of one feature map A (N, C, h, w) and sum them::

    cam = ReLU(sum_c w_c A_c), upsampled (bilinear) to the input and scaled to [0, 1]

* **Grad-CAM**: w_c = spatial mean of d score / d A_c.  With autograd (torch formats) it
  comes from one backward pass through the head only.  Without (ONNX Runtime), it is the
  directional derivative of the score along a uniform bump of channel c divided by h*w,
  which central differences over 2C perturbed copies of A give in one batched run of
  the head -- exact for heads that are linear in A (global pooling + linear layers),
  and exact up to rounding elsewhere unless a bump crosses a ReLU kink.
* **Ablation-CAM**: w_c = (score - score with channel c zeroed) / score (head runs only).
* **Score-CAM**: w = softmax over c of the score of the input masked by each upsampled,
  [0, 1]-scaled A_c (C full forward passes per image; no gradient at all).

A map whose weighted sum is zero everywhere is all zeros, never NaN.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from reportgen.models import SplitModel

CAM_METHODS = ("gradcam", "ablationcam", "scorecam")
CAM_NAMES = {"gradcam": "Grad-CAM", "ablationcam": "Ablation-CAM", "scorecam": "Score-CAM"}  # as the report writes them
COPY_BUDGET = 64 << 20  # bytes of perturbed activations sent to the head at once


@dataclass
class CamResult:
    """Maps for a batch of images and the score each map explains."""

    method: str
    layer: str
    maps: np.ndarray  # (N, H, W) float32 in [0, 1], at the model's input resolution
    weights: np.ndarray  # (N, C) channel weights
    targets: np.ndarray  # (N,) output index explained
    scores: np.ndarray  # (N,) model output at the target (before any softmax)
    activations: np.ndarray | None = None  # (N, C, h, w), kept when asked for


def resize_bilinear(maps: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(N, h, w) -> (N, H, W), bilinear with half-pixel centres and edge clamping (the
    convention of OpenCV's INTER_LINEAR and of ``torch`` with ``align_corners=False``)."""
    _, h, w = maps.shape
    out_h, out_w = size

    def axis(src: int, dst: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        pos = (np.arange(dst) + 0.5) * (src / dst) - 0.5
        pos = np.clip(pos, 0, src - 1)
        lo = np.floor(pos).astype(int)
        hi = np.minimum(lo + 1, src - 1)
        return lo, hi, (pos - lo).astype(np.float32)

    y0, y1, wy = axis(h, out_h)
    x0, x1, wx = axis(w, out_w)
    m = maps.astype(np.float32)
    rows = m[:, y0, :] * (1 - wy)[None, :, None] + m[:, y1, :] * wy[None, :, None]
    # The full-size pass in place: the same products and sums, element by element (so
    # the same bits on every CPU), without three more full-size temporaries.
    out = rows[:, :, x0]
    out *= (1 - wx)[None, None, :]
    right = rows[:, :, x1]
    right *= wx[None, None, :]
    out += right
    return out


def normalise(maps: np.ndarray) -> np.ndarray:
    """Each map shifted to start at 0 and scaled to end at 1; flat maps become zeros."""
    low = maps.min(axis=(1, 2), keepdims=True)
    shifted = maps - low
    high = shifted.max(axis=(1, 2), keepdims=True)
    flat = ~(high > 0).ravel()  # not positive, or NaN: zeros, as before
    # In place: a report's maps are millions of pixels, and each temporary was a copy.
    np.divide(shifted, high, out=shifted, where=high > 0)
    shifted[flat] = 0.0
    return shifted.astype(np.float32, copy=False)


def combine(activations: np.ndarray, weights: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """ReLU of the weighted channel sum, upsampled and normalised."""
    cam = np.einsum("nc,nchw->nhw", weights.astype(np.float32), activations.astype(np.float32))
    cam = np.maximum(cam, 0.0)
    return normalise(resize_bilinear(cam, size))


def _head_on_copies(split: SplitModel, rest: object, row: int, copies: np.ndarray) -> np.ndarray:
    """Head outputs for copies of one image's activations, in chunks within the budget."""
    per_copy = copies[0].nbytes
    step = max(1, COPY_BUDGET // max(1, per_copy))
    outs = []
    for start in range(0, len(copies), step):
        chunk = copies[start : start + step]
        index = np.full(len(chunk), row)
        outs.append(split.head(chunk, split.take(rest, index)))
    return np.concatenate(outs)


def _step(a: np.ndarray) -> float:
    """A bump small against the activations, large against float32 rounding of the score."""
    return 1e-3 * max(float(np.abs(a).max()), 1e-6)


def _channel_derivatives(split: SplitModel, rest: object, row: int, a: np.ndarray) -> np.ndarray:
    """(K, C): derivative of every output along a uniform bump of each channel, by central
    differences over 2C perturbed copies of one image's activations."""
    c = a.shape[0]
    step = _step(a)
    copies = np.repeat(a[None], 2 * c, axis=0)
    for ch in range(c):
        copies[2 * ch, ch] += step
        copies[2 * ch + 1, ch] -= step
    out = _head_on_copies(split, rest, row, copies).astype(np.float64)
    return ((out[0::2] - out[1::2]) / (2.0 * step)).T


def finite_difference_weights(
    split: SplitModel, activations: np.ndarray, rest: object, targets: np.ndarray, seed: int = 0
) -> np.ndarray:
    """Grad-CAM weights (spatial mean of the gradient) by central differences of the head.

    Most heads (global pooling and linear layers) are affine in A, so the channel
    derivatives are the same for every image.  They are computed in full for the first
    image; every other image is checked against them along two random channel
    combinations (two extra head runs per direction and image, a randomised test in the
    manner of Freivalds'), and only the images that fail get their own 2C-copy
    derivatives.  A non-affine head thus costs what it costs, an affine one about
    nothing beyond the body's forward pass.
    """
    n, c, h, w = activations.shape
    weights = np.zeros((n, c), np.float64)
    if n == 0:
        return weights
    reference = _channel_derivatives(split, rest, 0, activations[0])  # (K, C)
    exact = {0: reference}
    if n > 1:
        rng = np.random.default_rng(seed)
        directions = rng.standard_normal((2, c))
        copies = []
        steps = []
        for i in range(1, n):
            step = _step(activations[i])
            steps.append(step)
            for s in directions:
                bump = s[:, None, None].astype(np.float32) * np.float32(step)
                copies.append(activations[i] + bump)
                copies.append(activations[i] - bump)
        index = np.repeat(np.arange(1, n), 2 * len(directions))
        out = []
        per = copies[0].nbytes
        block = max(2 * len(directions), COPY_BUDGET // max(1, per))
        block -= block % (2 * len(directions))
        for start in range(0, len(copies), block):
            chunk = np.stack(copies[start : start + block])
            out.append(split.head(chunk, split.take(rest, index[start : start + block])))
        values = np.concatenate(out).astype(np.float64).reshape(n - 1, len(directions), 2, -1)
        measured = (values[:, :, 0] - values[:, :, 1]) / (2.0 * np.array(steps)[:, None, None])  # (n-1, dirs, K)
        predicted = directions @ reference.T  # (dirs, K)
        error = np.abs(measured - predicted[None]).max(axis=2)
        scale = np.abs(predicted).max(axis=1)[None] + np.abs(measured).max(axis=2)
        agrees = np.all(error <= 1e-3 * scale + 1e-7, axis=1)
        for i in range(1, n):
            exact[i] = reference if agrees[i - 1] else _channel_derivatives(split, rest, i, activations[i])
    for i in range(n):
        weights[i] = exact[i][int(targets[i])] / (h * w)
    return weights


def ablation_weights(
    split: SplitModel, activations: np.ndarray, rest: object, targets: np.ndarray, scores: np.ndarray
) -> np.ndarray:
    """Ablation-CAM weights: relative drop of the score when each channel is zeroed."""
    n, c, _, _ = activations.shape
    weights = np.zeros((n, c), np.float64)
    for i in range(n):
        copies = np.repeat(activations[i][None], c, axis=0)
        copies[np.arange(c), np.arange(c)] = 0.0
        out = _head_on_copies(split, rest, i, copies).astype(np.float64)
        base = float(scores[i])
        drop = base - out[:, int(targets[i])]
        weights[i] = drop / base if base != 0 else drop
    return weights


def score_weights(
    run_model: Callable[[np.ndarray], np.ndarray],
    pixels: np.ndarray,
    activations: np.ndarray,
    targets: np.ndarray,
    batch_size: int,
    channels_last: bool = False,
) -> np.ndarray:
    """Score-CAM weights: softmax over channels of the score of each masked input."""
    n, c, _, _ = activations.shape
    size = pixels.shape[1:3] if channels_last else pixels.shape[2:4]
    weights = np.zeros((n, c), np.float64)
    for i in range(n):
        masks = normalise(resize_bilinear(activations[i], size))  # (C, H, W) in [0, 1]
        scores = np.empty(c, np.float64)
        for start in range(0, c, batch_size):
            m = masks[start : start + batch_size]
            if channels_last:
                masked = pixels[i][None] * m[:, :, :, None]
            else:
                masked = pixels[i][None] * m[:, None, :, :]
            scores[start : start + len(m)] = run_model(masked.astype(np.float32))[:, int(targets[i])]
        shifted = np.exp(scores - scores.max())
        weights[i] = shifted / shifted.sum()
    return weights


def compute_cam(
    method: str,
    split: SplitModel,
    pixels: np.ndarray,
    targets: np.ndarray | None,
    size: tuple[int, int],
    *,
    run_model: Callable[[np.ndarray], np.ndarray] | None = None,
    batch_size: int = 32,
    channels_last: bool = False,
    keep_activations: bool = False,
) -> CamResult:
    """Maps of ``method`` for a batch of input tensors.

    ``targets`` are output indices; None explains each image's top-scoring output.
    ``run_model`` (full forward pass, input -> outputs) is needed by Score-CAM only.
    """
    if method not in CAM_METHODS:
        raise ValueError(f"unknown CAM method {method!r}")
    n = len(pixels)
    if 0 < n < split.min_batch:
        # A graph that fails on fewer images: copies of the first fill the batch, and
        # the results are cut back (each image's map depends on that image alone).
        fill = split.min_batch - n
        padded = compute_cam(
            method,
            split,
            np.concatenate([pixels, np.repeat(pixels[:1], fill, axis=0)]),
            None
            if targets is None
            else np.concatenate([np.asarray(targets), np.repeat(np.asarray(targets)[:1], fill)]),
            size,
            run_model=run_model,
            batch_size=batch_size,
            channels_last=channels_last,
            keep_activations=keep_activations,
        )
        return CamResult(
            padded.method,
            padded.layer,
            padded.maps[:n],
            padded.weights[:n],
            padded.targets[:n],
            padded.scores[:n],
            None if padded.activations is None else padded.activations[:n],
        )
    if method == "gradcam" and split.differentiable:
        if targets is None:
            activations, rest = split.body(pixels)
            targets = split.head(activations, rest).argmax(axis=1)
        targets = np.asarray(targets, np.int64)
        # One pass: the body without autograd, the head with it.
        activations, grads, outputs = split.gradcam_inputs(pixels, targets)
        weights = grads.astype(np.float64).mean(axis=(2, 3))
    else:
        activations, rest = split.body(pixels)
        outputs = split.head(activations, rest)
        targets = outputs.argmax(axis=1) if targets is None else np.asarray(targets, np.int64)
        scores_now = outputs[np.arange(len(targets)), targets]
        if method == "gradcam":
            weights = finite_difference_weights(split, activations, rest, targets)
        elif method == "ablationcam":
            weights = ablation_weights(split, activations, rest, targets, scores_now)
        else:
            if run_model is None:
                raise ValueError("Score-CAM needs run_model")
            weights = score_weights(run_model, pixels, activations, targets, batch_size, channels_last)
    scores = outputs[np.arange(len(targets)), targets]
    maps = combine(activations, weights, size)
    return CamResult(
        method,
        split.layer,
        maps,
        weights.astype(np.float32),
        targets,
        scores.astype(np.float32),
        activations if keep_activations else None,
    )


def mass_in_box(maps: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    """Share of each map's total in the pixel box (x0, y0, x1, y1), x1/y1 exclusive."""
    x0, y0, x1, y1 = box
    total = maps.sum(axis=(1, 2))
    inside = maps[:, y0:y1, x0:x1].sum(axis=(1, 2))
    return np.divide(inside, total, out=np.zeros_like(total), where=total > 0)
