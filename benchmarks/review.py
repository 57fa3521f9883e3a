"""The release-review diagnostics (calibration, error slices, robustness, map faithfulness), part of
``python -m benchmarks --suite diagnostics``: what they find against ground truth, and
what they add to the whole report's time.

Workload: 5,000 seeded augmented copies of scikit-learn's digits (``scale.write_images``)
audited with the digits CNN trained on the plain digits, three ways:

* **as is** (whole report, every default section), at 1,000 and 5,000 images: the cost of
  the sections (calibration, slices, robustness, faithfulness), from the report's own timings, against
  the run's wall time; whatever slices it finds;
* **with a planted group**: 250 more images of the digit 3, inverted (light background),
  under ``3/inverted/``: never seen in training, so the model fails there.  The search must
  find them (members found, share of the slice) and name the folder and the brightness;
* **over-confident**: the same CNN with its logits multiplied by 3 (one ``Mul`` node added
  to the ONNX graph): the ECE must rise and the fitted temperature come out near 3 times
  the plain model's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks import scale
from benchmarks.diagnostics import digits

N_IMAGES = 5_000
PLANTED = 250
PLANTED_DIGIT = 3


@dataclass
class ReviewRun:
    case: str
    n: int
    wall: float
    calibration_s: float
    slices_s: float
    robustness_s: float
    faithfulness_s: float
    shortcuts_s: float
    accuracy: float
    ece: float
    temperature: float | None
    ece_after: float | None
    slices: list[dict]
    faithfulness: dict | None


def plant_inverted(folder: Path, n: int, digit: int, seed: int = 5) -> list[str]:
    """``n`` inverted copies of ``digit`` under ``folder/<digit>/inverted/`` (relative paths)."""
    base, labels = digits(quick=False)
    rng = np.random.default_rng(seed)
    rows = rng.choice(np.flatnonzero(labels == digit), size=n)
    out = folder / str(digit) / "inverted"
    out.mkdir(parents=True, exist_ok=True)
    files = []
    for j, i in enumerate(rows):
        img = 255.0 - np.roll(base[i].astype(np.float32), tuple(rng.integers(-2, 3, 2)), axis=(0, 1))
        img += rng.normal(0.0, scale.NOISE, size=img.shape[:2])[..., None]
        name = f"{digit}/inverted/{j:05d}.png"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(folder / name)
        files.append(name)
    return files


def overconfident(model: Path, out: Path, factor: float = 3.0) -> Path:
    """The ONNX model with its output multiplied by ``factor``."""
    import onnx
    from onnx import TensorProto, helper

    graph = onnx.load(str(model))
    name = graph.graph.output[0].name
    graph.graph.initializer.append(helper.make_tensor("reportgen_bench_factor", TensorProto.FLOAT, [], [factor]))
    graph.graph.node.append(helper.make_node("Mul", [name, "reportgen_bench_factor"], [f"{name}_scaled"]))
    graph.graph.output[0].name = f"{name}_scaled"
    onnx.save(graph, str(out))
    return out


def _run(case: str, model: Path, images: Path, out: Path, *extra: str) -> ReviewRun:
    run = scale.audit(model, images, out / "report.html", out / "features", "--no-cache", *extra)
    data = json.loads((out / "report.json").read_text())
    cal = data["calibration"]
    return ReviewRun(
        case,
        run.n,
        run.wall,
        run.phases.get("calibration", 0.0),
        run.phases.get("slices", 0.0),
        run.phases.get("robustness", 0.0),
        run.phases.get("faithfulness", 0.0),
        run.phases.get("shortcuts", 0.0),
        data["accuracy"],
        cal["ece"],
        cal["temperature"],
        cal["ece_after_temperature"],
        data["slices"] or [],
        data["faithfulness"],
    )


def run(work: Path, quick: bool) -> tuple[list[ReviewRun], dict[str, float], list[str]]:
    """The three runs, the planted group's recovery, and notes."""
    n = 1_000 if quick else N_IMAGES
    planted_n = 50 if quick else PLANTED
    work.mkdir(parents=True, exist_ok=True)
    model = scale.model(work)
    plain = scale.write_images(work / f"review-{n}", n)
    with_group = work / f"review-{n}-planted"
    if not (with_group / ".planted.json").is_file():  # written last: the folder is complete
        scale.linked_subset(plain, with_group, n)
        planted = plant_inverted(with_group, planted_n, PLANTED_DIGIT)
        (with_group / ".planted.json").write_text(json.dumps(planted))
    planted = set(json.loads((with_group / ".planted.json").read_text()))
    small = scale.linked_subset(plain, work / f"review-{n // 5}", n // 5)
    runs = [
        _run("as is, whole report", model, small, work / "review-small"),
        _run("as is, whole report", model, plain, work / "review-plain"),
        _run(f"{planted_n} inverted 3s planted", model, with_group, work / "review-planted", "--no-tsne"),
    ]
    x3 = overconfident(model, work / "digits-x3.onnx")
    runs.append(_run("logits x3 (over-confident)", x3, plain, work / "review-x3", "--no-tsne"))
    # The slice that holds most of the planted images (the model also fails elsewhere, and
    # slices are ranked by the errors they hold beyond the overall rate).
    found = runs[2].slices
    best = max(found, key=lambda s: len(set(s["files"]) & planted), default=None)
    members = set(best["files"]) if best else set()
    recovery = {
        "rank": best["id"] if best else 0,
        "slices": len(found),
        "planted": len(planted),
        "found": len(members & planted),
        "slice_size": len(members),
        "recall": len(members & planted) / len(planted),
        "precision": len(members & planted) / len(members) if members else 0.0,
    }
    notes = [
        f"{n:,} augmented digits (shifts of up to {scale.SHIFT} px, gains 0.7-1.15, noise sd {scale.NOISE:g}) in "
        "10 class folders; the digits CNN of the scale suite (trained 15 epochs on the plain 1,797 digits), ONNX, "
        "CPU, batch 256",
        "the planted and over-confident runs leave out the t-SNE (--no-tsne), so their share is of a shorter run; "
        "the cost targets are read on the whole reports: calibration and slices at most 10% at 5,000 images; "
        "the map and robustness checks (shortcuts, faithfulness, robustness) together at most 25% at 1,000",
    ]
    return runs, recovery, notes


def markdown(runs: list[ReviewRun], recovery: dict[str, float], notes: list[str]) -> list[str]:
    lines = [
        "## Release review: calibration, error slices, robustness, map faithfulness",
        "",
        "| case | images | accuracy | ECE | temperature | ECE after (5-fold) | slices | calibration s | slices s "
        "| shortcuts s | robustness s | faithfulness s | whole report s | calibration + slices "
        "| shortcuts + robustness + faithfulness |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in runs:
        t = "–" if r.temperature is None else f"{r.temperature:.2f}"
        after = "–" if r.ece_after is None else f"{r.ece_after:.3f}"
        share = (r.calibration_s + r.slices_s) / r.wall if r.wall else 0.0
        checks = (r.shortcuts_s + r.robustness_s + r.faithfulness_s) / r.wall if r.wall else 0.0
        lines.append(
            f"| {r.case} | {r.n:,} | {r.accuracy:.1%} | {r.ece:.3f} | {t} | {after} | {len(r.slices)} "
            f"| {r.calibration_s:.2f} | {r.slices_s:.2f} | {r.shortcuts_s:.2f} | {r.robustness_s:.2f} "
            f"| {r.faithfulness_s:.2f} | {r.wall:.1f} | {share:.1%} | {checks:.1%} |"
        )
    lines += [
        "",
        f"Planted group: slice {recovery['rank']} of {recovery['slices']} holds {recovery['found']} of the "
        f"{recovery['planted']} inverted 3s "
        f"({recovery['recall']:.0%}; target >= 80%) and they are {recovery['precision']:.0%} of its "
        f"{recovery['slice_size']} images (target >= 60%).",
        "",
        "Slices described:",
        "",
    ]
    for r in runs:
        for s in r.slices:
            lines.append(
                f"- {r.case}, slice {s['id']} ({s['size']} images, {s['accuracy']:.0%} right): {s['description']}"
            )
    lines += ["", "Map checks (the shown method first; areas under the deletion / insertion curves):", ""]
    for r in runs:
        f = r.faithfulness
        if f is None:
            continue
        methods = "; ".join(
            f"{m['method']} {m['deletion_auc']:.3f} / {m['insertion_auc']:.3f}, beats random on {m['beats_random']:.0%}"
            for m in f["methods"]
        )
        randomised = ", ".join(
            f"{x['method']} {x['rank_correlation']:.2f}"
            for x in f["randomisation"]
            if x["rank_correlation"] is not None
        )
        sens = f["class_sensitivity"]
        differ = f"; top class and runner-up differ on {sens['share_different']:.0%}" if sens else ""
        lines.append(
            f"- {r.case}, {f['images']} images: {'pass' if f['passed'] else 'fail'}; {methods}; random order "
            f"{f['random']['deletion_auc']:.3f} / {f['random']['insertion_auc']:.3f}; randomised weights (rank "
            f"correlation) {randomised or 'n/a'}{differ}"
        )
    lines += ["", "Workload:", "", *[f"- {n}" for n in notes], ""]
    return lines
