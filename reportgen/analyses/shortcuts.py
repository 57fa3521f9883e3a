"""Possible shortcuts: classes whose evidence sits in one fixed spot of the image.

A model that learned the object finds it wherever it is; a model that learned a mark, a
watermark or a border finds its evidence in the same place on every image of the class,
and nowhere in particular on the others.  Per class, from the activation maps of the
class's own images (those the model gets right, most confident first):

1. each map is normalised to unit mass and summed over the cells of a ``GRID`` x ``GRID``
   grid over the model's input: the share of evidence in each cell;
2. the class's **peak cell** is the cell with the largest mean share; **concentration**
   is that mean share (a map spread evenly gives 1 / GRID**2); **consistency** is the
   share of the class's maps whose own largest cell is the peak cell; **specificity** is
   the class's share in the peak cell over the median share in that same cell of the
   other classes' maps (evidence that sits there for every class is the dataset's
   framing, not a class's shortcut); **border share** is the mean share in the outer
   ring of cells.
3. A class is a **candidate** when its evidence is concentrated (at least
   ``MIN_CONCENTRATION`` x the even share), consistent (``MIN_CONSISTENCY``) and specific
   (``MIN_SPECIFICITY``).
4. The candidate is then **tested**: the peak cell of each of the class's images is
   swapped for the same cell of images of other classes (what the dataset holds there
   without the class; several donors, seeded) and the drop in the class's probability is
   compared with swapping ``RANDOM_CELLS`` other cells chosen at random, one at a time.  A
   class is flagged when covering its peak cell costs at least ``MIN_DROP`` of
   probability and at least ``MIN_DROP_RATIO`` x what covering another cell costs.

Steps 1-3 are here; step 4 needs the model (``reportgen.sections.shortcuts``), and its
arithmetic is :func:`occlusion_verdict`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GRID = 4  # 16 cells: small enough that a corner mark fills one, large enough to count on
MIN_CONCENTRATION = 3.0  # x the even share 1 / GRID**2
MIN_CONSISTENCY = 0.5  # at least half of the class's maps peak in the same cell
MIN_SPECIFICITY = 2.0  # twice the other classes' median share in that cell
MIN_MAPS = 4  # fewer maps than this say nothing about consistency
RANDOM_CELLS = 3
MIN_DROP = 0.2  # probability lost when the spot is covered
MIN_DROP_RATIO = 2.0  # ... and that many times what covering another cell loses


@dataclass
class ClassEvidence:
    """Where one class's evidence lies, from ``n_maps`` maps of its own images."""

    cls: int
    n_maps: int
    mean_share: np.ndarray  # (GRID, GRID) mean share of map mass per cell
    peak: tuple[int, int]  # (row, column) of the peak cell
    concentration: float  # mean share in the peak cell
    consistency: float  # share of maps whose largest cell is the peak cell
    specificity: float  # concentration over the other classes' median share there (inf when theirs is 0)
    border_share: float  # mean share in the outer ring of cells

    @property
    def candidate(self) -> bool:
        return (
            self.n_maps >= MIN_MAPS
            and self.concentration >= MIN_CONCENTRATION / GRID**2
            and self.consistency >= MIN_CONSISTENCY
            and self.specificity >= MIN_SPECIFICITY
        )


def cell_shares(maps: np.ndarray, grid: int = GRID) -> np.ndarray:
    """(N, H, W) non-negative maps -> (N, grid, grid) share of each map's mass per cell
    (cell edges at round(i * H / grid)); an all-zero map gives all-zero shares."""
    _, h, w = maps.shape
    ys = np.round(np.linspace(0, h, grid + 1)).astype(int)
    xs = np.round(np.linspace(0, w, grid + 1)).astype(int)
    sums = np.add.reduceat(np.add.reduceat(maps.astype(np.float64), ys[:-1], axis=1), xs[:-1], axis=2)
    total = sums.sum(axis=(1, 2), keepdims=True)
    return np.divide(sums, total, out=np.zeros_like(sums), where=total > 0)


def cell_box(cell: tuple[int, int], size: tuple[int, int], grid: int = GRID) -> tuple[int, int, int, int]:
    """Pixel box (x0, y0, x1, y1), x1/y1 exclusive, of a grid cell in an input of ``size`` (H, W)."""
    h, w = size
    ys = np.round(np.linspace(0, h, grid + 1)).astype(int)
    xs = np.round(np.linspace(0, w, grid + 1)).astype(int)
    r, c = cell
    return int(xs[c]), int(ys[r]), int(xs[c + 1]), int(ys[r + 1])


def describe_cell(cell: tuple[int, int], grid: int = GRID) -> str:
    """Where a cell lies, in words: 'top-left corner', 'bottom edge', 'centre', ..."""
    r, c = cell
    vertical = "top" if r == 0 else "bottom" if r == grid - 1 else None
    horizontal = "left" if c == 0 else "right" if c == grid - 1 else None
    if vertical and horizontal:
        return f"{vertical}-{horizontal} corner"
    if vertical or horizontal:
        return f"{vertical or horizontal} edge"
    return "centre"


def class_evidence(shares_by_class: dict[int, np.ndarray]) -> list[ClassEvidence]:
    """Per class (key: output index; value: (n, GRID, GRID) cell shares of its maps),
    where its evidence lies and how specific that is to it (see the module docstring)."""
    means = {c: s.mean(axis=0) for c, s in shares_by_class.items() if len(s)}
    out = []
    for cls, shares in sorted(shares_by_class.items()):
        if not len(shares):
            continue
        mean = means[cls]
        grid = mean.shape[0]
        peak = tuple(int(v) for v in np.unravel_index(int(np.argmax(mean)), mean.shape))
        own_peaks = shares.reshape(len(shares), -1).argmax(axis=1)
        consistency = float(np.mean(own_peaks == peak[0] * grid + peak[1]))
        others = [m[peak] for c, m in means.items() if c != cls]
        theirs = float(np.median(others)) if others else 1.0 / grid**2
        concentration = float(mean[peak])
        ring = np.ones((grid, grid), bool)
        ring[1:-1, 1:-1] = False
        out.append(
            ClassEvidence(
                cls=cls,
                n_maps=len(shares),
                mean_share=mean,
                peak=(peak[0], peak[1]),
                concentration=concentration,
                consistency=consistency,
                specificity=concentration / theirs if theirs > 0 else float("inf"),
                border_share=float(mean[ring].sum()),
            )
        )
    return out


def occlusion_verdict(p_before: np.ndarray, p_spot: np.ndarray, p_random: np.ndarray) -> tuple[float, float, bool]:
    """Mean probability drop when the spot is covered, when another cell is, and whether
    that flags a shortcut.  ``p_before``, ``p_spot``: (n,); ``p_random``: (n, RANDOM_CELLS)."""
    drop = float(np.mean(p_before - p_spot))
    other = float(np.mean(p_before[:, None] - p_random))
    flagged = drop >= MIN_DROP and drop >= MIN_DROP_RATIO * max(other, 0.0)
    return drop, other, flagged


def random_cells(peak: tuple[int, int], rng: np.random.Generator, count: int = RANDOM_CELLS) -> list[tuple[int, int]]:
    """``count`` distinct cells other than ``peak``, drawn with ``rng``."""
    cells = [(r, c) for r in range(GRID) for c in range(GRID) if (r, c) != peak]
    picks = rng.choice(len(cells), size=min(count, len(cells)), replace=False)
    return [cells[int(i)] for i in picks]
