"""Plots, as PNG bytes, drawn with matplotlib's object API (no pyplot global state).

Every function takes numbers (an analysis result) and returns bytes; nothing here
computes a statistic.  PNGs are written without the software/date metadata so that the
same numbers give the same bytes.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Callable, Sequence
from typing import ParamSpec, TypeVar

import matplotlib

matplotlib.use("Agg")  # never open a window, whatever the environment says

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.ticker import PercentFormatter
from PIL import Image

DPI = 100
INK = "#1f2937"
MUTED = "#6b7280"


P = ParamSpec("P")
R = TypeVar("R")


def literal_text(draw: Callable[P, R]) -> Callable[P, R]:
    """Draw with every string taken literally: class, layer and file names come from
    disk, a model or a JSON, and matplotlib would parse ``$...$`` in them as mathtext
    (and fail on ``$\\foo$``).  Tick labels are made when the figure is saved, so the
    setting covers the whole drawing, not only the calls that add text."""

    @functools.wraps(draw)
    def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        with matplotlib.rc_context({"text.parse_math": False}):
            return draw(*args, **kwargs)

    return wrapper


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


def class_swatches(names: list[str]) -> list[dict[str, str]]:
    """Legend entries: the hex colour each class has in the t-SNE pictures (and the explorer)."""
    colours = class_colors(max(1, min(len(names), PALETTE_CLASSES)))
    return [
        {"name": name, "colour": "#" + "".join(f"{round(c * 255):02x}" for c in colours[i % len(colours)])}
        for i, name in enumerate(names)
    ]


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


def _row_shares(confusion: np.ndarray) -> np.ndarray:
    """Each row as shares of its true class (rows without images stay 0)."""
    rows = confusion.sum(axis=1, keepdims=True)
    return np.divide(confusion, rows, out=np.zeros(confusion.shape, float), where=rows > 0)


def _class_matrix(
    values: np.ndarray,
    labels: np.ndarray,
    classes: Sequence[str],
    *,
    cmap: str,
    limits: tuple[float, float],
    colorbar: str,
    dark: np.ndarray,
    axes: tuple[str, str] = ("predicted class", "true class"),
) -> bytes:
    """A true-by-predicted class matrix coloured by ``values``; when at most 20 classes,
    the non-empty cells carry their ``labels`` (white where ``dark``). Class names are on
    both axes up to 60 classes."""
    k = len(classes)
    side = min(14.0, max(4.0, 0.42 * k + 2.0))
    fig = _new_figure(side + 1.2, side)
    ax = fig.add_subplot()
    image = ax.imshow(values, cmap=cmap, vmin=limits[0], vmax=limits[1], interpolation="nearest")
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.03, label=colorbar)
    if k <= 60:
        names = [_short(c) for c in classes]
        small = 8 if k > 20 else 9
        ax.set_xticks(range(k), names, rotation=90 if k > 6 else 45, ha="center" if k > 6 else "right", fontsize=small)
        ax.set_yticks(range(k), names, fontsize=small)
    else:
        ax.set_xticks([])
        ax.set_yticks([])
    if k <= 20:
        for i, j in zip(*np.nonzero(labels != ""), strict=True):
            ax.text(j, i, labels[i, j], ha="center", va="center", fontsize=8, color="white" if dark[i, j] else INK)
    ax.set_xlabel(axes[0])
    ax.set_ylabel(axes[1])
    return to_png(fig)


@literal_text
def confusion_figure(confusion: np.ndarray, classes: Sequence[str]) -> bytes:
    """Row-normalised confusion matrix (share of each true class), annotated when small."""
    share = _row_shares(confusion)
    labels = np.where(confusion != 0, confusion.astype(str), "")
    return _class_matrix(
        share,
        labels,
        classes,
        cmap="Blues",
        limits=(0.0, 1.0),
        colorbar="share of the true class",
        dark=share > 0.55,
    )


@literal_text
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
        # Above the axes, never over the bars (inside, it covered the longest ones).
        ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=2, fontsize=8, frameon=False, borderaxespad=0.2)
    else:
        ax.barh(y, predicted, height=0.6, color="#f59e0b", label="predicted")
    ax.set_yticks(y, [_short(c, 24) for c in classes], fontsize=8 if k > 20 else 9)
    ax.invert_yaxis()
    ax.set_xlabel("images")
    ax.spines[["top", "right"]].set_visible(False)
    return to_png(fig)


@literal_text
def cooccurrence_figure(cooccurrence: np.ndarray, labels: Sequence[str]) -> bytes:
    """Of the images carrying the row's label, the share that carry the column's too
    (the diagonal is 1 for every label with support); cells hold the counts."""
    support = np.diag(cooccurrence).astype(np.float64)
    share = np.divide(cooccurrence, support[:, None], out=np.zeros(cooccurrence.shape), where=support[:, None] > 0)
    counts = np.where(cooccurrence != 0, cooccurrence.astype(str), "")
    return _class_matrix(
        share,
        counts,
        labels,
        cmap="Purples",
        limits=(0.0, 1.0),
        colorbar="share of the row label's images",
        dark=share > 0.55,
        axes=("also carries", "images with"),
    )


@literal_text
def cardinality_figure(true_counts: Sequence[int] | None, predicted_counts: Sequence[int]) -> bytes:
    """Images by their number of labels: given, and predicted at the thresholds."""
    width = max(len(predicted_counts), len(true_counts or []))
    fig = _new_figure(max(4.0, 0.5 * width + 2.0), 2.8)
    ax = fig.add_subplot()
    x = np.arange(width)

    def padded(counts: Sequence[int]) -> np.ndarray:
        return np.pad(np.asarray(counts, float), (0, width - len(counts)))

    if true_counts is not None:
        ax.bar(x - 0.2, padded(true_counts), width=0.4, color="#2563eb", label="given")
        ax.bar(x + 0.2, padded(predicted_counts), width=0.4, color="#f59e0b", label="predicted")
        ax.legend(loc="lower left", bbox_to_anchor=(0.0, 1.0), ncol=2, fontsize=8, frameon=False, borderaxespad=0.2)
    else:
        ax.bar(x, padded(predicted_counts), width=0.6, color="#f59e0b", label="predicted")
    ax.set_xticks(x, [str(i) for i in x])
    ax.set_xlabel("labels per image")
    ax.set_ylabel("images")
    ax.spines[["top", "right"]].set_visible(False)
    return to_png(fig)


@literal_text
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


def reliability_figure(
    confidence: Sequence[float],
    accuracy: Sequence[float],
    bands: Sequence[tuple[float, float]],
    histogram: tuple[Sequence[float], Sequence[int]],
) -> bytes:
    """Reliability diagram: accuracy against mean confidence per equal-mass bin, with its
    band as an error bar (red where the bin is over-confident), the diagonal of perfect
    calibration, and below it how many images have each confidence (``histogram``:
    equal-width bin centres and counts)."""
    fig = _new_figure(5.2, 5.4)
    grid = fig.add_gridspec(2, 1, height_ratios=(4, 1), hspace=0.08)
    ax = fig.add_subplot(grid[0])
    ax.plot([0, 1], [0, 1], color=MUTED, lw=1, ls="--", label="perfect calibration")
    conf, acc = np.asarray(confidence, float), np.asarray(accuracy, float)
    lo, hi = np.array([b[0] for b in bands], float), np.array([b[1] for b in bands], float)
    over = conf > acc
    for mask, colour, label in (
        (~over, "#2563eb", "accuracy of a bin of equal size, 95% band"),
        (over, "#dc2626", "the same, over-confident"),
    ):
        if mask.any():
            ax.errorbar(
                conf[mask], acc[mask], yerr=np.vstack([acc[mask] - lo[mask], hi[mask] - acc[mask]]).clip(0),
                fmt="o", ms=4, color=colour, ecolor=colour, elinewidth=1, capsize=2, label=label,
            )  # fmt: skip
    ax.set_xlim(0.0, 1.02)  # a bin at confidence 1 shows whole
    ax.set_ylim(0.0, 1.04)
    ax.set_ylabel("accuracy")
    ax.legend(fontsize=8, frameon=False, loc="upper left")
    ax.grid(alpha=0.3)
    ax.tick_params(labelbottom=False)
    ax.spines[["top", "right"]].set_visible(False)
    below = fig.add_subplot(grid[1], sharex=ax)
    centres, numbers = histogram
    below.bar(centres, numbers, width=1 / 15 * 0.9, color=MUTED)
    below.set_xlabel("confidence (probability of the predicted class)")
    below.set_ylabel("images", fontsize=8)
    below.spines[["top", "right"]].set_visible(False)
    return to_png(fig)


def risk_coverage_figure(coverage: Sequence[float], risk: Sequence[float], overall: float) -> bytes:
    """Error rate among the images kept against the share kept, most confident first."""
    fig = _new_figure(5.2, 3.4)
    ax = fig.add_subplot()
    ax.plot(coverage, risk, color="#2563eb", lw=1.6)
    ax.axhline(overall, color=MUTED, lw=1, ls="--", label=f"error on all images ({overall:.1%})")
    ax.set_xlim(0, 1.0)
    ax.set_ylim(0, max(0.05, float(np.max(risk, initial=0.0)) * 1.3))  # room for the legend above the curve
    ax.set_xlabel("coverage (share of images kept, most confident first)")
    ax.set_ylabel("error among those kept")
    ax.xaxis.set_major_formatter(PercentFormatter(1.0))
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.legend(fontsize=8, frameon=False, loc="upper left")
    ax.grid(alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    return to_png(fig)


def robustness_figure(curves: dict[str, list[tuple[int, float]]], clean: float) -> bytes:
    """Accuracy against severity, one line per corruption, the clean accuracy dashed."""
    fig = _new_figure(5.2, 3.4)
    ax = fig.add_subplot()
    colours = ["#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c", "#0891b2"]
    for i, (name, points) in enumerate(curves.items()):
        ax.plot(
            [0, *[s for s, _ in points]],
            [clean, *[a for _, a in points]],
            marker="o", ms=3, lw=1.4, color=colours[i % len(colours)], label=name,
        )  # fmt: skip
    ax.axhline(clean, color=MUTED, lw=1, ls="--")
    ax.set_xticks([0, 1, 3, 5], ["clean", "1", "3", "5"])
    ax.set_xlabel("severity (ImageNet-C levels)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(0, 1.02)
    ax.yaxis.set_major_formatter(PercentFormatter(1.0))
    ax.legend(fontsize=8, frameon=False, loc="lower left", ncol=2)
    ax.grid(alpha=0.3)
    ax.spines[["top", "right"]].set_visible(False)
    return to_png(fig)


def faithfulness_figure(
    curves: dict[str, tuple[np.ndarray, np.ndarray]], random: tuple[np.ndarray, np.ndarray]
) -> bytes:
    """Deletion and insertion curves side by side (mean probability of the explained class
    against the share of pixels), one line per method, the random order dashed."""
    fig = _new_figure(7.2, 3.0)
    colours = ["#dc2626", "#2563eb", "#16a34a"]
    for j, (title, better) in enumerate((("deletion", "lower is better"), ("insertion", "higher is better"))):
        ax = fig.add_subplot(1, 2, j + 1)
        for i, (name, pair) in enumerate(curves.items()):
            y = pair[j]
            ax.plot(np.linspace(0, 1, len(y)), y, lw=1.6, color=colours[i % len(colours)], label=name)
        ax.plot(np.linspace(0, 1, len(random[j])), random[j], lw=1.2, ls="--", color=MUTED, label="random order")
        ax.set_title(f"{title} ({better})", fontsize=9)
        ax.set_xlabel(f"share of pixels {'removed' if j == 0 else 'restored'}, in map order")
        ax.set_ylim(0, 1.02)
        ax.xaxis.set_major_formatter(PercentFormatter(1.0))
        ax.grid(alpha=0.3)
        ax.spines[["top", "right"]].set_visible(False)
        if j == 0:
            ax.set_ylabel("p(explained class)")
            ax.legend(fontsize=8, frameon=False, loc="upper right")
    return to_png(fig)


def heat_colormap() -> ListedColormap:
    return matplotlib.colormaps["jet"]


# ------------------------------------------------------------------ t-SNE


# A GIF frame has a 256-colour palette; four go to white, black and two greys (see
# _palette), so 252 classes get colours of their own and the rest reuse them in turn.
PALETTE_CLASSES = 252
FRAME = 440  # side of a t-SNE frame, px
KEY_MS = 1400  # how long the animation rests on each layer
TWEEN_MS = 70
TWEENS = 8


def _palette(k: int) -> list[int]:
    """P-mode palette: 0 white, 1 black, 2 light grey, 3 dark grey, then class colours."""
    base = [(255, 255, 255), (0, 0, 0), (225, 228, 232), (75, 85, 99)]
    colours = [tuple(round(c * 255) for c in rgb) for rgb in class_colors(max(1, min(k, PALETTE_CLASSES)))]
    flat: list[int] = []
    for rgb in base + colours:
        flat.extend(rgb)
    return flat + [0] * (768 - len(flat))


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow without FreeType
        return ImageFont.load_default()


@literal_text
def tsne_frame(
    points: np.ndarray | None,
    colours: np.ndarray,
    wrong: np.ndarray,
    k: int,
    title: str,
    subtitle: str = "",
    limit: float = 3.0,
) -> Image.Image:
    """One frame: points coloured by class, misclassified ringed in black, a title bar."""
    from PIL import ImageDraw

    top = 44
    img = Image.new("P", (FRAME, FRAME + top), 0)
    img.putpalette(_palette(k))
    draw = ImageDraw.Draw(img)
    draw.rectangle([0, 0, FRAME, top - 1], fill=2)
    draw.text((10, 5), title[:60], fill=1, font=_font(16))
    if subtitle:
        draw.text((10, 25), subtitle[:80], fill=3, font=_font(12))
    if points is None:
        draw.text((20, top + FRAME // 2 - 10), "no embedding at this layer", fill=3, font=_font(14))
        return img
    n = len(points)
    radius = 4.0 if n <= 500 else 3.0 if n <= 2000 else 2.0 if n <= 6000 else 1.5
    margin = 10 + radius
    scale = (FRAME - 2 * margin) / (2 * limit)
    px = np.clip(margin + (points[:, 0] + limit) * scale, margin, FRAME - margin)
    py = np.clip(top + margin + (limit - points[:, 1]) * scale, top + margin, top + FRAME - margin)
    order = np.lexsort((np.arange(n), wrong))  # misclassified drawn last, on top
    for i in order:
        x, y = px[i], py[i]
        fill = 4 + int(colours[i]) % PALETTE_CLASSES if colours[i] >= 0 else 3
        if wrong[i]:
            r = radius + 1.5
            draw.ellipse([x - r, y - r, x + r, y + r], fill=1)
        draw.ellipse([x - radius, y - radius, x + radius, y + radius], fill=fill)
    return img


def _limit(frames: list[np.ndarray | None]) -> float:
    values = (
        np.concatenate([np.abs(f).ravel() for f in frames if f is not None])
        if any(f is not None for f in frames)
        else np.ones(1)
    )
    return float(values.max()) * 1.04 or 1.0


@literal_text
def tsne_animation(
    layers: list[str],
    embeddings: list[np.ndarray | None],
    subtitles: list[str],
    colours: np.ndarray,
    wrong: np.ndarray,
    k: int,
) -> tuple[bytes, list[int]]:
    """Animated GIF stepping through the layers: a key frame per layer (held
    ``KEY_MS``), with ``TWEENS`` in-between frames where points glide from one layer's
    position to the next.  Returns the GIF and the indices of the key frames."""
    limit = _limit(embeddings)
    frames: list[Image.Image] = []
    durations: list[int] = []
    keys: list[int] = []
    total = len(layers)
    for i, (name, emb) in enumerate(zip(layers, embeddings, strict=True)):
        title = f"{i + 1}/{total}  {name}"
        keys.append(len(frames))
        frames.append(tsne_frame(emb, colours, wrong, k, title, subtitles[i], limit))
        durations.append(KEY_MS)
        nxt = embeddings[i + 1] if i + 1 < total else None
        if emb is not None and nxt is not None:
            for t in range(1, TWEENS + 1):
                s = t / (TWEENS + 1)
                s = s * s * (3 - 2 * s)  # smoothstep: ease in and out
                frames.append(
                    tsne_frame((1 - s) * emb + s * nxt, colours, wrong, k, f"{title}  →  {layers[i + 1]}", "", limit)
                )
                durations.append(TWEEN_MS)
    buf = io.BytesIO()
    frames[0].save(
        buf,
        format="GIF",
        save_all=True,
        append_images=frames[1:],
        duration=durations,
        loop=0,
        optimize=False,
        disposal=1,
    )
    return buf.getvalue(), keys


@literal_text
def tsne_grid(
    layers: list[str],
    embeddings: list[np.ndarray | None],
    subtitles: list[str],
    colours: np.ndarray,
    wrong: np.ndarray,
    k: int,
) -> bytes:
    """All layers side by side, same colours as the animation."""
    n = len(layers)
    cols = min(4, n)
    rows = -(-n // cols)
    fig = _new_figure(3.2 * cols, 3.4 * rows)
    palette = class_colors(max(1, min(k, PALETTE_CLASSES)))
    limit = _limit(embeddings)
    count = len(colours)
    size = 14 if count <= 500 else 6 if count <= 2000 else 2
    for i, (name, emb) in enumerate(zip(layers, embeddings, strict=True)):
        ax = fig.add_subplot(rows, cols, i + 1)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{_short(name, 28)}\n{subtitles[i]}", fontsize=8)
        if emb is None:
            ax.text(0.5, 0.5, "no embedding", ha="center", va="center", transform=ax.transAxes, color=MUTED)
            continue
        c = palette[np.where(colours >= 0, colours % len(palette), 0)]
        ok = ~wrong
        ax.scatter(emb[ok, 0], emb[ok, 1], s=size, c=c[ok], linewidths=0)
        if wrong.any():
            ax.scatter(emb[wrong, 0], emb[wrong, 1], s=size * 2.2, c=c[wrong], edgecolors="black", linewidths=0.6)
        ax.set_xlim(-limit, limit)
        ax.set_ylim(-limit, limit)
        ax.set_aspect("equal")
    return to_png(fig)


@literal_text
def confusion_difference_figure(old: np.ndarray, new: np.ndarray, classes: Sequence[str]) -> bytes:
    """New minus old confusion, as shares of each true class (blue: more, red: fewer),
    annotated with the change in image counts when the matrix is small."""
    diff = _row_shares(new) - _row_shares(old)
    counts = new - old
    limit = max(0.05, float(np.abs(diff).max()))
    labels = np.array([[f"{c:+d}" if c else "" for c in row] for row in counts.tolist()], dtype=object)
    return _class_matrix(
        diff,
        labels,
        classes,
        cmap="RdBu",
        limits=(-limit, limit),
        colorbar="change in share of the true class",
        dark=np.abs(diff) > 0.6 * limit,
    )
