"""Calibration: every figure against a direct computation written here, a model made
over-confident on purpose (logits times 3), selective prediction on a hand-worked case,
and the section of the sample's report recomputed from its own JSON predictions."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import load_json, page_text

from reportgen.analyses.calibration import calibration, coverage_at, risk_coverage

BINS = 15


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _ece_loop(confidence: np.ndarray, hit: np.ndarray) -> float:
    """Guo et al.'s ECE as written in the paper: bins (i/15, (i+1)/15], a 0 in the first."""
    total = 0.0
    for i in range(BINS):
        lower, upper = i / BINS, (i + 1) / BINS
        members = [j for j, c in enumerate(confidence) if lower < c <= upper or (i == 0 and c == 0)]
        if members:
            acc = sum(bool(hit[j]) for j in members) / len(members)
            conf = sum(float(confidence[j]) for j in members) / len(members)
            total += len(members) / len(confidence) * abs(acc - conf)
    return total


def _synthetic(n: int, k: int, scale: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Logits whose softmax is exactly calibrated (labels drawn from it), times ``scale``."""
    rng = np.random.default_rng(seed)
    z = rng.normal(0.0, 2.0, (n, k))
    p = _softmax(z)
    truth = np.array([rng.choice(k, p=row) for row in p])
    return scale * z, truth


def test_every_figure_equals_a_direct_computation() -> None:
    rng = np.random.default_rng(3)
    probs = rng.dirichlet(np.full(4, 0.6), 400)
    truth = np.where(rng.random(400) < 0.6, probs.argmax(1), rng.integers(0, 4, 400))
    truth[:7] = -1  # unlabelled rows are left out of every figure
    result = calibration(np.log(probs), probs, truth, seed=0)
    assert result is not None
    p, t = probs[7:], truth[7:]
    confidence, hit = p.max(1), p.argmax(1) == t
    assert result.n == 393
    assert result.ece == pytest.approx(_ece_loop(confidence, hit), abs=1e-12)
    # Adaptive: 15 runs of (nearly) equal size after sorting by confidence.
    order = np.argsort(confidence, kind="stable")
    runs = np.array_split(order, BINS)
    adaptive = sum(len(r) / len(t) * abs(hit[r].mean() - confidence[r].mean()) for r in runs)
    assert result.adaptive_ece == pytest.approx(adaptive, abs=1e-12)
    classwise = np.mean([_ece_loop(p[:, c], t == c) for c in range(4)])
    assert result.classwise_ece == pytest.approx(classwise, abs=1e-12)
    onehot = np.eye(4)[t]
    assert result.brier == pytest.approx(((p - onehot) ** 2).sum(1).mean(), abs=1e-12)
    assert result.nll == pytest.approx(-np.log(p[np.arange(len(t)), t]).mean(), abs=1e-9)
    assert sum(b.count for b in result.bins) == 393
    for b in result.bins:
        inside = (confidence > b.lower) & (confidence <= b.upper)
        assert b.count == inside.sum() and b.accuracy == pytest.approx(hit[inside].mean())
    for b in result.reliability:
        assert b.band is not None and b.band[0] <= b.accuracy <= b.band[1]
    assert calibration(np.log(probs), probs, np.full(400, -1)) is None


def test_an_over_confident_model_gets_its_temperature() -> None:
    """Logits of a calibrated model times 3: the ECE rises, the fitted temperature comes
    out near 3, and dividing by it (measured on held-out folds) brings the ECE back."""
    scores, truth = _synthetic(4000, 5, 3.0, seed=0)
    over = calibration(scores, _softmax(scores), truth, seed=0)
    honest_scores = scores / 3.0
    honest = calibration(honest_scores, _softmax(honest_scores), truth, seed=0)
    assert over is not None and honest is not None
    assert over.ece > 0.08 and honest.ece < 0.03
    assert over.temperature is not None and 2.7 < over.temperature < 3.3
    assert honest.temperature is not None and 0.9 < honest.temperature < 1.1
    assert over.ece_after_temperature is not None and over.ece_after_temperature < 0.03
    assert over.verdict.startswith("Over-confident") and "would lower the ECE" in over.verdict
    assert over.nll_after_temperature is not None and over.nll_after_temperature < over.nll
    # Under-confident the other way round: logits divided by 3.
    soft = honest_scores / 3.0
    under = calibration(soft, _softmax(soft), truth, seed=0)
    assert under is not None and under.verdict.startswith("Under-confident")
    assert under.temperature is not None and 0.28 < under.temperature < 0.38


def test_selective_prediction_cuts_only_between_distinct_confidences() -> None:
    confidence = np.array([0.9, 0.9, 0.8, 0.7, 0.6])
    hit = np.array([True, False, True, True, False])
    coverage, risk = risk_coverage(confidence, hit)
    np.testing.assert_allclose(coverage, [0.4, 0.6, 0.8, 1.0])
    np.testing.assert_allclose(risk, [0.5, 1 / 3, 0.25, 0.4])
    assert coverage_at(coverage, risk, 0.3) == pytest.approx(0.8)
    assert coverage_at(coverage, risk, 0.01) == 0.0
    assert coverage_at(coverage, risk, 0.5) == 1.0


def test_the_sample_report_has_calibration_from_its_own_predictions(sample_audits: dict[str, Path]) -> None:
    html = sample_audits["onnx"]
    data = load_json(html)
    cal = data["calibration"]
    rows = data["predictions"]
    confidence = np.array([r["score"] for r in rows])
    hit = np.array([r["label"] == r["pred"] for r in rows])
    assert cal["n"] == len(rows)
    assert cal["accuracy"] == pytest.approx(hit.mean(), abs=1e-6)
    assert cal["ece"] == pytest.approx(_ece_loop(confidence, hit), abs=1e-4)
    assert sum(b["count"] for b in cal["bins"]) == len(rows)
    assert set(cal["coverage_at_error"]) == {"0.01", "0.02", "0.05"}
    assert cal["temperature"] > 0 and cal["ece_after_temperature"] is not None
    text = page_text(html)
    assert "Calibration" in text and cal["verdict"].split(":")[0] in text
    assert 'href="#calibration"' in html.read_text()
