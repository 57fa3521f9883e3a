"""Metrics against scikit-learn, and output-kind detection."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from reportgen.analyses.metrics import class_balance, classification_metrics, to_probabilities
from reportgen.labels import read_labels_file, resolve_classes


def test_metrics_match_scikit_learn() -> None:
    rng = np.random.default_rng(0)
    k, n = 8, 500
    truth = rng.integers(0, k, n)
    truth[truth == 7] = 6  # class 7 has no image: its recall is 0 by convention
    logits = rng.standard_normal((n, k)) + 2.5 * np.eye(k)[truth]
    probs, kind = to_probabilities(logits)
    assert kind == "logits"
    m = classification_metrics(truth, probs, [str(i) for i in range(k)])
    assert m is not None
    pred = probs.argmax(1)
    assert np.array_equal(m.confusion, skm.confusion_matrix(truth, pred, labels=range(k)))
    assert m.accuracy == pytest.approx(skm.accuracy_score(truth, pred))
    p, r, f, s = skm.precision_recall_fscore_support(truth, pred, labels=range(k), zero_division=0)
    assert np.allclose([c.precision for c in m.per_class], p)
    assert np.allclose([c.recall for c in m.per_class], r)
    assert np.allclose([c.f1 for c in m.per_class], f)
    assert [c.support for c in m.per_class] == list(s)
    assert m.top5_accuracy == pytest.approx(skm.top_k_accuracy_score(truth, probs, k=5, labels=range(k)))
    present = s > 0
    assert m.balanced_accuracy == pytest.approx(r[present].mean())
    assert m.macro_f1 == pytest.approx(f[present].mean())


def test_unknown_truth_is_left_out() -> None:
    probs = np.eye(3, dtype=np.float32)[[0, 1, 2, 0]]
    truth = np.array([0, -1, 2, 1])
    m = classification_metrics(truth, probs, ["a", "b", "c"])
    assert m is not None and m.n == 3 and m.accuracy == pytest.approx(2 / 3)
    assert classification_metrics(np.full(4, -1), probs, ["a", "b", "c"]) is None


def test_probabilities_are_not_softmaxed_twice() -> None:
    probs = np.array([[0.7, 0.2, 0.1], [0.05, 0.05, 0.9]], np.float32)
    out, kind = to_probabilities(probs)
    assert kind == "probabilities" and np.allclose(out, probs)
    logits = np.array([[2.0, 1.0, 0.0]])
    out, kind = to_probabilities(logits)
    assert kind == "logits" and np.allclose(out, np.exp(logits) / np.exp(logits).sum())


def test_class_balance() -> None:
    b = class_balance(np.array([0, 0, 0, 1, -1]), np.array([0, 1, 1, 1, 2]), ["a", "b", "c"])
    assert b.true_counts == [3, 1, 0] and b.predicted_counts == [1, 3, 1] and b.imbalance_ratio == 3.0


def test_class_resolution(tmp_path) -> None:
    folders = ["cat", "dog"]
    by_folder = resolve_classes(folders, 2)
    assert by_folder.source == "folder names" and by_folder.classes == folders
    mismatch = resolve_classes(folders, 3)
    assert mismatch.source == "output index" and mismatch.warnings
    assert list(mismatch.truth(np.array([0, 1]))) == [-1, -1]
    labels = tmp_path / "labels.txt"
    labels.write_text("bird\ncat\ndog\n")
    named = resolve_classes(folders, 3, labels=read_labels_file(labels))
    assert named.classes == ["bird", "cat", "dog"]
    assert list(named.truth(np.array([0, 1, -1]))) == [1, 2, -1]
    partial = resolve_classes(["cat", "fish"], 3, labels=["bird", "cat", "dog"])
    assert list(partial.truth(np.array([0, 1]))) == [1, -1] and "fish" in partial.warnings[0]
