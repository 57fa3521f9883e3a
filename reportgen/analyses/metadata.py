"""Accuracy broken down by each metadata column of a manifest (site, camera, patient
age, ...): where the model fails, by what the data says about each image.

A column is *numeric* when every value given is a number and there are more than
:data:`MAX_CATEGORIES` distinct ones: it is cut into :data:`BINS` bins of about equal
numbers of images (quantiles).  Otherwise it is *categorical*: each value with at least
:data:`MIN_SUPPORT` labelled images is a group; the rarer ones are pooled as "other".  A
column whose values are nearly all distinct (an id: a patient, a file) has no group
large enough and is reported as such -- ``--group-by`` is the tool for it.

Each group's accuracy comes with a Wilson 95% interval and a two-sided Fisher exact test
against the rest of the column's images; a group is flagged *worse* when its accuracy is
below the rest's and the p-value is below 0.05 divided by the number of groups tested
over every column (Bonferroni).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import stats

from reportgen.analyses.slices import wilson

MIN_SUPPORT = 10  # labelled images a value needs to be a group of its own
MAX_CATEGORIES = 20  # more distinct numbers than this make a column numeric
MAX_GROUPS = 30  # categorical groups shown per column (the rest pooled)
BINS = 5
ALPHA = 0.05


@dataclass
class Group:
    value: str  # the category, "other (k values)", or a numeric range "[a, b)"
    n: int
    correct: int
    ci: tuple[float, float]
    p_value: float  # against the rest of the column's images
    rest_accuracy: float | None  # of the column's other images (None: there are none)
    worse: bool = False

    @property
    def accuracy(self) -> float:
        return self.correct / self.n if self.n else 0.0


@dataclass
class ColumnBreakdown:
    column: str
    kind: str  # "categorical", "numeric", or "identifier" (no group large enough)
    groups: list[Group]
    missing: int  # labelled images without a value
    distinct: int  # distinct values among the labelled images

    @property
    def spread(self) -> float:
        """Best group's accuracy minus the worst's (0 with fewer than two groups)."""
        acc = [g.accuracy for g in self.groups]
        return max(acc) - min(acc) if len(acc) > 1 else 0.0


def _number(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, str):
        try:
            x = float(value)
        except ValueError:
            return None
        return x if math.isfinite(x) else None
    return None


def _missing(value: object) -> bool:
    return (
        value is None
        or (isinstance(value, str) and not value.strip())
        or (isinstance(value, float) and math.isnan(value))
    )


def _text(value: object) -> str:
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def _group(value: str, mask: np.ndarray, correct: np.ndarray, given: np.ndarray) -> Group:
    n, right = int(mask.sum()), int(correct[mask].sum())
    rest = given & ~mask
    rn, rright = int(rest.sum()), int(correct[rest].sum())
    p = 1.0
    if rn:
        p = float(stats.fisher_exact([[right, n - right], [rright, rn - rright]]).pvalue)
    return Group(value, n, right, wilson(right, n), p, rright / rn if rn else None)


def column_breakdown(column: str, values: list[object], correct: np.ndarray) -> ColumnBreakdown:
    """One column over the labelled images: ``values[i]`` and ``correct[i]`` (bool)."""
    given = np.array([not _missing(v) for v in values], bool)
    missing = int((~given).sum())
    present = [v for v, g in zip(values, given, strict=True) if g]
    numbers = [_number(v) for v in present]
    distinct = len({_text(v) for v in present})
    groups: list[Group] = []
    if present and all(x is not None for x in numbers) and distinct > MAX_CATEGORIES:
        x = np.full(len(values), np.nan)
        x[given] = np.array(numbers, float)
        edges = np.unique(np.quantile(x[given], np.linspace(0, 1, BINS + 1)))
        for i in range(len(edges) - 1):
            last = i == len(edges) - 2
            lo, hi = edges[i], edges[i + 1]
            mask = given & (x >= lo) & ((x <= hi) if last else (x < hi))
            if mask.any():
                label = f"[{_fmt(lo)}, {_fmt(hi)}{']' if last else ')'}"
                groups.append(_group(label, mask, correct, given))
        return ColumnBreakdown(column, "numeric", groups, missing, distinct)
    text = np.array([_text(v) if g else "" for v, g in zip(values, given, strict=True)], dtype=object)
    names, counts = np.unique(text[given], return_counts=True) if present else (np.array([]), np.array([]))
    order = sorted(zip(names, counts, strict=True), key=lambda t: (-t[1], t[0]))
    large = [name for name, count in order if count >= MIN_SUPPORT][:MAX_GROUPS]
    if not large:
        return ColumnBreakdown(column, "identifier", [], missing, distinct)
    for name in large:
        groups.append(_group(str(name), given & (text == name), correct, given))
    others = given & ~np.isin(text, large)
    if others.any():
        rare = len(names) - len(large)
        groups.append(_group(f"other ({rare} value{'s' if rare != 1 else ''})", others, correct, given))
    return ColumnBreakdown(column, "categorical", groups, missing, distinct)


def metadata_breakdown(columns: dict[str, list[object]], correct: np.ndarray) -> list[ColumnBreakdown]:
    """Every column's breakdown, groups flagged *worse* under a Bonferroni correction over
    all the groups tested."""
    out = [column_breakdown(name, values, correct) for name, values in columns.items()]
    tests = sum(len(c.groups) for c in out)
    for c in out:
        for g in c.groups:
            below = g.rest_accuracy is not None and g.accuracy < g.rest_accuracy
            g.worse = below and g.p_value < ALPHA / max(1, tests)
    return out
