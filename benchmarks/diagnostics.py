"""``python -m benchmarks --suite diagnostics``: what the diagnostics find, against ground truth.

1. **Layer features**: leave-one-out kNN accuracy per layer with spatial layers pooled to
   a grid (the default) and to their global mean (``--pool-values 0``), on three cases:
   a 3-conv CNN trained here on scikit-learn's digits (the case the issue reported), four
   classes told apart only by where a square sits (random-weight CNN), and the sample.
2. **Suspected mislabels against cleanlab**: precision at the number of planted label
   errors, for reportgen's mislabel score and for cleanlab's rankings on the same model
   probabilities (self-confidence, normalised margin, ``find_label_issues``) and on the
   penultimate features (Datalab's kNN route), on the sample's planted mislabels and on
   digits whose labels were flipped before the model was trained on them.

Everything runs through ``reportgen audit`` (a subprocess, as a user runs it); the full
ranking of every image is recomputed from the run's features cache with the library's own
functions, and checked against the report's flagged list before it is used.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from reportgen.analyses.knn import layer_knn
from reportgen.analyses.metrics import to_probabilities
from reportgen.analyses.suspects import MIN_SCORE, LabelScores, flagged_mislabels, label_scores
from reportgen.extract import default_cache_path, load_cache
from reportgen.models.base import channel_means

DIGITS_SIDE = 32
FLIP_SHARE = 0.10  # of the digits whose labels are flipped before training
K = 10  # reportgen's default neighbours, and Datalab's


# ------------------------------------------------------------------ workloads


def _write_class_folders(folder: Path, images: np.ndarray, labels: np.ndarray) -> list[str]:
    """One PNG per row under ``folder/<label>/``; the relative paths, row order."""
    files = []
    for i, (img, label) in enumerate(zip(images, labels, strict=True)):
        rel = f"{int(label)}/{i:04d}.png"
        (folder / rel).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(img).save(folder / rel)
        files.append(rel)
    return files


def digits(quick: bool) -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits as 32x32 RGB images (bicubic), and their labels."""
    from sklearn.datasets import load_digits

    data = load_digits()
    n = 300 if quick else len(data.target)
    out = np.empty((n, DIGITS_SIDE, DIGITS_SIDE, 3), np.uint8)
    for i in range(n):
        small = Image.fromarray((data.images[i] * (255 / 16)).astype(np.uint8), "L")
        out[i] = np.asarray(small.resize((DIGITS_SIDE, DIGITS_SIDE), Image.BICUBIC).convert("RGB"))
    return out, data.target[:n].astype(np.int64)


def flip_labels(labels: np.ndarray, share: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``labels`` with ``share`` of them moved to another class, seeded; and the flipped rows."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(len(labels), size=round(share * len(labels)), replace=False))
    flipped = labels.copy()
    classes = int(labels.max()) + 1
    flipped[rows] = (labels[rows] + rng.integers(1, classes, size=len(rows))) % classes
    return flipped, rows


def train_digits_cnn(images: np.ndarray, labels: np.ndarray, path: Path, epochs: int, seed: int = 0) -> Path:
    """Conv(16)-Conv(32, /2)-Conv(64, /2), ReLUs, global average, linear: trained with
    Adam on ``labels`` (pixels in [0, 1]: audit with ``--mean 0 --std 1``), saved as ONNX."""
    import torch
    from torch import nn

    torch.manual_seed(seed)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.Conv2d(32, 64, 3, stride=2, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(64, 10),
    )
    x = torch.from_numpy(images.transpose(0, 3, 1, 2).astype(np.float32) / 255.0)
    y = torch.from_numpy(labels)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=gen).split(64):
            opt.zero_grad()
            nn.functional.cross_entropy(model(x[batch]), y[batch]).backward()
            opt.step()
    model.eval()
    torch.onnx.export(
        model,
        (x[:2],),
        str(path),
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "N"}, "logits": {0: "N"}},
        dynamo=False,
        opset_version=17,
    )
    return path


def position_classes(folder: Path, per_class: int) -> None:
    """Four classes that differ only in which quadrant holds a bright square, on noise."""
    rng = np.random.default_rng(0)
    corners = {"nw": (4, 4), "ne": (4, 20), "sw": (20, 4), "se": (20, 20)}
    for name, (top, left) in corners.items():
        (folder / name).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = rng.integers(0, 90, (32, 32, 3)).astype(np.uint8)
            dy, dx = rng.integers(-2, 3, 2)
            img[top + dy : top + dy + 8, left + dx : left + dx + 8] = 230
            Image.fromarray(img).save(folder / name / f"{i:03d}.png")


def random_cnn(path: Path) -> Path:
    """Conv(8)-ReLU-MaxPool-Conv(16)-ReLU-mean-linear with seeded random weights, as ONNX."""
    import torch
    from torch import nn

    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, padding=1),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 4),
    ).eval()
    torch.onnx.export(model, (torch.zeros(2, 3, 32, 32),), str(path), input_names=["input"], dynamo=False)
    return path


# ------------------------------------------------------------------ runs


def audit(model: Path, images: Path, out: Path, *extra: str) -> dict:
    """``reportgen audit`` with the report's own defaults plus ``extra``; its JSON."""
    cmd = [sys.executable, "-m", "reportgen", "audit", str(model), str(images), "-o", str(out), "-q", "--device", "cpu"]
    done = subprocess.run([*cmd, *extra], capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed: {done.stderr.strip()[-500:]}")
    return json.loads(out.with_suffix(".json").read_text())


@dataclass
class Curve:
    case: str
    layers: list[str]
    pooling: list[str]
    grid: list[float | None]  # kNN accuracy, default pooling
    mean: list[float | None]  # kNN accuracy with --pool-values 0
    model_accuracy: float | None


def knn_curve(case: str, model: Path, images: Path, out_dir: Path, *extra: str) -> Curve:
    fast = ["--no-tsne", "--shortcut-images", "0", "--channels", "0", "--gallery-size", "0", *extra]
    grid = audit(model, images, out_dir / "grid" / "report.html", *fast)
    mean = audit(model, images, out_dir / "mean" / "report.html", "--pool-values", "0", *fast)
    return Curve(
        case,
        [layer["name"] for layer in grid["layers"]],
        [layer["pooling"] for layer in grid["layers"]],
        [layer["knn_accuracy"] for layer in grid["layers"]],
        [layer["knn_accuracy"] for layer in mean["layers"]],
        grid.get("accuracy"),
    )


@dataclass
class Ranking:
    method: str
    precision: float  # at the number of planted errors
    flagged: int | None = None  # how many the method flags on its own, where it decides
    flagged_precision: float | None = None


@dataclass
class Comparison:
    case: str
    n_images: int
    planted: int
    rankings: list[Ranking]


def _precision(order: np.ndarray, planted: set[int]) -> float:
    k = len(planted)
    return len(set(order[:k].tolist()) & planted) / k


def compare_with_cleanlab(case: str, report: Path, planted_files: set[str]) -> Comparison:
    """Rank every image of a finished audit by reportgen's mislabel score and by
    cleanlab's; precision at the number of planted errors."""
    from cleanlab.filter import find_label_issues
    from cleanlab.rank import get_label_quality_scores
    from sklearn.neighbors import KNeighborsClassifier

    data = json.loads(report.with_suffix(".json").read_text())
    cached = load_cache(default_cache_path(report), None)
    assert cached is not None and not hasattr(cached, "reason"), f"no features cache beside {report}"
    features = cached.features  # type: ignore[union-attr]
    classes = data["classes"]
    label_of = {p["file"]: p["label"] for p in data["predictions"]}
    truth = np.array([classes.index(label_of[f]) for f in features.files], np.int64)
    probs, _ = to_probabilities(features.outputs)
    rows = np.arange(features.n)
    planted = {i for i, f in enumerate(features.files) if f in planted_files}
    assert len(planted) == len(planted_files), "a planted file is missing from the audit"

    # reportgen: the pipeline's score, from the same layers, k and metric as the report.
    settings = data["knn_settings"]
    deep = data["suspect_settings"]["mislabel_layers"]
    labels = features.labels
    neighbours = [
        layer_knn(features.arrays[name], labels, settings["k"], metric=settings["metric"]).neighbours for name in deep
    ]
    evidence = label_scores(labels, probs[rows, truth], neighbours, labels)
    assert isinstance(evidence, LabelScores)
    flagged = [features.files[m.row] for m in flagged_mislabels(labels, evidence)]
    reported = [m["file"] for m in data["suspected_mislabels"]]  # the JSON lists the first 200
    assert flagged[: len(reported)] == reported, "recomputed suspects differ from the report's"
    ours = rows[np.lexsort((rows, -evidence.score))]
    flagged_rows = {features.files.index(f) for f in flagged}

    def ranking(method: str, order: np.ndarray, chosen: set[int] | None = None) -> Ranking:
        if chosen is None:
            return Ranking(method, _precision(order, planted))
        hit = len(chosen & planted) / len(chosen) if chosen else 0.0
        return Ranking(method, _precision(order, planted), len(chosen), hit)

    out = [ranking(f"reportgen mislabel score (flags: score >= {MIN_SCORE})", ours, flagged_rows)]
    # The same score with the deep layers read as global means (--pool-values 0).
    info = {layer.name: layer for layer in features.layers}
    averaged = [
        layer_knn(channel_means(features.arrays[name], info[name]), labels, settings["k"], metric=settings["metric"])
        for name in deep
    ]
    plain = label_scores(labels, probs[rows, truth], [a.neighbours for a in averaged], labels)
    assert isinstance(plain, LabelScores)
    plain_flags = {m.row for m in flagged_mislabels(labels, plain)}
    out.append(
        ranking(
            "reportgen, deep layers as global means (`--pool-values 0`)",
            rows[np.lexsort((rows, -plain.score))],
            plain_flags,
        )
    )
    for method in ("self_confidence", "normalized_margin"):
        quality = get_label_quality_scores(truth, probs, method=method)
        out.append(ranking(f"cleanlab `get_label_quality_scores`, {method}", np.lexsort((rows, quality))))
    issues = find_label_issues(truth, probs, return_indices_ranked_by="self_confidence")
    out.append(ranking("cleanlab `find_label_issues` (ranked by self-confidence)", issues, set(issues.tolist())))

    # Datalab's route from features alone (cleanlab 2.9, LabelIssueManager): kNN vote
    # shares with the image itself taken out, then the same ranking.
    penultimate = features.arrays[deep[-1]]
    knn = KNeighborsClassifier(n_neighbors=K + 1).fit(penultimate, truth)
    onehot = np.eye(len(classes))[truth]
    knn_probs = np.zeros((features.n, len(classes)))
    knn_probs[:, knn.classes_] = knn.predict_proba(penultimate)
    knn_probs = (knn_probs - onehot / (K + 1)) * (K + 1) / K
    quality = get_label_quality_scores(truth, knn_probs, method="self_confidence")
    out.append(
        ranking(f"cleanlab, kNN on the penultimate layer `{deep[-1]}` (Datalab's route)", np.lexsort((rows, quality)))
    )
    knn_issues = find_label_issues(truth, knn_probs, return_indices_ranked_by="self_confidence")
    out.append(ranking("cleanlab `find_label_issues` on those kNN probabilities", knn_issues, set(knn_issues.tolist())))
    return Comparison(case, features.n, len(planted), out)


# ------------------------------------------------------------------ the suite


def run(work: Path, quick: bool, sample: Path) -> tuple[list[Curve], list[Comparison], list[str]]:
    """Every case; the curves, the comparisons, and notes on the workloads."""
    work.mkdir(parents=True, exist_ok=True)
    notes = []
    images, labels = digits(quick)
    epochs = 3 if quick else 15

    clean_dir = work / "digits-clean"
    if not clean_dir.exists():
        _write_class_folders(clean_dir, images, labels)
    clean_model = train_digits_cnn(images, labels, work / "digits-clean.onnx", epochs)
    flipped, flipped_rows = flip_labels(labels, FLIP_SHARE)
    noisy_dir = work / "digits-flipped"
    if not noisy_dir.exists():
        _write_class_folders(noisy_dir, images, flipped)
    noisy_model = train_digits_cnn(images, flipped, work / "digits-flipped.onnx", epochs)
    noisy_files = {f"{int(flipped[i])}/{i:04d}.png" for i in flipped_rows}
    notes.append(
        f"digits: scikit-learn's {len(labels)} 8x8 digits at {DIGITS_SIDE}x{DIGITS_SIDE} px; a 3-conv CNN trained "
        f"{epochs} epochs (Adam) on them; for the flipped case {len(flipped_rows)} labels "
        f"({FLIP_SHARE:.0%}) moved to a random other class before training, and the model audited on its own "
        "training set with the flipped labels (its probabilities are in-sample, as for most models a user audits)"
    )
    positions = work / "positions"
    if not positions.exists():
        position_classes(positions, 10 if quick else 60)
    position_model = random_cnn(work / "positions.onnx")

    pixels = ["--mean", "0", "--std", "1"]
    curves = [
        knn_curve("digits, trained 3-conv CNN", clean_model, clean_dir, work / "curve-digits", *pixels),
        knn_curve("where a square sits, random-weight CNN", position_model, positions, work / "curve-positions"),
        knn_curve("the sample (model.onnx)", sample / "model.onnx", sample / "images", work / "curve-sample"),
    ]

    comparisons = []
    sample_report = work / "sample-audit" / "report.html"
    audit(sample / "model.onnx", sample / "images", sample_report, "--no-tsne", "--shortcut-images", "0")
    manifest = json.loads((sample / "manifest.json").read_text())
    comparisons.append(
        compare_with_cleanlab(
            "the sample's planted mislabels", sample_report, {m["file"] for m in manifest["mislabeled"]}
        )
    )
    noisy_report = work / "digits-flipped-audit" / "report.html"
    data = audit(noisy_model, noisy_dir, noisy_report, "--no-tsne", "--shortcut-images", "0", *pixels)
    notes.append(f"flipped digits: the model's accuracy on the given (partly flipped) labels is {data['accuracy']:.3f}")
    comparisons.append(compare_with_cleanlab("digits, labels flipped before training", noisy_report, noisy_files))
    return curves, comparisons, notes


def markdown(curves: list[Curve], comparisons: list[Comparison], notes: list[str]) -> list[str]:
    """The results as Markdown lines (tables per case)."""

    def pct(v: float | None) -> str:
        return "–" if v is None else f"{100 * v:.1f}%"

    lines = ["## Layer features: kNN accuracy per layer, grid of means vs global mean", ""]
    for c in curves:
        acc = f" (model accuracy {pct(c.model_accuracy)})" if c.model_accuracy is not None else ""
        lines += [
            f"**{c.case}**{acc}",
            "",
            "| layer | pooling (default) | kNN, grid | kNN, global mean |",
            "|---|---|---|---|",
        ]
        for name, how, g, m in zip(c.layers, c.pooling, c.grid, c.mean, strict=True):
            lines.append(f"| {name} | {how} | {pct(g)} | {pct(m)} |")
        lines.append("")
    lines += ["## Suspected mislabels against cleanlab: precision at the number of planted errors", ""]
    for comp in comparisons:
        lines += [
            f"**{comp.case}**: {comp.planted} planted among {comp.n_images} images",
            "",
            "| method | precision at " + str(comp.planted) + " | flagged by itself | precision of its flags |",
            "|---|---|---|---|",
        ]
        for r in comp.rankings:
            flagged = "–" if r.flagged is None else str(r.flagged)
            lines.append(f"| {r.method} | {pct(r.precision)} | {flagged} | {pct(r.flagged_precision)} |")
        lines.append("")
    lines += ["Workloads:", "", *[f"- {n}" for n in notes], ""]
    return lines
