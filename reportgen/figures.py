"""Plots, as PNG bytes, drawn with matplotlib's object API (no pyplot global state).

Every function takes numbers (an analysis result) and returns bytes; nothing here
computes a statistic.  PNGs are written without the software/date metadata so that the
same numbers give the same bytes.
"""

from __future__ import annotations

import io
from collections.abc import Sequence

import matplotlib

matplotlib.use("Agg")  # never open a window, whatever the environment says

import numpy as np  # noqa: E402
from matplotlib.backends.backend_agg import FigureCanvasAgg  # noqa: E402
from matplotlib.colors import ListedColormap  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

DPI = 100
INK = "#1f2937"
MUTED = "#6b7280"


def class_colors(k: int) -> np.ndarray:
    """A distinct RGB colour (0..1) per class: tab10, then tab20, then an HSV ring."""
    if k <= 10:
        base = matplotlib.colormaps["tab10"](np.arange(10))[:, :3]
    elif k <= 20:
        base = matplotlib.colormaps["tab20"](np.arange(20))[:, :3]
    else:
        hues = (np.arange(k) * 0.618033988749895) % 1.0
        base = matplotlib.colors.hsv_to_rgb(np.stack([hues, np.full(k, 0.65), np.full(k, 0.85)], axis=1))
    return base[:k]


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def to_png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None}, bbox_inches="tight", pad_inches=0.08)
    return buf.getvalue()


def _short(name: str, width: int = 18) -> str:
    return name if len(name) <= width else name[: width - 1] + "…"


def confusion_figure(confusion: np.ndarray, classes: Sequence[str]) -> bytes:
    """Row-normalised confusion matrix (share of each true class), annotated when small."""
    k = len(classes)
    rows = confusion.sum(axis=1, keepdims=True)
    share = np.divide(confusion, rows, out=np.zeros(confusion.shape, float), where=rows > 0)
    side = min(14.0, max(4.0, 0.42 * k + 2.0))
    fig = _new_figure(side + 1.2, side)
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03, label="share of the true class")
    if k <= 60:
        labels = [_short(c) for c in classes]
        ax.set_xticks(range(k), labels, rotation=90 if k > 6 else 45, ha="center" if k > 6 else "right", fontsize=8 if k > 20 else 9)
        ax.set_yticks(range(k), labels, fontsize=8 if k > 20 else 9)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    if k <= 20:
        for i in range(k):
            for j in range(k):
                if confusion[i, j]:
                    ax.text(j, i, str(confusion[i, j]), ha="center", va="center", fontsize=8,
                            color="white" if share[i, j] > 0.55 else INK)  # fmt: skip
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    return to_png(fig)


def balance_figure(classes: Sequence[str], true_counts: Sequence[int] | None, predicted: Sequence[int]) -> bytes:
    """Images per class in the folder beside images predicted as each class."""
    k = len(classes)
    height = min(18.0, max(2.2, 0.28 * k + 1.0))
    fig = _new_figure(7.0, height)
    ax = fig.add_subplot()
    y = np.arange(k)
    if true_counts is not None:
        ax.barh(y - 0.2, true_counts, height=0.4, color="#2563eb", label="in the folder")
        ax.barh(y + 0.2, predicted, height=0.4, color="#f59e0b", label="predicted")
        ax.legend(loc="lower right", fontsize=8, frameon=False)
    else:
        ax.barh(y, predicted, height=0.6, color="#f59e0b", label="predicted")
    ax.set_yticks(y, [_short(c, 24) for c in classes], fontsize=8 if k > 20 else 9)
    ax.invert_yaxis()
    ax.set_xlabel("images")
    ax.spines[["top", "right"]].set_visible(False)
    return to_png(fig)


def layer_curve_figure(names: Sequence[str], series: dict[str, Sequence[float | None]], ylabel: str) -> bytes:
    """One value per layer, in layer order, for each named series."""
    n = len(names)
    fig = _new_figure(max(5.0, 0.7 * n + 2.0), 3.2)
    ax = fig.add_subplot()
    x = np.arange(n)
    markers = ["o", "s", "^", "D"]
    for (label, values), marker in zip(series.items(), markers, strict=False):
        vals = np.array([np.nan if v is None else v for v in values], float)
        ax.plot(x, vals, marker=marker, label=label)
    ax.set_xticks(x, [_short(s, 16) for s in names], rotation=30, ha="right", fontsize=8)
    ax.set_ylim(0, 1.02)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, frameon=False, loc="lower right")
    ax.spines[["top", "right"]].set_visible(False)
    return to_png(fig)


def heat_colormap() -> ListedColormap:
    return matplotlib.colormaps["jet"]
