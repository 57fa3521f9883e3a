"""Calibration: whether the model's confidence says how often it is right.

Every figure reads the labelled images only.  *Confidence* is the probability of the
predicted class.  Definitions (as the papers that report them):

- **ECE** (Guo et al. 2017): confidences in 15 equal-width bins ``(i/15, (i+1)/15]`` (0
  in the first); the mean of ``|accuracy - mean confidence|`` over bins, weighted by the
  share of images in each.
- **Adaptive ECE** (Nixon et al. 2019): the same over 15 equal-mass bins (images sorted
  by confidence, split into 15 runs of nearly equal size).
- **Class-wise ECE** (Kull et al. 2019): for each class, its probability against "is the
  class" in 15 equal-width bins; the mean over classes.
- **Brier score**: the squared distance between the probability vector and the one-hot
  truth, summed over classes, averaged over images (0 perfect, 2 worst).
- **NLL**: the mean of ``-log p(true class)``, from the model's scores (logits where the
  model gives them, so that a confident mistake costs what it costs, not a clipped log).
- **Temperature** (Guo et al. 2017): the one scalar ``T`` by which dividing the logits
  minimises the NLL on these images.  It is a recommendation: the figure it would give
  (``ece_after_temperature``) is cross-validated (fitted on 4/5 of the images, measured
  on the other 5th, five times), so the report never grades its own fit.
- **Risk-coverage** (El-Yaniv and Wiener 2010): set aside the least confident images;
  the error rate among the rest (risk) against the share kept (coverage).
  ``coverage_at_error[e]`` is the largest share that can be kept at an error rate of at
  most ``e`` (cut only between distinct confidences, as a threshold on confidence can).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ECE_BINS = 15
FOLDS = 5
MIN_FOR_TEMPERATURE = 50  # fewer labelled images give a temperature that says nothing
FIT_ROWS = 50_000  # the temperature is fitted on at most this many images (a seeded sample)
BOOTSTRAP = 1000  # resamples per reliability bin
COVERAGE_ERRORS = (0.01, 0.02, 0.05)
CURVE_POINTS = 200  # risk-coverage points kept for the picture and the JSON
WELL_CALIBRATED = 0.02  # an ECE below this is called calibrated in words
BETA_RANGE = (1e-2, 1e2)  # 1/T searched; a fit at either end is reported as such


@dataclass
class ReliabilityBin:
    """Images whose confidence falls in ``(lower, upper]``: their mean confidence, their
    accuracy and its 95% bootstrap band."""

    lower: float
    upper: float
    confidence: float
    accuracy: float
    count: int
    band: tuple[float, float] | None = None


@dataclass
class Calibration:
    """The calibration figures of one audit (see the module docstring)."""

    n: int  # labelled images measured
    accuracy: float
    mean_confidence: float
    ece: float
    adaptive_ece: float
    classwise_ece: float
    brier: float
    nll: float
    bins: list[ReliabilityBin]  # the 15 equal-width ECE bins that hold images
    reliability: list[ReliabilityBin]  # equal-mass bins with bootstrap bands (the diagram)
    coverage_at_error: dict[str, float]  # "0.01" -> share of images kept at <= 1% error
    curve: tuple[np.ndarray, np.ndarray]  # (coverage, risk), at most CURVE_POINTS points
    temperature: float | None  # fitted on all labelled images; None with too few
    ece_after_temperature: float | None  # cross-validated
    nll_after_temperature: float | None  # cross-validated
    temperature_at_limit: bool = False  # the fit ran into the searched range's end

    @property
    def verdict(self) -> str:
        """The calibration in words: which way the ECE bins lean, and what a temperature
        would change."""
        claims = f"on average it is {self.mean_confidence:.1%} sure and {self.accuracy:.1%} right"
        over = sum(b.count for b in self.bins if b.confidence > b.accuracy) / self.n
        lean = sum(b.count * (b.confidence - b.accuracy) for b in self.bins) / self.n
        if self.ece < WELL_CALIBRATED:
            words = f"Well calibrated (ECE {self.ece:.3f}): {claims}."
        elif abs(lean) >= 0.75 * self.ece:
            way = "Over-confident" if lean > 0 else "Under-confident"
            words = f"{way} (ECE {self.ece:.3f}): {claims}."
        else:
            words = (
                f"Miscalibrated both ways (ECE {self.ece:.3f}): over-confident in the confidence bins that hold "
                f"{over:.0%} of the images, under-confident in the others; {claims}."
            )
        if self.temperature is not None and self.ece_after_temperature is not None:
            change = "would lower" if self.ece_after_temperature < self.ece else "would not lower"
            words += (
                f" Dividing the logits by a temperature of {self.temperature:.2f} (fitted on these images by NLL) "
                f"{change} the ECE: {self.ece_after_temperature:.3f} on images the fit did not see"
                f" (NLL {self.nll:.3f} to {self.nll_after_temperature:.3f})."
            )
        return words


def log_softmax(scores: np.ndarray) -> np.ndarray:
    """Row-wise ``log softmax`` in float64."""
    z = scores.astype(np.float64)
    top = z.max(axis=1, keepdims=True)
    return z - top - np.log(np.exp(z - top).sum(axis=1, keepdims=True))


def _binned(confidence: np.ndarray, hit: np.ndarray, index: np.ndarray, bins: int) -> tuple[np.ndarray, ...]:
    count = np.bincount(index, minlength=bins)
    conf = np.bincount(index, weights=confidence, minlength=bins)
    acc = np.bincount(index, weights=hit.astype(np.float64), minlength=bins)
    return count, conf, acc


def width_bins(confidence: np.ndarray, bins: int = ECE_BINS) -> np.ndarray:
    """Each value's equal-width bin ``(i/bins, (i+1)/bins]`` (0 in the first)."""
    inner = np.arange(1, bins) / bins
    return np.searchsorted(inner, confidence, side="left")


def expected_calibration_error(confidence: np.ndarray, hit: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE over equal-width bins (0 for no images)."""
    if not len(confidence):
        return 0.0
    _, conf, acc = _binned(confidence, hit, width_bins(confidence, bins), bins)
    return float(np.abs(acc - conf).sum() / len(confidence))


def adaptive_calibration_error(confidence: np.ndarray, hit: np.ndarray, bins: int = ECE_BINS) -> float:
    """ECE over equal-mass bins: sorted by confidence, cut into ``bins`` nearly equal runs."""
    n = len(confidence)
    if not n:
        return 0.0
    index = np.empty(n, dtype=np.int64)
    index[np.argsort(confidence, kind="stable")] = _equal_runs(n, min(bins, n))
    _, conf, acc = _binned(confidence, hit, index, min(bins, n))
    return float(np.abs(acc - conf).sum() / n)


def _equal_runs(n: int, bins: int) -> np.ndarray:
    """Run number of each of ``n`` sorted positions, ``bins`` runs as ``np.array_split`` cuts them."""
    sizes = np.full(bins, n // bins)
    sizes[: n % bins] += 1
    return np.repeat(np.arange(bins), sizes)


def classwise_calibration_error(probs: np.ndarray, truth: np.ndarray, bins: int = ECE_BINS) -> float:
    """The mean over classes of each class's ECE of ``p(class)`` against "is the class"."""
    n, k = probs.shape
    if not n:
        return 0.0
    total = 0.0
    for c in range(k):
        p = probs[:, c].astype(np.float64)
        _, conf, acc = _binned(p, truth == c, width_bins(p, bins), bins)
        total += float(np.abs(acc - conf).sum() / n)
    return total / k


def brier_score(probs: np.ndarray, truth: np.ndarray) -> float:
    """Mean over images of ``sum_k (p_k - [k = truth])^2``."""
    p = probs.astype(np.float64)
    rows = np.arange(len(truth))
    return float(((p * p).sum(axis=1) - 2 * p[rows, truth] + 1).mean()) if len(truth) else 0.0


def _nll(log_probs: np.ndarray, truth: np.ndarray) -> float:
    return float(-log_probs[np.arange(len(truth)), truth].mean())


def fit_temperature(scores: np.ndarray, truth: np.ndarray) -> tuple[float, bool]:
    """The temperature ``T`` minimising the NLL of ``softmax(scores / T)``, and whether it
    lies at the end of the searched range (``T`` in [0.01, 100]).

    The NLL is convex in ``beta = 1/T`` (a log-sum-exp less a linear term), so its
    derivative ``mean(E_p[z] - z_true)`` increases with ``beta``: bisection on its sign
    finds the one minimum.
    """
    z = scores.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    true = z[np.arange(len(truth)), truth]

    def slope(beta: float) -> float:
        p = np.exp(log_softmax(beta * z))
        return float(((p * z).sum(axis=1) - true).mean())

    lo, hi = np.log(BETA_RANGE[0]), np.log(BETA_RANGE[1])
    if slope(float(np.exp(hi))) <= 0:
        return 1.0 / BETA_RANGE[1], True
    if slope(float(np.exp(lo))) >= 0:
        return 1.0 / BETA_RANGE[0], True
    for _ in range(32):  # log beta to 2^-32 of the range (about 2e-9): far below any figure shown
        mid = (lo + hi) / 2
        if slope(float(np.exp(mid))) < 0:
            lo = mid
        else:
            hi = mid
    return float(1.0 / np.exp((lo + hi) / 2)), False


def _cross_validated(scores: np.ndarray, truth: np.ndarray, rng: np.random.Generator) -> tuple[float, float]:
    """ECE and NLL of temperature-scaled probabilities, each image scaled by a temperature
    fitted without it (``FOLDS`` folds)."""
    n = len(truth)
    fold = np.empty(n, dtype=np.int64)
    fold[rng.permutation(n)] = np.arange(n) % FOLDS
    log_probs = np.empty(scores.shape, dtype=np.float64)
    for f in range(FOLDS):
        held = fold == f
        fit = _fit_rows(np.flatnonzero(~held), rng)
        t, _ = fit_temperature(scores[fit], truth[fit])
        log_probs[held] = log_softmax(scores[held] / t)
    confidence = np.exp(log_probs.max(axis=1))
    hit = log_probs.argmax(axis=1) == truth
    return expected_calibration_error(confidence, hit), _nll(log_probs, truth)


def _fit_rows(rows: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return rows if len(rows) <= FIT_ROWS else np.sort(rng.choice(rows, FIT_ROWS, replace=False))


def risk_coverage(confidence: np.ndarray, hit: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Coverage and risk at every cut between distinct confidences, most confident kept
    first (the last point keeps every image)."""
    n = len(confidence)
    if not n:
        return np.zeros(0), np.zeros(0)
    order = np.argsort(-confidence, kind="stable")
    sorted_conf = confidence[order]
    errors = np.cumsum(~hit[order])
    # A cut is possible after position i only where the next image is less confident.
    ends = np.flatnonzero(np.r_[sorted_conf[1:] < sorted_conf[:-1], True])
    kept = ends + 1
    return kept / n, errors[ends] / kept


def coverage_at(coverage: np.ndarray, risk: np.ndarray, error: float) -> float:
    """The largest coverage whose risk is at most ``error`` (0 when none is)."""
    ok = risk <= error + 1e-12
    return float(coverage[ok].max()) if ok.any() else 0.0


def _thin(coverage: np.ndarray, risk: np.ndarray, points: int = CURVE_POINTS) -> tuple[np.ndarray, np.ndarray]:
    if len(coverage) <= points:
        return coverage, risk
    keep = np.unique(np.linspace(0, len(coverage) - 1, points).round().astype(np.int64))
    return coverage[keep], risk[keep]


def _reliability(
    confidence: np.ndarray, hit: np.ndarray, rng: np.random.Generator, bins: int = ECE_BINS
) -> list[ReliabilityBin]:
    """Equal-mass bins, each with a 95% bootstrap band on its accuracy: the bin's images
    resampled with replacement (the count of right answers among ``count`` draws is
    binomial, so it is drawn as one), ``BOOTSTRAP`` times."""
    n = len(confidence)
    order = np.argsort(confidence, kind="stable")
    out = []
    start = 0
    for size in np.bincount(_equal_runs(n, min(bins, n))):
        rows = order[start : start + size]
        start += size
        acc = float(hit[rows].mean())
        draws = rng.binomial(size, acc, size=BOOTSTRAP) / size
        lo, hi = np.percentile(draws, [2.5, 97.5])
        out.append(
            ReliabilityBin(
                float(confidence[rows].min()),
                float(confidence[rows].max()),
                float(confidence[rows].mean()),
                acc,
                int(size),
                (float(lo), float(hi)),
            )
        )
    return out


def calibration(scores: np.ndarray, probs: np.ndarray, truth: np.ndarray, seed: int = 0) -> Calibration | None:
    """The calibration figures of the images whose ``truth`` (output index) is known.

    ``scores`` are the model's logits (or log-probabilities where it gives only
    probabilities); ``probs`` its probabilities.  None without labelled images.
    """
    known = truth >= 0
    if not known.any():
        return None
    scores, probs, truth = scores[known], probs[known].astype(np.float64), truth[known].astype(np.int64)
    rng = np.random.default_rng(seed)
    confidence = probs.max(axis=1)
    hit = probs.argmax(axis=1) == truth
    n = len(truth)
    index = width_bins(confidence)
    count, conf, acc = _binned(confidence, hit, index, ECE_BINS)
    bins = [
        ReliabilityBin(i / ECE_BINS, (i + 1) / ECE_BINS, conf[i] / count[i], acc[i] / count[i], int(count[i]))
        for i in range(ECE_BINS)
        if count[i]
    ]
    coverage, risk = risk_coverage(confidence, hit)
    temperature = ece_after = nll_after = None
    at_limit = False
    if n >= MIN_FOR_TEMPERATURE:
        fit = _fit_rows(np.arange(n), rng)
        temperature, at_limit = fit_temperature(scores[fit], truth[fit])
        ece_after, nll_after = _cross_validated(scores, truth, rng)
    return Calibration(
        n=n,
        accuracy=float(hit.mean()),
        mean_confidence=float(confidence.mean()),
        ece=expected_calibration_error(confidence, hit),
        adaptive_ece=adaptive_calibration_error(confidence, hit),
        classwise_ece=classwise_calibration_error(probs, truth),
        brier=brier_score(probs, truth),
        nll=_nll(log_softmax(scores), truth),
        bins=bins,
        reliability=_reliability(confidence, hit, rng),
        coverage_at_error={f"{e:g}": coverage_at(coverage, risk, e) for e in COVERAGE_ERRORS},
        curve=_thin(coverage, risk),
        temperature=temperature,
        ece_after_temperature=ece_after,
        nll_after_temperature=nll_after,
        temperature_at_limit=at_limit,
    )
