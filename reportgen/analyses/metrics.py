"""Accuracy, confusion matrix, per-class precision/recall/F1, class balance."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


def to_probabilities(outputs: np.ndarray) -> tuple[np.ndarray, str]:
    """Class probabilities from raw model outputs, and what the outputs were.

    Outputs that are already a probability distribution on every row (non-negative,
    summing to 1) are kept as they are, so a model ending in softmax is not softmaxed
    twice; anything else is treated as logits.
    """
    outputs = outputs.astype(np.float64)
    if outputs.size and np.all(outputs >= -1e-6) and np.allclose(outputs.sum(axis=1), 1.0, atol=1e-3):
        return outputs.astype(np.float32), "probabilities"
    shifted = outputs - outputs.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    return (exp / exp.sum(axis=1, keepdims=True)).astype(np.float32), "logits"


def log_odds(logits: np.ndarray) -> np.ndarray:
    """log(p_c / (1 - p_c)) for every class, from class scores, without saturating.

    It equals ``z_c - logsumexp_{j != c} z_j``: for two classes, the logit margin.  It is
    monotone in the probability p_c, so it ranks images exactly as p_c does, but where a
    model is sure p_c rounds to 1.0 (in float32 at a margin of about 17, in float64 at
    about 37, and even log p_c underflows to 0 past about 745) while the log-odds stay
    distinct: images the model is equally "certain" of are still ordered by how far
    ahead the class is.
    """
    z = logits.astype(np.float64)
    n, k = z.shape
    out = np.zeros((n, k))
    if k == 1:
        return out
    for c in range(k):
        others = np.delete(z, c, axis=1)
        top = others.max(axis=1)
        lse = top + np.log(np.exp(others - top[:, None]).sum(axis=1))
        out[:, c] = z[:, c] - lse
    return out


def log_odds_from_probabilities(probs: np.ndarray) -> np.ndarray:
    """log(p / (1 - p)) of given probabilities (ties stay ties where p rounds to 0 or 1)."""
    p = np.clip(probs.astype(np.float64), np.finfo(np.float64).tiny, 1.0)
    return np.log(p) - np.log1p(-np.minimum(p, 1.0 - np.finfo(np.float64).eps))


@dataclass
class ClassScores:
    """Precision, recall, F1 and support of one class."""

    name: str
    precision: float
    recall: float
    f1: float
    support: int  # images whose true class this is
    predicted: int  # images predicted as this class


@dataclass
class ClassificationMetrics:
    """Everything computed from true and predicted classes (images with known truth only)."""

    n: int
    accuracy: float
    top5_accuracy: float | None  # None when the model has 5 outputs or fewer
    balanced_accuracy: float  # mean recall over classes with support
    macro_f1: float  # mean F1 over classes with support
    confusion: np.ndarray  # (K, K) counts, rows = true class, columns = predicted
    per_class: list[ClassScores]


def confusion_matrix(truth: np.ndarray, pred: np.ndarray, k: int) -> np.ndarray:
    """Counts (K, K), rows = true class, columns = predicted class."""
    return np.bincount(truth * k + pred, minlength=k * k).reshape(k, k).astype(np.int64)


def classification_metrics(truth: np.ndarray, probs: np.ndarray, classes: list[str]) -> ClassificationMetrics | None:
    """Metrics over the images whose true class is known (``truth >= 0``).

    Precision of a class never predicted, and recall of a class with no image, are 0
    (scikit-learn's ``zero_division=0``).  Returns None when no image has a known class.
    """
    known = truth >= 0
    if not np.any(known):
        return None
    t = truth[known]
    p_all = probs[known]
    pred = p_all.argmax(axis=1)
    k = len(classes)
    cm = confusion_matrix(t, pred, k)
    tp = np.diag(cm).astype(np.float64)
    support = cm.sum(axis=1)
    predicted = cm.sum(axis=0)
    precision = np.divide(tp, predicted, out=np.zeros(k), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros(k), where=support > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros(k), where=denom > 0)
    top5 = None
    if k > 5:
        # Rank of the true class: how many classes score strictly higher.
        true_score = p_all[np.arange(len(t)), t]
        top5 = float(np.mean((p_all > true_score[:, None]).sum(axis=1) < 5))
    has = support > 0
    per_class = [
        ClassScores(classes[i], float(precision[i]), float(recall[i]), float(f1[i]), int(support[i]), int(predicted[i]))
        for i in range(k)
    ]
    return ClassificationMetrics(
        n=len(t),
        accuracy=float(np.mean(pred == t)),
        top5_accuracy=top5,
        balanced_accuracy=float(recall[has].mean()) if has.any() else 0.0,
        macro_f1=float(f1[has].mean()) if has.any() else 0.0,
        confusion=cm,
        per_class=per_class,
    )


@dataclass
class ClassBalance:
    """How many images each class has in the folder, and how many the model predicts."""

    classes: list[str]
    true_counts: list[int] | None  # None for unlabeled folders
    predicted_counts: list[int]
    imbalance_ratio: float | None  # largest / smallest non-empty class


def class_balance(truth: np.ndarray, pred: np.ndarray, classes: list[str]) -> ClassBalance:
    k = len(classes)
    predicted = np.bincount(pred, minlength=k)
    true_counts = None
    ratio = None
    known = truth[truth >= 0]
    if known.size:
        counts = np.bincount(known, minlength=k)
        true_counts = [int(c) for c in counts]
        nonzero = counts[counts > 0]
        ratio = float(nonzero.max() / nonzero.min())
    return ClassBalance(list(classes), true_counts, [int(c) for c in predicted], ratio)
