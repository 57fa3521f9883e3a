"""Dataset scale (``python -m benchmarks --suite scale``): whole audits from 50,000 to
1,000,000 images of seeded augmented copies of scikit-learn's digits, with its CNN.

The images are written once at the largest size; smaller folders are hard links to
the first rows, so their listings (name, size, mtime) match the large one's.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from benchmarks.diagnostics import digits, train_digits_cnn

SHIFT = 2  # pixels each copy may move, each way
NOISE = 8.0  # standard deviation of the added noise, in 0-255 grey levels
CHUNK = 10_000


def _write_chunk(args: tuple[Path, int, int, int]) -> int:
    folder, start, stop, seed = args
    base, labels = digits(quick=False)
    rng = np.random.default_rng([seed, start])
    pick = rng.integers(0, len(base), size=stop - start)
    shifts = rng.integers(-SHIFT, SHIFT + 1, size=(stop - start, 2))
    gains = rng.uniform(0.7, 1.15, size=stop - start)
    for j, i in enumerate(range(start, stop)):
        img = np.roll(base[pick[j]].astype(np.float32), tuple(shifts[j]), axis=(0, 1)) * gains[j]
        img += rng.normal(0.0, NOISE, size=img.shape[:2])[..., None]
        path = folder / str(int(labels[pick[j]])) / f"{i:07d}.png"
        Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).save(path, compress_level=1)
    return stop - start


def write_images(folder: Path, n: int, seed: int = 0, workers: int = 2) -> Path:
    """``n`` augmented digits under ``folder/<digit>/<row>.png`` (kept when complete)."""
    done = folder / ".complete"
    if done.is_file() and int(done.read_text()) == n:
        return folder
    for d in range(10):
        (folder / str(d)).mkdir(parents=True, exist_ok=True)
    jobs = [(folder, s, min(s + CHUNK, n), seed) for s in range(0, n, CHUNK)]
    with ProcessPoolExecutor(workers) as pool:
        for _ in pool.map(_write_chunk, jobs):
            pass
    done.write_text(str(n))
    return folder


def linked_subset(source: Path, folder: Path, n: int) -> Path:
    """The first ``n`` rows of ``source`` as hard links under ``folder``."""
    done = folder / ".complete"
    if done.is_file() and int(done.read_text()) == n:
        return folder
    for d in range(10):
        (folder / str(d)).mkdir(parents=True, exist_ok=True)
        for entry in os.scandir(source / str(d)):
            if int(entry.name[:7]) < n and not (folder / str(d) / entry.name).exists():
                os.link(entry.path, folder / str(d) / entry.name)
    done.write_text(str(n))
    return folder


def model(work: Path) -> Path:
    """The digits CNN, trained on the digits themselves (15 epochs)."""
    path = work / "digits.onnx"
    if not path.is_file():
        images, labels = digits(quick=False)
        train_digits_cnn(images, labels, path, epochs=15)
    return path


# ------------------------------------------------------------------ runs


@dataclass
class Run:
    """One whole audit at one size: wall time, peak memory, what it wrote, per phase."""

    n: int
    from_cache: bool
    wall: float
    peak_rss: int  # bytes
    phases: dict[str, float]
    html: int
    json: int
    csv: int
    recall: dict[str, float]  # layer -> recall@k of the approximate search (approximate layers only)
    methods: list[str]
    engine: dict | None = None  # the JSON's ``engine`` of a Ray run

    @property
    def label(self) -> str:
        if self.from_cache:
            return "cache"
        if self.engine is None:
            return "extracted"
        e = self.engine
        return f"extracted on Ray ({e['workers']} {e['worker_kind']} worker x {e['cpus_per_worker']} CPUs, {e['shards']} shards)"


def audit(model: Path, images: Path, out: Path, cache: Path, *extra: str) -> Run:
    """``reportgen audit`` (CPU, batch 256, the digits' [0, 1] pixels) measured in a fresh
    interpreter; the features cache at ``cache`` (reused when valid)."""
    from benchmarks.measure import _run_measured

    cmd = [sys.executable, "-m", "reportgen", "audit", str(model), str(images), "-o", str(out), "-q"]
    cmd += ["--mean", "0", "--std", "1", "--device", "cpu", "--batch-size", "256", "--features", str(cache), *extra]
    wall, rss = _run_measured(cmd)
    data = json.loads(out.with_suffix(".json").read_text())
    csv = out.with_name(out.stem + ".predictions.csv.gz")
    searches = {layer["name"]: layer["knn_search"] for layer in data["layers"] if layer.get("knn_search")}
    return Run(
        n=data["dataset"]["n_images"],
        from_cache=bool(data["features_from_cache"]),
        wall=wall,
        peak_rss=rss,
        phases=data["timings"] or {},
        html=out.stat().st_size,
        json=out.with_suffix(".json").stat().st_size,
        csv=csv.stat().st_size if csv.is_file() else 0,
        recall={k: v["recall_at_k"] for k, v in searches.items() if v["method"] == "approximate"},
        methods=sorted({v["method"] for v in searches.values()}),
        engine=data.get("engine"),
    )


def decode_and_forward(model: Path, images: Path, batch: int = 256) -> float:
    """Seconds to decode every image and run the bare model on it (no taps, no pooling):
    the cost any tool that looks at every image pays."""
    import onnxruntime as ort

    from reportgen.data import Preprocess, discover, load_one

    dataset = discover(images)
    pre = Preprocess((32, 32), mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0))
    sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    files = [dataset.root / r.file for r in dataset.records]
    start = time.perf_counter()
    for s in range(0, len(files), batch):
        pixels = np.stack([load_one(f, pre)[0] for f in files[s : s + batch]])
        sess.run(None, {name: pixels})
    return time.perf_counter() - start


def exponent(a: tuple[int, float], b: tuple[int, float]) -> float:
    """The growth exponent p of cost ~ N^p between two (N, seconds) points."""
    return math.log(b[1] / a[1]) / math.log(b[0] / a[0])


def run(work: Path, quick: bool) -> tuple[list[Run], dict[int, float], list[str]]:
    """Audits from scratch at the smaller sizes and from the cache at the largest (its
    cache extracted first when missing); decode + forward at the middle size."""
    largest, scratch = (3_000, [1_000, 2_000]) if quick else (1_000_000, [50_000, 100_000, 200_000])
    extra = ["--knn-search", "approximate"] if quick else []  # quick: the index route at a tiny size
    work.mkdir(parents=True, exist_ok=True)
    onnx = model(work)
    images = write_images(work / f"images-{largest}", largest)
    runs, baseline, notes = [], {}, []
    for n in scratch:
        folder = linked_subset(images, work / f"images-{n}", n)
        out = work / f"run-{n}" / "report.html"
        shutil.rmtree(out.parent, ignore_errors=True)
        runs.append(audit(onnx, folder, out, out.with_name("report.features"), *extra))
    baseline[scratch[-1]] = decode_and_forward(onnx, work / f"images-{scratch[-1]}")
    if ray_installed():
        runs.append(ray_audit(onnx, work / f"images-{scratch[-1]}", work, *extra))
    else:
        notes.append("no Ray row: Ray is not installed (pip install 'reportgen[ray]')")
    out = work / f"run-{largest}" / "report.html"
    cache = out.with_name("report.features")
    first = audit(onnx, images, out, cache, *extra)
    if not first.from_cache:
        notes.append(f"the {largest:,}-image cache was extracted by this run ({first.wall:.0f} s, whole report)")
        runs.append(first)
        first = audit(onnx, images, out, cache, *extra)
    else:
        notes.append(f"the {largest:,}-image cache was reused from an earlier run of this suite (same key)")
    runs.append(first)
    return runs, baseline, notes


def ray_installed() -> bool:
    import importlib.util

    return importlib.util.find_spec("ray") is not None


def ray_audit(onnx: Path, images: Path, work: Path, *extra: str) -> Run:
    """The same audit with ``--engine ray`` (a Ray started on this machine by the run,
    its default workers and shards), into a fresh cache."""
    out = work / f"run-ray-{images.name}" / "report.html"
    shutil.rmtree(out.parent, ignore_errors=True)
    env_address = os.environ.pop("RAY_ADDRESS", None)
    try:
        return audit(onnx, images, out, out.with_name("report.features"), *extra, "--engine", "ray")
    finally:
        if env_address is not None:
            os.environ["RAY_ADDRESS"] = env_address


def run_ray(work: Path, quick: bool) -> tuple[list[Run], list[str]]:
    """``--suite ray``: the local and the Ray route on the scale suite's middle-sized
    folder (200,000 images; 2,000 with ``quick``), each from scratch."""
    n = 2_000 if quick else 200_000
    work.mkdir(parents=True, exist_ok=True)
    onnx = model(work)
    images = write_images(work / f"images-{n}", n)
    out = work / f"run-{n}" / "report.html"
    shutil.rmtree(out.parent, ignore_errors=True)
    return [audit(onnx, images, out, out.with_name("report.features")), ray_audit(onnx, images, work)], []


def ray_lines(runs: list[Run]) -> list[str]:
    """The Ray route against the local one at the same size: throughput and overhead."""
    out = []
    for ray in (r for r in runs if r.engine is not None):
        local = next((r for r in runs if r.n == ray.n and r.engine is None and not r.from_cache), None)
        if local is None:
            continue
        fast, slow = ray.n / local.phases["extract"], ray.n / ray.phases["extract"]
        overhead = ray.phases["extract"] / local.phases["extract"] - 1
        phases = ", ".join(f"{k} {v:.1f} s" for k, v in ray.engine["seconds"].items())
        out.append(
            f"- goal, Ray on one machine, {ray.n:,} images: extraction {slow:,.0f} img/s against {fast:,.0f} img/s "
            f"locally, overhead {overhead:+.0%} (<= 20%: {'met' if overhead <= 0.20 else '**not met**'}); "
            f"whole report {ray.wall:.0f} s against {local.wall:.0f} s; Ray's phases: {phases} (worker compute: "
            "the workers' seconds per shard, summed; a worker runs two shards at once)"
        )
    return out


def markdown(runs: list[Run], baseline: dict[int, float], notes: list[str]) -> list[str]:
    """The results: one row per run, the goals, and the growth exponents."""
    phases = ["discover", "extract", "knn", "suspects", "tsne", "explorer", "cam", "figures"]
    out = [
        "",
        "| images | features | wall | " + " | ".join(phases) + " | peak RSS | HTML | JSON | CSV | kNN recall@10 |",
        "|---" * (len(phases) + 8) + "|",
    ]
    for r in runs:
        recall = f"{min(r.recall.values()):.3f}-{max(r.recall.values()):.3f}" if r.recall else "exact"
        out.append(
            f"| {r.n:,} | {r.label} | {r.wall:.0f} s | "
            + " | ".join(f"{r.phases.get(p, 0):.0f}" for p in phases)
            + f" | {r.peak_rss / 1e9:.2f} GB | {r.html / 1e6:.1f} MB | {r.json / 1e6:.1f} MB | "
            f"{r.csv / 1e6:.1f} MB | {recall} |"
        )
    out += ["", "Phases in seconds (`timings` of each report's JSON); wall includes loading and writing.", ""]
    cached = [r for r in runs if r.from_cache]
    scratch = [r for r in runs if not r.from_cache and r.engine is None]
    if cached:
        r = cached[-1]
        worst = min(r.recall.values()) if r.recall else 1.0
        out.append(
            f"- goal, {r.n:,} images from the cache: wall {r.wall / 60:.1f} min (<= 30: "
            f"{'met' if r.wall <= 1800 else '**not met**'}), peak RSS {r.peak_rss / 1e9:.2f} GB (<= 8: "
            f"{'met' if r.peak_rss <= 8e9 else '**not met**'}), HTML {r.html / 1e6:.1f} MB (<= 25: "
            f"{'met' if r.html <= 25e6 else '**not met**'}); lowest recall@10 of a layer {worst:.3f}"
        )
    for n, base in baseline.items():
        match = [r for r in scratch if r.n == n]
        if match:
            ratio = match[-1].wall / base
            out.append(
                f"- goal, {n:,} images from scratch: whole report {match[-1].wall:.0f} s = {ratio:.2f} x decode + "
                f"forward ({base:.0f} s, onnxruntime, batch 256) (<= 4: {'met' if ratio <= 4 else '**not met**'})"
            )
    out += ray_lines(runs)
    local = [r for r in runs if r.engine is None]
    analysis = sorted({r.n: r.wall - r.phases.get("extract", 0.0) for r in local}.items())
    knn = sorted({r.n: r.phases.get("knn", 0.0) for r in local}.items())
    for label, points in (("whole report less extraction", analysis), ("kNN (all layers)", knn)):
        steps = [f"{a[0]:,} -> {b[0]:,}: N^{exponent(a, b):.2f}" for a, b in itertools.pairwise(points) if a[1] > 0]
        if steps:
            out.append(f"- growth, {label}: " + "; ".join(steps))
    out += [f"- {n}" for n in notes]
    return out
