"""Error slices: groups of images, found without being named, on which the model does
much worse than overall, and what sets each apart.

How a slice is found (in the spirit of Domino, Eyuboglu et al. 2022):

1. Each image is described by two layers (the penultimate one and one earlier, which
   still holds what the last layers discard: lighting, texture, framing), each projected
   on its leading principal axes and scaled to the same total variance.
2. The labeled images are split in two halves.  On each half a mixture is fitted whose
   components model the features (a Gaussian with diagonal covariance), the true class (a
   categorical) and whether the model was wrong (a Bernoulli), the last two weighted up so
   that components gather the errors where the features let them.
3. Every image is assigned to a component by its features and true class only, never by
   whether it was wrong; a component is a slice when, on the *other* half (the images the
   fit never saw), its error rate is significantly above that half's overall rate (a
   one-sided binomial test at 5%, Bonferroni-corrected for the components of both fits) and
   it has at least ``min_size`` members.  Testing on images the fit did not see is what
   keeps a mixture that merely gathered chance errors from being reported.
4. The slices of both fits are ranked by the errors they hold beyond the overall rate;
   the other fit's finding of a kept slice's group is merged into it, and any other
   candidate loses the members of better ones and must pass the test again on what is left.
   Slices of one failure mode (mostly one class, the same commonest mistake) are then one.

Each slice is then described by what can be measured without a text model: the class
mix, the image properties (``image_stats.PROPERTIES``) and the sub-folders whose share
differs from the rest's, each with an effect size (Cohen's d for numbers, Cohen's h for
shares: 0.2 small, 0.5 medium, 0.8 large).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from scipy import stats

from reportgen.image_stats import PROPERTIES
from reportgen.util import ROW_BLOCK

PCA_DIMS = 16  # principal axes kept per layer
PCA_SAMPLE = 10_000  # rows the axes are estimated from
FIT_ROWS = 20_000  # rows of each half the mixture is fitted on
ERROR_WEIGHT = 8.0  # weight of the correctness term in the mixture's likelihood
CLASS_WEIGHT = 4.0  # weight of the true class term
MERGE = 0.5  # two fits' slices sharing this share of the smaller one are one group
PRED_WEIGHT = 4.0  # weight of the predicted class term (the fit only: it tells failure modes apart)
MAX_COMPONENTS = 32
ALPHA = 0.05
EM_ITERATIONS = 100
SHOWN_SLICES = 6
MIN_ERRORS = 5  # fewer errors than this among the labeled images: nothing to look for
MIN_LABELED = 40
DESCRIBE_EFFECT = 0.5  # a property is named in the description from this effect size up
MAX_METADATA_VALUES = 30  # a metadata column with more distinct values is an identifier, not a description


@dataclass
class SliceProperty:
    """How one property of the slice's images compares with the rest's."""

    name: str  # a PROPERTIES entry, "aspect", "folder <path>" or "meta <column>=<value>"
    slice_mean: float  # mean value, or for a folder or metadata value the share of the slice's images with it
    rest_mean: float
    effect: float  # Cohen's d (numbers) or h (shares); positive: higher in the slice


@dataclass
class ClassShare:
    name: str
    count: int  # images of the slice labeled this class
    errors: int
    rest_share: float  # share of the other labeled images labeled this class


@dataclass
class Slice:
    """One group of images on which the model does worse, and how it stands out."""

    rows: np.ndarray  # row indices (into the audited images) of the members
    errors: int
    accuracy: float
    ci: tuple[float, float]  # Wilson 95% interval of the accuracy
    held_out_size: int  # members in the half the fit did not see
    held_out_accuracy: float
    p_value: float  # one-sided binomial test on the held-out members (before the correction)
    excess_errors: float  # errors beyond what the overall error rate predicts
    classes: list[ClassShare]
    properties: list[SliceProperty]  # by decreasing |effect|
    confusion: tuple[str, str, int] | None  # the commonest mistake: (true, predicted, count)

    @property
    def size(self) -> int:
        return len(self.rows)

    def description(self) -> str:
        """One line: what the members share, in words, the largest effects first."""
        parts = []
        top = self.classes[0] if self.classes else None
        if top is not None and top.count >= 0.6 * self.size:
            parts.append(f"mostly {top.name} ({top.count / self.size:.0%})")
        elif top is not None:
            parts.append("classes " + ", ".join(f"{c.name} ({c.count / self.size:.0%})" for c in self.classes[:3]))
        if self.confusion is not None:
            true, predicted, count = self.confusion
            parts.append(f"{count} of its {self.errors} errors are {true} taken for {predicted}")
        strong = [p for p in self.properties if abs(p.effect) >= DESCRIBE_EFFECT]
        # Folders and metadata first (the most direct answer to "which images?"), then the
        # measurements.
        parts += [describe_property(p) for p in strong if p.name.startswith(("folder ", "meta "))][:2]
        parts += [describe_property(p) for p in strong if not p.name.startswith(("folder ", "meta "))][:3]
        return "; ".join(parts) if parts else "no measured property sets it apart"


@dataclass
class SliceSearch:
    """The slices found (most excess errors first) and what the search looked at."""

    slices: list[Slice]
    overall_accuracy: float
    labeled: int
    layers: list[str]
    components: int  # mixture components per half
    min_size: int
    tested: int  # candidate components tested (the Bonferroni divisor is per half)
    properties: bool  # whether image properties were available to describe them
    note: str = ""
    dropped_overlapping: int = 0  # candidates that did not pass again without a better slice's members


_WORDS = {
    "brightness": ("darker", "brighter"),
    "contrast": ("lower contrast", "higher contrast"),
    "colourfulness": ("less colourful", "more colourful"),
    "sharpness": ("blurrier", "sharper"),
    "width": ("narrower originals", "wider originals"),
    "height": ("shorter originals", "taller originals"),
    "aspect": ("taller in shape", "wider in shape"),
    "exif": ("less often with EXIF", "more often with EXIF"),
}


def describe_property(p: SliceProperty) -> str:
    """A property's difference in words, with the numbers and the effect size."""
    if p.name.startswith("folder "):
        return f"{p.slice_mean:.0%} from {p.name[7:]}/ (rest {p.rest_mean:.0%}, h = {p.effect:+.1f})"
    if p.name.startswith("meta "):
        column, _, value = p.name[5:].partition("=")
        return f"{p.slice_mean:.0%} with {column} {value} (rest {p.rest_mean:.0%}, h = {p.effect:+.1f})"
    low, high = _WORDS.get(p.name, (f"lower {p.name}", f"higher {p.name}"))
    word = high if p.effect > 0 else low
    if p.name in ("width", "height"):
        values = f"{p.slice_mean:.0f} px vs {p.rest_mean:.0f}"
    elif p.name == "exif":
        values = f"{p.slice_mean:.0%} vs {p.rest_mean:.0%}"
    else:
        values = f"{p.name} {p.slice_mean:.2f} vs {p.rest_mean:.2f}"
    return f"{word} ({values}, d = {p.effect:+.1f})"


def wilson(successes: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """Wilson score interval of a proportion (95% by default)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * np.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return (float(max(0.0, centre - half)), float(min(1.0, centre + half)))


# ------------------------------------------------------------------ representation


def leading_axes(centred: np.ndarray, dims: int, rng: np.random.Generator) -> np.ndarray:
    """(D, dims) leading principal axes of centred rows by a randomised range finder
    (Halko et al. 2011, two power iterations): exact enough to cluster on, and linear in
    D where an eigendecomposition of a 25,000-wide layer's covariance is not.  Each axis
    is signed so that its largest loading is positive."""
    n, d = centred.shape
    k = min(dims, n, d)
    if d <= 4 * k + 8:
        values, vectors = np.linalg.eigh(centred.T @ centred)
        axes = vectors[:, np.argsort(values)[::-1][:k]]
    else:
        probe = rng.standard_normal((d, k + 10))
        q, _ = np.linalg.qr(centred @ probe)
        for _ in range(2):
            q, _ = np.linalg.qr(centred.T @ q)
            q, _ = np.linalg.qr(centred @ q)
        _, _, vt = np.linalg.svd(q.T @ centred, full_matrices=False)
        axes = vt[:k].T
    signs = np.sign(axes[np.abs(axes).argmax(axis=0), np.arange(axes.shape[1])])
    signs[signs == 0] = 1
    return axes * signs


def embed(layer: np.ndarray, rows: np.ndarray, rng: np.random.Generator, dims: int = PCA_DIMS) -> np.ndarray:
    """(len(rows), dims) float64: those rows of a (possibly memory-mapped) layer on their
    leading principal axes, read a block at a time, scaled so that the block's mean
    variance per axis is 1 (two layers then weigh the same whatever their scale)."""
    n = len(rows)
    sample = np.sort(rng.choice(n, size=min(n, PCA_SAMPLE), replace=False))
    picked = np.asarray(layer[rows[sample]], np.float64)
    mean = picked.mean(axis=0)
    axes = leading_axes(picked - mean, dims, rng)
    out = np.empty((n, axes.shape[1]))
    for s in range(0, n, ROW_BLOCK):
        out[s : s + ROW_BLOCK] = (np.asarray(layer[rows[s : s + ROW_BLOCK]], np.float64) - mean) @ axes
    scale = np.sqrt(out[sample].var(axis=0).mean())
    return out / scale if scale > 0 else out


# ------------------------------------------------------------------ the mixture


@dataclass
class Mixture:
    """A fitted mixture: per component its weight, the features' diagonal Gaussian, the
    probability of an error and the distribution of the true class."""

    log_weight: np.ndarray  # (K,)
    mean: np.ndarray  # (K, D)
    var: np.ndarray  # (K, D)
    error: np.ndarray  # (K,) P(wrong | component)
    classes: np.ndarray  # (K, C) P(true class | component)

    def log_features(self, z: np.ndarray) -> np.ndarray:
        """(N, K) log density of the features under each component, with its weight."""
        inv = 1.0 / self.var
        quad = (z**2) @ inv.T - 2 * z @ (self.mean * inv).T + (self.mean**2 * inv).sum(axis=1)
        return self.log_weight - 0.5 * (quad + np.log(2 * np.pi * self.var).sum(axis=1))

    def assign(self, z: np.ndarray, truth: np.ndarray) -> np.ndarray:
        """Each row's component by its features and true class (not by its correctness)."""
        out = np.empty(len(z), np.int64)
        log_classes = np.log(self.classes)
        for s in range(0, len(z), 65_536):
            part = self.log_features(z[s : s + 65_536]) + CLASS_WEIGHT * log_classes[:, truth[s : s + 65_536]].T
            out[s : s + 65_536] = part.argmax(axis=1)
        return out


def _kmeans_pp(z: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """k-means++ seeding: k row indices, spread out."""
    chosen = [int(rng.integers(len(z)))]
    d2 = ((z - z[chosen[0]]) ** 2).sum(axis=1)
    for _ in range(1, k):
        total = d2.sum()
        pick = int(rng.choice(len(z), p=d2 / total)) if total > 0 else int(rng.integers(len(z)))
        chosen.append(pick)
        d2 = np.minimum(d2, ((z - z[pick]) ** 2).sum(axis=1))
    return np.array(chosen)


def fit_mixture(z: np.ndarray, truth: np.ndarray, pred: np.ndarray, k: int, n_classes: int, seed: int) -> Mixture:
    """EM for the error-aware mixture (features, true class, correctness, predicted class),
    seeded by k-means++ on the features.  The class, correctness and prediction terms enter
    the responsibilities with weights :data:`CLASS_WEIGHT`, :data:`ERROR_WEIGHT` and
    :data:`PRED_WEIGHT`; the prediction term tells two ways of failing on one class apart
    (a 3 taken for an 8 is not a 3 taken for a 2)."""
    wrong = pred != truth
    rng = np.random.default_rng(seed)
    n = len(z)
    floor = 1e-3 * max(float(z.var(axis=0).mean()), 1e-12)
    centres = z[_kmeans_pp(z, k, rng)]
    resp = np.zeros((n, k))
    resp[np.arange(n), ((z[:, None, :] - centres[None]) ** 2).sum(axis=2).argmin(axis=1)] = 1.0
    onehot = np.zeros((n, n_classes))
    onehot[np.arange(n), truth] = 1.0
    predicted = np.zeros((n, n_classes))
    predicted[np.arange(n), pred] = 1.0
    w = wrong.astype(np.float64)
    previous = -np.inf
    mix = None
    for _ in range(EM_ITERATIONS):
        nk = resp.sum(axis=0) + 1e-10
        mean = (resp.T @ z) / nk[:, None]
        var = np.maximum((resp.T @ z**2) / nk[:, None] - mean**2, floor)
        error = (resp.T @ w + 0.5) / (nk + 1.0)
        classes = (resp.T @ onehot + 0.1) / (nk[:, None] + 0.1 * n_classes)
        guesses = (resp.T @ predicted + 0.1) / (nk[:, None] + 0.1 * n_classes)
        mix = Mixture(np.log(nk / n), mean, var, error, classes)
        log_r = (
            mix.log_features(z)
            + CLASS_WEIGHT * np.log(classes)[:, truth].T
            + PRED_WEIGHT * np.log(guesses)[:, pred].T
            + ERROR_WEIGHT * (w[:, None] * np.log(error) + (1 - w[:, None]) * np.log1p(-error))
        )
        top = log_r.max(axis=1, keepdims=True)
        total = top[:, 0] + np.log(np.exp(log_r - top).sum(axis=1))
        resp = np.exp(log_r - total[:, None])
        ll = float(total.mean())
        if ll - previous < 1e-6 * max(1.0, abs(ll)):
            break
        previous = ll
    assert mix is not None
    return mix


# ------------------------------------------------------------------ search


def find_slices(
    layers: list[np.ndarray],
    layer_names: list[str],
    truth: np.ndarray,
    pred: np.ndarray,
    class_names: list[str],
    *,
    files: list[str],
    image_stats: np.ndarray | None,
    metadata: dict[str, list[str | None]] | None = None,
    seed: int = 0,
    min_size: int | None = None,
) -> SliceSearch:
    """Slices among the labeled rows (``truth >= 0``) where the model errs significantly
    more than overall (see the module's description).  ``metadata`` (column -> one value
    per row, None where missing) describes slices by the values their members share."""
    labeled = np.flatnonzero(truth >= 0)
    n = len(labeled)
    wrong_all = pred != truth
    errors = int(wrong_all[labeled].sum())
    overall = 1.0 - errors / n if n else float("nan")
    min_size = min_size or max(10, int(np.ceil(0.005 * n)))
    # Enough components for a class to hold more than one group (twice the classes), and
    # more as the images grow; each half's fit has at least 8 images per component.
    k = int(np.clip(max(2 * len(class_names), round(np.sqrt(n / 8))), 2, min(MAX_COMPONENTS, max(2, n // 16))))
    search = SliceSearch([], overall, n, layer_names, k, min_size, 0, image_stats is not None)
    if n < MIN_LABELED or errors < MIN_ERRORS or errors == n:
        search.note = (
            f"{n} labeled images with {errors} errors: too few to look for slices "
            f"(at least {MIN_LABELED} labeled and {MIN_ERRORS} errors, and some right)"
        )
        return search
    rng = np.random.default_rng(seed)
    blocks = [embed(layer, labeled, rng) for layer in layers]
    z = np.concatenate(blocks, axis=1)
    y = truth[labeled]
    p_ = pred[labeled]
    wrong = wrong_all[labeled]
    order = rng.permutation(n)
    halves = (np.sort(order[: n // 2]), np.sort(order[n // 2 :]))
    candidates: list[_Candidate] = []
    for fold, (fit_on, test_on) in enumerate((halves, halves[::-1])):
        fit_rows = fit_on if len(fit_on) <= FIT_ROWS else np.sort(rng.choice(fit_on, FIT_ROWS, replace=False))
        mix = fit_mixture(z[fit_rows], y[fit_rows], p_[fit_rows], k, len(class_names), seed + 1 + fold)
        component = mix.assign(z, y)
        in_test = np.zeros(n, bool)
        in_test[test_on] = True
        test_rate = float(wrong[test_on].mean())
        for c in range(k):
            search.tested += 1
            cand = _Candidate(np.flatnonzero(component == c), fold, in_test, test_rate)
            if cand.passes(wrong, min_size, ALPHA / (2 * k)):
                candidates.append(cand)
    # Greedily, most excess errors first.  The fit on the other half often finds the same
    # group again, its members assigned a little differently: a candidate that mostly
    # overlaps a kept slice of the other fit is merged into it (the union is the group as
    # both fits see it).  Any other candidate loses the members already kept and must pass
    # again on what is left, so the slices are disjoint and each stands on its own images.
    rate = errors / n
    taken = np.zeros(n, bool)
    kept: list[_Candidate] = []
    for cand in sorted(candidates, key=lambda c: (-c.excess(wrong, rate), c.p, len(c.members))):
        twin = max(
            (k_ for k_ in kept if k_.fold != cand.fold),
            key=lambda k_: np.intersect1d(k_.members, cand.members).size,
            default=None,
        )
        if twin is not None:
            shared = np.intersect1d(twin.members, cand.members).size
            if shared >= MERGE * min(len(twin.members), len(cand.members)) and not twin.merged:
                extra = cand.members[~taken[cand.members]]
                twin.members = np.union1d(twin.members, extra)
                twin.merged = True
                taken[extra] = True
                continue
        cand.members = cand.members[~taken[cand.members]]
        if not cand.passes(wrong, min_size, ALPHA / (2 * k)):
            search.dropped_overlapping += 1
            continue
        taken[cand.members] = True
        kept.append(cand)
    kept = _merge_same_failures(kept, y, p_, wrong, rate)
    for cand in kept[:SHOWN_SLICES]:
        members = cand.members
        held = cand.tested  # what the test saw: members merged in later were seen by the other fit
        held_errors = int(wrong[held].sum())
        rows = labeled[members]
        mistakes = int(wrong[members].sum())
        search.slices.append(
            Slice(
                rows=rows,
                errors=mistakes,
                accuracy=1.0 - mistakes / len(rows),
                ci=wilson(len(rows) - mistakes, len(rows)),
                held_out_size=len(held),
                held_out_accuracy=1.0 - held_errors / len(held),
                p_value=cand.p,
                excess_errors=float(mistakes - rate * len(rows)),
                classes=_class_mix(y, wrong, members, class_names),
                properties=_properties(labeled, members, files, image_stats, set(class_names), metadata),
                confusion=_commonest_mistake(y[members], pred[rows], class_names),
            )
        )
    return search


@dataclass
class _Candidate:
    """A mixture component's members, and the test on those the fit did not see."""

    members: np.ndarray  # positions among the labeled rows
    fold: int  # which half's fit found it
    in_test: np.ndarray  # (n,) bool: the half the fit did not see
    test_rate: float  # that half's error rate
    p: float = 1.0
    merged: bool = False  # the other fit's finding of the same group has been merged in
    tested: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))  # the held-out members it passed on

    @property
    def held(self) -> np.ndarray:
        return self.members[self.in_test[self.members]]

    def excess(self, wrong: np.ndarray, rate: float) -> float:
        return float(wrong[self.members].sum() - rate * len(self.members))

    def passes(self, wrong: np.ndarray, min_size: int, alpha: float) -> bool:
        """Large enough, and erring significantly more than the held-out half overall."""
        held = self.tested = self.held
        if len(self.members) < min_size or len(held) < max(3, min_size // 4):
            return False
        held_errors = int(wrong[held].sum())
        self.p = float(stats.binom.sf(held_errors - 1, len(held), self.test_rate))
        return self.p < alpha and held_errors > self.test_rate * len(held)


def _merge_same_failures(
    kept: list[_Candidate], y: np.ndarray, pred: np.ndarray, wrong: np.ndarray, rate: float
) -> list[_Candidate]:
    """One slice per failure mode: slices whose images are mostly (60%) of the same class
    and whose commonest mistake is the same (a 3 taken for an 8) are merged, the best one
    keeping its test.  A mixture with components to spare splits a group along some
    feature; shown twice, the same sentence would only read as two problems."""
    out: list[_Candidate] = []
    modes: dict[tuple[int, int, int], _Candidate] = {}
    for cand in sorted(kept, key=lambda c: (-c.excess(wrong, rate), c.p)):
        classes, counts = np.unique(y[cand.members], return_counts=True)
        bad = cand.members[wrong[cand.members]]
        if counts.max() < 0.6 * len(cand.members) or not len(bad):
            out.append(cand)
            continue
        pairs, times = np.unique(np.stack([y[bad], pred[bad]], axis=1), axis=0, return_counts=True)
        mode = (int(classes[counts.argmax()]), *(int(v) for v in pairs[times.argmax()]))
        if mode in modes:
            first = modes[mode]
            first.members = np.union1d(first.members, cand.members)
            continue
        modes[mode] = cand
        out.append(cand)
    out.sort(key=lambda c: (-c.excess(wrong, rate), c.p))
    return out


def _class_mix(y: np.ndarray, wrong: np.ndarray, members: np.ndarray, names: list[str]) -> list[ClassShare]:
    inside = np.zeros(len(y), bool)
    inside[members] = True
    rest = y[~inside]
    out = []
    for c in np.unique(y[members]):
        mask = y[members] == c
        share = float((rest == c).mean()) if len(rest) else 0.0
        out.append(ClassShare(names[int(c)], int(mask.sum()), int(wrong[members][mask].sum()), share))
    out.sort(key=lambda s: (-s.count, s.name))
    return out


def _commonest_mistake(y: np.ndarray, pred: np.ndarray, names: list[str]) -> tuple[str, str, int] | None:
    pairs = [(int(t), int(p)) for t, p in zip(y, pred, strict=True) if t != p]
    if not pairs:
        return None
    values, counts = np.unique(np.array(pairs), axis=0, return_counts=True)
    best = int(np.lexsort((values[:, 1], values[:, 0], -counts))[0])
    return names[values[best, 0]], names[values[best, 1]], int(counts[best])


def cohen_d(a: np.ndarray, b: np.ndarray) -> float:
    """Standardised mean difference (a - b) over the pooled standard deviation; 0 when
    neither group varies and their means agree."""
    if len(a) < 2 or len(b) < 2:
        return 0.0
    pooled = np.sqrt(((len(a) - 1) * a.var(ddof=1) + (len(b) - 1) * b.var(ddof=1)) / (len(a) + len(b) - 2))
    diff = float(a.mean() - b.mean())
    if pooled == 0:  # both groups constant: any difference is total (a finite stand-in for infinity)
        return 0.0 if diff == 0 else float(np.sign(diff) * 99.0)
    return diff / float(pooled)


def cohen_h(p1: float, p2: float) -> float:
    """Effect size of a difference between two proportions (Cohen's h)."""
    return float(2 * np.arcsin(np.sqrt(p1)) - 2 * np.arcsin(np.sqrt(p2)))


def folder_of(file: str) -> str:
    """The folder of an audited file, relative to the audited folder ('' at its top)."""
    return file.rsplit("/", 1)[0] if "/" in file else ""


def _properties(
    labeled: np.ndarray,
    members: np.ndarray,
    files: list[str],
    image_stats: np.ndarray | None,
    classes: set[str],
    metadata: dict[str, list[str | None]] | None = None,
) -> list[SliceProperty]:
    inside = np.zeros(len(labeled), bool)
    inside[members] = True
    out = []
    if image_stats is not None:
        values = np.asarray(image_stats, np.float64)[labeled]
        columns = {name: values[:, i] for i, name in enumerate(PROPERTIES)}
        columns["aspect"] = columns["width"] / np.maximum(columns["height"], 1.0)
        for name, column in columns.items():
            a, b = column[inside], column[~inside]
            out.append(SliceProperty(name, float(a.mean()), float(b.mean()) if len(b) else float("nan"), cohen_d(a, b)))
    folders = np.array([folder_of(files[i]) for i in labeled])
    distinct = np.unique(folders)
    if len(distinct) > 1:
        for value in np.unique(folders[inside]):
            if value in classes:
                continue  # a class's own folder: the class mix already says it
            share_in = float((folders[inside] == value).mean())
            share_out = float((folders[~inside] == value).mean()) if (~inside).any() else 0.0
            out.append(SliceProperty(f"folder {value or '.'}", share_in, share_out, cohen_h(share_in, share_out)))
    for column, values in (metadata or {}).items():
        column_values = np.array([values[i] for i in labeled], dtype=object)
        given = np.array([v is not None for v in column_values])
        if len({v for v in column_values[given]}) > MAX_METADATA_VALUES:
            continue  # an identifier: every value is its own tiny group
        for value in sorted({v for v in column_values[inside & given]}):
            share_in = float((column_values[inside] == value).mean())
            share_out = float((column_values[~inside] == value).mean()) if (~inside).any() else 0.0
            out.append(SliceProperty(f"meta {column}={value}", share_in, share_out, cohen_h(share_in, share_out)))
    out.sort(key=lambda p: (-abs(p.effect), p.name))
    return out
