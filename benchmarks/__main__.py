"""``python -m benchmarks [--quick] [--output FILE]``: every figure in one run.

The full run takes about half an hour on 2 cores and writes ``benchmarks/RESULTS.md``;
``--quick`` shrinks every workload so it runs in a couple of minutes (CI runs it to
check that the benchmark works; its timings gate nothing).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent


def machine() -> str:
    cpu = "unknown CPU"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = ""
    try:
        total = int(
            next(x for x in Path("/proc/meminfo").read_text().splitlines() if x.startswith("MemTotal")).split()[1]
        )
        mem = f", {total / 2**20:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        pass
    import numpy
    import onnxruntime
    import sklearn
    import torch

    gpu = "no GPU" if not torch.cuda.is_available() else torch.cuda.get_device_name(0)
    return (
        f"{cpu}, {os.cpu_count()} cores{mem}, {gpu}; Python {platform.python_version()}, torch {torch.__version__}, "
        f"onnxruntime {onnxruntime.__version__}, scikit-learn {sklearn.__version__}, numpy {numpy.__version__}"
    )


def gpu_line() -> str:
    """What the results say about GPU figures: written by the harness, never by hand."""
    import torch

    if torch.cuda.is_available():
        return (
            f"- GPU: {torch.cuda.get_device_name(0)} present; every figure here is still a CPU figure "
            "(`--device cpu`): GPU figures come from their own run"
        )
    return "- GPU figures: not measured — this machine has no CUDA device; they come from a run on a GPU machine"


def figure_table(rows: list[Any]) -> list[str]:
    """Benchmark figures as a Markdown table."""
    table = ["| figure | value | target | met | how it was measured |", "|---|---|---|---|---|"]
    for r in rows:
        met = {True: "yes", False: "**no**", None: "–"}[r.ok]
        value = "–" if r.value is None else f"{r.value:.2f}"
        table.append(f"| {r.name} | {value} | {r.target} | {met} | {r.detail} |")
    return table


def write_results(output: Path, title: str, command: str, elapsed: float, body: list[str], echo: bool = True) -> None:
    """One results file: title, when, on what, by which command, then ``body``; printed too
    (unless ``echo`` is false)."""
    text = "\n".join(
        [
            f"# {title}",
            "",
            f"- date: {dt.datetime.now(dt.UTC).strftime('%Y-%m-%d %H:%M UTC')}",
            f"- machine: {machine()}",
            f"- command: `{command}` ({elapsed / 60:.1f} min)",
            *body,
            "",
        ]
    )
    if echo:
        print(text)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny workloads: checks the harness runs, not how fast")
    parser.add_argument(
        "--output", type=Path, default=HERE / "RESULTS.md", help="Markdown results (default: benchmarks/RESULTS.md)"
    )
    parser.add_argument("--work", type=Path, default=HERE / ".work", help="where the workload is generated and cached")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--suite",
        choices=("core", "architectures", "diagnostics", "scale", "ray", "gpu"),
        default="core",
        help="core: the ResNet-18 figures (RESULTS.md); architectures: ViT-B/16 and ConvNeXt-T "
        "(RESULTS-architectures.md); diagnostics: layer pooling and suspected mislabels against ground truth "
        "and cleanlab (RESULTS-diagnostics.md); scale: whole audits from 50,000 to 1,000,000 images, from the "
        "features cache at the largest (RESULTS-scale.md); ray: the local and the Ray route at 200,000 images "
        "(RESULTS-ray.md); gpu: the CUDA path on a GPU machine (RESULTS-gpu.md)",
    )
    parser.add_argument(
        "--device", choices=("cuda", "cpu"), default="cuda", help="gpu suite only: cpu runs its code on the CPU"
    )
    args = parser.parse_args(argv)

    from benchmarks import measure
    from benchmarks.workload import build_images, build_models

    quick = args.quick
    if args.suite == "architectures":
        output = args.output if args.output != HERE / "RESULTS.md" else HERE / "RESULTS-architectures.md"
        return architectures(args.work / ("quick" if quick else "full"), quick, args.batch_size, output)
    if args.suite == "diagnostics":
        output = args.output if args.output != HERE / "RESULTS.md" else HERE / "RESULTS-diagnostics.md"
        return diagnostics(args.work / ("quick" if quick else "full") / "diagnostics", quick, output)
    if args.suite == "gpu":
        output = args.output if args.output != HERE / "RESULTS.md" else HERE / "RESULTS-gpu.md"
        return gpu(args.work / ("quick" if quick else "full") / "gpu", quick, args.device, output)
    if args.suite == "ray":
        output = args.output if args.output != HERE / "RESULTS.md" else HERE / "RESULTS-ray.md"
        return ray_suite(args.work / ("quick" if quick else "full") / "scale", quick, output)
    if args.suite == "scale":
        output = args.output if args.output != HERE / "RESULTS.md" else HERE / "RESULTS-scale.md"
        return scale(args.work / ("quick" if quick else "full") / "scale", quick, output)
    work = args.work / ("quick" if quick else "full")
    sizes = {
        "extract": 64 if quick else 1000,
        "tsne": [300] if quick else [2000, 10000],
        "knn": 2000 if quick else 20000,
        "cam": 8 if quick else 32,
        "report": [100, 200] if quick else [1000, 5000],
        "explorer": 200 if quick else 10000,
        "ann": 5000 if quick else 100_000,
    }
    total = max([sizes["extract"], *sizes["tsne"], *sizes["report"], sizes["cam"], sizes["explorer"]])
    started = time.perf_counter()
    print(f"building the workload in {work} ({total} images)...", file=sys.stderr)
    models = build_models(work / "models")
    images = build_images(work / "images", total)
    folders = {
        n: measure.subset_folder(images, work / f"subset-{n}", n)
        for n in {sizes["extract"], *sizes["tsne"], *sizes["report"], sizes["cam"], sizes["explorer"]}
    }
    rows: list[measure.Figure] = []

    def step(name: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f} s] {name}", file=sys.stderr, flush=True)

    step("extraction efficiency")
    rows += measure.extraction_efficiency(models, folders[sizes["extract"]], args.batch_size)
    for n in sizes["tsne"]:
        step(f"t-SNE, N = {n}")
        arrays, layers, labels = measure.layer_features(models["onnx"], folders[n], args.batch_size)
        rows.append(measure.tsne_ratio(arrays, layers, labels))
    step("kNN")
    rows.append(measure.knn_ratio(sizes["knn"]))
    step("Grad-CAM")
    rows += measure.gradcam_ratio(models, folders[sizes["cam"]], sizes["cam"])
    step("whole reports")
    out_dir = work / "reports"
    shutil.rmtree(out_dir, ignore_errors=True)
    report_rows, reports = measure.whole_report(
        models["onnx"], {n: folders[n] for n in sizes["report"]}, out_dir, args.batch_size
    )
    rows += report_rows
    largest = max(reports)
    rows.append(measure.report_size(reports[largest], largest))
    step(f"explorer, N = {sizes['explorer']}")
    rows += measure.explorer(models["onnx"], folders[sizes["explorer"]], sizes["explorer"], out_dir, args.batch_size)
    step(f"approximate kNN, N = {sizes['ann']:,}")
    real = out_dir / f"explorer-{sizes['explorer']}" / "features"
    rows += measure.approximate_knn(sizes["ann"], 1024, real=real)
    elapsed = time.perf_counter() - started

    write_results(
        args.output,
        "Benchmark results" + (" (quick mode: tiny workloads, timings meaningless)" if quick else ""),
        "python -m benchmarks" + (" --quick" if quick else ""),
        elapsed,
        [
            "- workload: torchvision ResNet-18, seeded random weights, 10 outputs, exported to ONNX (opset 17) and "
            "TorchScript; seeded synthetic 400x300 JPEGs in 10 class folders; kNN on seeded clustered 512-d features",
            "- every figure is measured on the CPU (`--device cpu` in every run), even where a GPU is present: "
            "GPU figures are a separate run on a GPU machine, recorded in their own file",
            gpu_line(),
            "- the other suites: `RESULTS-architectures.md` (ViT-B/16, ConvNeXt-T), `RESULTS-diagnostics.md` "
            "(layer pooling and suspected mislabels against ground truth and cleanlab), `RESULTS-scale.md` "
            "(dataset scale: 50,000 to 1,000,000 images)",
            "",
            *figure_table(rows),
        ],
    )
    return 0


def gpu(work: Path, quick: bool, device: str, output: Path) -> int:
    from benchmarks import gpu as suite

    started = time.perf_counter()
    title = "Benchmark results: GPU" + (" (quick mode: tiny workloads, timings meaningless)" if quick else "")
    command = (
        f"python -m benchmarks --suite gpu{' --quick' if quick else ''}{' --device cpu' if device == 'cpu' else ''}"
    )
    workload = (
        "- workload: torchvision ResNet-18, seeded random weights, 10 outputs, as TorchScript, ONNX and state_dict; "
        "ResNet-50 likewise as TorchScript; seeded synthetic 400x300 JPEGs; kNN on seeded manifold features "
        "(`benchmarks/workload.py`)"
    )

    def partial(rows: list[Any]) -> None:
        # Device time is short: what is measured is on disk at once, should the run be cut off.
        write_results(
            output,
            f"{title} (partial: the run was still going)",
            command,
            time.perf_counter() - started,
            [workload, "", *figure_table(rows)],
            echo=False,
        )

    rows, notes = suite.run(work, quick, device, partial)
    write_results(output, title, command, time.perf_counter() - started, [workload, *notes, "", *figure_table(rows)])
    return 0


SCALE_WORKLOAD = (
    "- workload: scikit-learn's digits at 32x32 (each copy shifted up to 2 px, gain 0.7-1.15, Gaussian "
    "noise sd 8, seeded), PNG in 10 class folders; the 3-conv digits CNN of the diagnostics suite (ONNX); "
    "`reportgen audit --device cpu --batch-size 256` with every default (6 layers, ~4,700 values per image)"
)


def scale(work: Path, quick: bool, output: Path) -> int:
    from benchmarks import scale as suite

    started = time.perf_counter()
    runs, baseline, notes = suite.run(work, quick)
    write_results(
        output,
        "Dataset scale" + (" (quick mode: tiny workloads, timings meaningless)" if quick else ""),
        "python -m benchmarks --suite scale" + (" --quick" if quick else ""),
        time.perf_counter() - started,
        [SCALE_WORKLOAD, gpu_line(), *suite.markdown(runs, baseline, notes)],
    )
    return 0


def ray_suite(work: Path, quick: bool, output: Path) -> int:
    from benchmarks import scale as suite

    if not suite.ray_installed():
        print("the ray suite needs Ray: pip install 'reportgen[ray]'", file=sys.stderr)
        return 2
    started = time.perf_counter()
    runs, notes = suite.run_ray(work, quick)
    write_results(
        output,
        "Extraction on Ray" + (" (quick mode: tiny workloads, timings meaningless)" if quick else ""),
        "python -m benchmarks --suite ray" + (" --quick" if quick else ""),
        time.perf_counter() - started,
        [
            SCALE_WORKLOAD + "; then the same with `--engine ray` (a Ray started by the run on this machine, "
            "default workers and shards), each into a fresh features cache",
            gpu_line(),
            *suite.markdown(runs, {}, notes),
        ],
    )
    return 0


def diagnostics(work: Path, quick: bool, output: Path) -> int:
    from benchmarks import diagnostics as suite

    started = time.perf_counter()
    curves, comparisons, notes = suite.run(work, quick, HERE.parent / "sample_data")
    from benchmarks import review

    review_runs, recovery, review_notes = review.run(work, quick)
    from benchmarks import multilabel

    labels = multilabel.run(quick)
    elapsed = time.perf_counter() - started
    write_results(
        output,
        "Diagnostics against ground truth" + (" (quick mode: small workloads)" if quick else ""),
        "python -m benchmarks --suite diagnostics" + (" --quick" if quick else ""),
        elapsed,
        [
            "",
            *suite.markdown(curves, comparisons, notes),
            *review.markdown(review_runs, recovery, review_notes),
            *multilabel.markdown(labels),
        ],
    )
    return 0


def architectures(work: Path, quick: bool, batch: int, output: Path) -> int:
    """The modern-architectures figures, in their own results file."""
    from benchmarks import measure
    from benchmarks.workload import build_images, build_modern_models

    started = time.perf_counter()
    n_images, n_cam = (16, 2) if quick else (64, 4)
    print(f"building the workload in {work}...", file=sys.stderr)
    models = build_modern_models(work / "modern", quick)
    images = measure.subset_folder(build_images(work / "images", n_images), work / f"subset-{n_images}", n_images)
    size = 64 if quick else 224
    rows = measure.modern_architectures(models, images, n_cam, batch, size)
    elapsed = time.perf_counter() - started
    write_results(
        output,
        "Benchmark results: modern architectures"
        + (" (quick mode: tiny models, timings meaningless)" if quick else ""),
        f"python -m benchmarks --suite architectures{' --quick' if quick else ''}",
        elapsed,
        [
            "- workload: torchvision ViT-B/16 and ConvNeXt-T at 224 px, seeded random weights (the ViT's zero-initialised "
            "head given random weights), 10 outputs, exported to ONNX (opset 17, TorchScript-based exporter) and traced "
            "TorchScript; seeded synthetic 400x300 JPEGs; every figure on the CPU",
            gpu_line(),
            "",
            *figure_table(rows),
        ],
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
