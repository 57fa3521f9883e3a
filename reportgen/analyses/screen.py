"""Which rows and layers the analyses can use at all.

A model can produce NaN or infinity (an overflow in float32), or values so large that
squared distances overflow float32 even though each value is finite (a graph whose
weights were replaced by constants does: activations near 1e20).  Neighbours, t-SNE and
the suspects are meaningless there, and the arithmetic fails in ways that have nothing to
do with the data (a division by zero, an all-NaN ranking).  Such a layer takes the path
of a constant one: it stays in the layer table, with a note that says why the layer
analyses leave it out; the rest of the report is written.  An image whose *output* is not
finite has no prediction, and is skipped with a reason.
"""

from __future__ import annotations

import numpy as np

from reportgen.util import ROW_BLOCK, release

# float32's largest value is 3.4e38; a squared distance sums ``dim`` squared differences
# of values up to twice the largest magnitude.  Below this bound on dim * max^2 nothing
# in the float32 distance key can overflow, with a wide margin.
SQUARED_BOUND = 1e36


def nonfinite_rows(array: np.ndarray) -> np.ndarray:
    """Boolean mask of the rows holding NaN or infinity, read a block at a time."""
    out = np.zeros(len(array), bool)
    for start in range(0, len(array), ROW_BLOCK):
        out[start : start + ROW_BLOCK] = ~np.isfinite(array[start : start + ROW_BLOCK]).all(axis=1)
    release(array)
    return out


def unusable_reason(array: np.ndarray) -> str:
    """Why a layer's features cannot go into distances ("" when they can): NaN or
    infinite values in some rows, or values too large for float32 distances."""
    bad = 0
    largest = 0.0
    for start in range(0, len(array), ROW_BLOCK):
        block = np.asarray(array[start : start + ROW_BLOCK], np.float32)
        finite = np.isfinite(block)
        bad += int((~finite.all(axis=1)).sum())
        if finite.any():
            largest = max(largest, float(np.abs(block[finite]).max()))
    release(array)
    if bad:
        return (
            f"{bad} image(s) have NaN or infinite values at this layer (an overflow in the model): "
            "kNN, t-SNE and the suspects leave the layer out"
        )
    dim = array.shape[1] if array.ndim == 2 else 1
    if dim * largest * largest > SQUARED_BOUND:
        return (
            f"values up to {largest:.3g} at this layer are too large for distances in float32 (an overflow "
            "in the model): kNN, t-SNE and the suspects leave the layer out"
        )
    return ""
