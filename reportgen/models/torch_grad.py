"""Input gradients with torch, for both routes that have them: the exported torch graph
(``torch_adapter``) and the torch twin of an ONNX graph (``onnx_torch``).

This module owns what the two share: guided backpropagation's ReLU, the value of one
unit per image, and the batched loop that differentiates it with respect to the input.
Each route supplies only how to run its graph up to the layer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from reportgen.models.base import run_in_batches_of


class GuidedRelu(torch.autograd.Function):
    """ReLU whose backward pass lets through only positive gradients at positive inputs
    (guided backpropagation, Springenberg et al. 2015; the modern deconvnet of Zeiler &
    Fergus)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        ctx.save_for_backward(x)
        return x.clamp(min=0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        (x,) = ctx.saved_tensors
        return grad.clamp(min=0) * (x > 0).to(grad.dtype)


def unit_values(activation: torch.Tensor, units: torch.Tensor, reduce: str) -> torch.Tensor:
    """One value per image: channel ``units[i]`` of image i, averaged (``mean``) or maxed
    (``max``) over space; for outputs, ``logprob`` is the log-softmax of output ``units[i]``
    and ``margin`` that output minus the mean of the others."""
    if reduce == "logprob":
        activation = torch.log_softmax(activation.reshape(len(units), -1), dim=1)
    elif reduce == "margin":
        # The output above the mean of the others: raising everything at once earns nothing.
        flat = activation.reshape(len(units), -1)
        others = (flat.sum(dim=1, keepdim=True) - flat) / max(1, flat.shape[1] - 1)
        activation = flat - others
    picked = activation[torch.arange(len(units), device=activation.device), units]
    if picked.ndim == 1:
        return picked
    flat = picked.reshape(len(units), -1)
    return flat.amax(dim=1) if reduce == "max" else flat.mean(dim=1)


def unit_gradients(
    forward: Callable[[torch.Tensor], torch.Tensor],
    pixels: np.ndarray,
    units: np.ndarray,
    *,
    reduce: str,
    device: torch.device,
    batch: int | None,
    min_batch: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """(values (N,), d value / d pixels) of unit ``units[i]`` of each image, where
    ``forward(x)`` runs the graph from the input to the layer's activation (with guided
    ReLUs when the route was asked for them); in batches of ``batch`` (None: all at once
    where the model takes any batch; at least ``min_batch`` rows, see ``run_in_batches_of``)."""

    def run(arrays: list[np.ndarray]) -> list[np.ndarray]:
        x = torch.from_numpy(np.ascontiguousarray(arrays[0])).to(device).requires_grad_(True)
        u = torch.as_tensor(arrays[1], device=device).long()
        with torch.enable_grad():
            values = unit_values(forward(x), u, reduce)
            (grad,) = torch.autograd.grad(values.sum(), x)
        return [values.detach().float().cpu().numpy(), grad.float().cpu().numpy()]

    values, grads = run_in_batches_of(run, [pixels.astype(np.float32), np.asarray(units, np.int64)], batch, min_batch)
    return values, grads
