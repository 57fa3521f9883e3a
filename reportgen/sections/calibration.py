"""Calibration: whether the model's confidence says how often it is right, what a
temperature would change, and how many images it can decide alone at a given error."""

from __future__ import annotations

from typing import Any

import numpy as np

from reportgen import figures
from reportgen.analyses.calibration import ECE_BINS, Calibration, calibration
from reportgen.report import PictureRequest, Section
from reportgen.sections.base import Shared


def model_scores(shared: Shared) -> np.ndarray:
    """The model's logits (tapped before its softmax where it ends in one), else the log
    of its probabilities: what a temperature divides."""
    features = shared.features
    if features.logits is not None:
        return features.logits.astype(np.float64)
    if shared.result.model.output_kind == "logits":
        return features.outputs.astype(np.float64)
    return np.log(np.clip(shared.probs.astype(np.float64), np.finfo(np.float64).tiny, None))


class CalibrationSection(Section):
    id = "calibration"
    title = "Calibration"

    def build(self, shared: Shared) -> Calibration | None:
        if shared.metrics is None:
            return None
        with shared.clock("calibration"):
            return calibration(model_scores(shared), shared.probs, shared.truth, seed=shared.cfg.seed)

    def json_items(self, content: Calibration | None) -> dict[str, Any]:
        if content is None:
            return {"calibration": None}
        coverage, risk = content.curve
        return {
            "calibration": {
                "n": content.n,
                "accuracy": content.accuracy,
                "mean_confidence": content.mean_confidence,
                "ece": content.ece,
                "adaptive_ece": content.adaptive_ece,
                "classwise_ece": content.classwise_ece,
                "brier": content.brier,
                "nll": content.nll,
                "bins": [
                    {
                        "lower": b.lower,
                        "upper": b.upper,
                        "confidence": b.confidence,
                        "accuracy": b.accuracy,
                        "count": b.count,
                    }
                    for b in content.bins
                ],
                "reliability": [
                    {"confidence": b.confidence, "accuracy": b.accuracy, "count": b.count, "band": list(b.band or ())}
                    for b in content.reliability
                ],
                "temperature": content.temperature,
                "temperature_at_limit": content.temperature_at_limit,
                "ece_after_temperature": content.ece_after_temperature,
                "nll_after_temperature": content.nll_after_temperature,
                "coverage_at_error": content.coverage_at_error,
                "risk_coverage": [{"coverage": c, "risk": r} for c, r in zip(coverage, risk, strict=True)],
                "verdict": content.verdict,
            }
        }

    def pictures(self, content: Calibration) -> PictureRequest:
        rel = content.reliability
        counts = np.zeros(ECE_BINS, dtype=np.int64)
        for b in content.bins:
            counts[round(b.lower * ECE_BINS)] = b.count
        centres = (np.arange(ECE_BINS) + 0.5) / ECE_BINS
        coverage, risk = content.curve
        return PictureRequest(
            charts={
                "reliability": lambda: figures.reliability_figure(
                    [b.confidence for b in rel],
                    [b.accuracy for b in rel],
                    [b.band or (b.accuracy, b.accuracy) for b in rel],
                    (centres.tolist(), counts.tolist()),
                ),
                "risk_coverage": lambda: figures.risk_coverage_figure(coverage, risk, 1.0 - content.accuracy),
            }
        )
