"""GPU figures (``python -m benchmarks --suite gpu``): the CUDA path, each figure against
the bare alternative measured on the same machine in the same run.

* extraction: reportgen's images/s (decode included) against the bare forward pass on
  pre-decoded tensors, and against decoding alone: TorchScript, and ONNX where ONNX
  Runtime's CUDA provider runs (``pip install 'reportgen[gpu]'``); ResNet-50's images/s;
* Grad-CAM: reportgen (torch, and ONNX through its torch twin) against the grad-cam
  package, both on the GPU;
* exact kNN on the GPU (``models/cuda_knn.py``) at 200,000 and 1,000,000 rows of 1,024
  values, checked against the CPU search on sampled queries, and against the CPU search's
  own speed on those queries;
* a whole ``reportgen audit --device cuda``: wall time per phase, over decode + forward
  (TorchScript twice: the second run reads the converted graph from the program cache).

It needs a CUDA device (``--device cpu`` runs the same code on the CPU, to check it).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import numpy as np

from benchmarks.measure import (
    Figure,
    _best_of,
    _decode_all,
    _extraction_seconds,
    _run_measured,
    bare_forward,
    subset_folder,
)
from reportgen.data import Preprocess, discover
from reportgen.models import program_cache
from reportgen.models.onnx_adapter import cuda_unavailable


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def extraction(
    kind: str, label: str, model: Path, images: Path, batch: int, device: str, decode: tuple[float, np.ndarray] | None
) -> tuple[list[Figure], tuple[float, np.ndarray]]:
    """reportgen's extraction (all default layers, decoded as the command line decodes:
    worker processes on a GPU) over the bare forward pass, and over decoding alone in one
    thread (measured once, then reused)."""
    dataset = discover(images, follow_links=True)
    pre = Preprocess((224, 224))
    files = [dataset.root / r.file for r in dataset.records]
    if decode is None:
        start = time.perf_counter()
        pixels = _decode_all(files, pre)
        decode = (time.perf_counter() - start, pixels)
    decode_s, pixels = decode
    ours, bare, adapter, layers = _extraction_seconds(
        kind, model, dataset, pixels, pre, batch, repeats=2, device=device, decode_processes=True
    )
    n = len(files)
    ratio = (decode_s + bare) / ours
    return [
        Figure(
            f"extraction on {device}, {label}",
            ratio,
            ">= 1 (x one-thread decode + bare forward)",
            ratio >= 1.0,
            f"{n} JPEGs 400x300 -> 224 px, {len(layers)} layers, batch {batch}, {adapter.info.runtime} on "
            f"{adapter.info.device}: reportgen {n / ours:.0f} img/s (decode included); bare forward {n / bare:.0f} "
            f"img/s on pre-decoded tensors; decode alone, one thread, {n / decode_s:.0f} img/s",
        )
    ], decode


def throughput(model: Path, images: Path, batch: int, device: str, decode: tuple[float, np.ndarray]) -> list[Figure]:
    """ResNet-50 from JPEG files to pooled features of every default layer: images/s."""
    dataset = discover(images, follow_links=True)
    pre = Preprocess((224, 224))
    decode_s, pixels = decode
    ours, bare, _, layers = _extraction_seconds(
        "torchscript", model, dataset, pixels, pre, batch, repeats=2, device=device, decode_processes=True
    )
    n = len(pixels)
    return [
        Figure(
            f"extraction on {device}, TorchScript ResNet-50: images/s from JPEG",
            n / ours,
            ">= 3000 img/s",
            n / ours >= 3000,
            f"{n} JPEGs 400x300 -> 224 px, {len(layers)} layers, batch {batch}: reportgen {n / ours:.0f} img/s; bare "
            f"forward {n / bare:.0f} img/s on pre-decoded tensors; decode alone, one thread, {n / decode_s:.0f} img/s",
        )
    ]


def gradcam(models: dict[str, Path], images: Path, n_images: int, device: str, onnx: bool) -> list[Figure]:
    """reportgen's Grad-CAM on the device over the grad-cam package's on the same device
    (same weights, layer, images, targets), and the maps' agreement; for the torch route,
    how much of its time is the forward and backward pass."""
    import torch
    import torchvision
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from reportgen.analyses.cam import compute_cam
    from reportgen.models import last_spatial_layer, load_model

    dataset = discover(images, follow_links=True)
    pre = Preprocess((224, 224))
    x = _decode_all([dataset.root / r.file for r in dataset.records][:n_images], pre)
    targets = np.arange(len(x)) % 10
    eager = torchvision.models.resnet18(num_classes=10).eval()
    eager.load_state_dict(torch.load(models["state_dict"], weights_only=True))
    eager = eager.to(device)
    xt = torch.from_numpy(x).to(device)
    cam = GradCAM(model=eager, target_layers=[eager.layer4[-1]])
    theirs = {}

    def package() -> None:
        theirs["maps"] = cam(input_tensor=xt, targets=[ClassifierOutputTarget(int(t)) for t in targets])
        _sync(device)

    package_s = _best_of(package, repeats=3)
    rows = []
    for kind in ("state_dict", *(["onnx"] if onnx else [])):
        adapter = load_model(models[kind], device=device, arch="resnet18" if kind == "state_dict" else None)
        adapter.prepare(pre.size)
        split = adapter.split(last_spatial_layer(adapter.layers()))
        ours = {}

        def reportgen_cam() -> None:
            ours["maps"] = compute_cam("gradcam", split, x, targets, pre.size).maps  # noqa: B023

        ours_s = _best_of(reportgen_cam, repeats=3)
        passes = ""
        if kind == "state_dict":
            passes_s = _best_of(lambda: split.gradcam_inputs(x, targets), repeats=3)  # noqa: B023
            passes = f"; of its time, the forward and backward passes with the copies back {passes_s * 1e3:.0f} ms"
        a = np.asarray(ours["maps"], np.float64).reshape(len(x), -1)
        b = np.asarray(theirs["maps"], np.float64).reshape(len(x), -1)
        corr = [np.corrcoef(p, q)[0, 1] for p, q in zip(a, b, strict=True) if np.ptp(p) > 0 and np.ptp(q) > 0]
        ratio = package_s / ours_s
        label = "torch (state_dict)" if kind == "state_dict" else f"ONNX ({adapter.info.runtime}, torch twin)"
        rows.append(
            Figure(
                f"Grad-CAM on {device}, {label}",
                ratio,
                ">= 2 (x the grad-cam package on the same device)",
                ratio >= 2.0,
                f"{len(x)} images at 224 px, ResNet-18 layer4: reportgen {len(x) / ours_s:.0f} img/s "
                f"({ours_s * 1e3:.0f} ms{passes}), grad-cam package {len(x) / package_s:.0f} img/s; map correlation "
                f"with the package's: median {float(np.median(corr)) if corr else float('nan'):.4f}",
            )
        )
    return rows


def exact_knn(sizes: list[int], dim: int, device: str, checked: int) -> list[Figure]:
    """The exact search on the device, leave-one-out, k = 10, over seeded manifold features;
    ``checked`` sampled queries searched again by the CPU search (identical neighbours
    expected), whose time per query, times N, is the CPU figure it is set against."""
    from benchmarks.workload import manifold_features
    from reportgen.analyses.knn import knn_search
    from reportgen.models.cuda_knn import knn_search_cuda

    out = []
    for n in sizes:
        x = manifold_features(n, dim)
        knn_search_cuda(x[:1000], x[:1000], 10, query_rows=np.arange(1000), device=device)  # warm-up
        start = time.perf_counter()
        idx, dist = knn_search_cuda(x, x, 10, query_rows=np.arange(n), device=device)
        gpu_s = time.perf_counter() - start
        rows = np.sort(np.random.default_rng(1).choice(n, size=min(n, checked), replace=False))
        start = time.perf_counter()
        cpu = knn_search(x[rows], x, 10, query_rows=rows)
        cpu_s = (time.perf_counter() - start) * n / len(rows)
        same = float(np.mean(cpu.indices == idx[rows]))
        close = float(np.max(np.abs(cpu.distances - dist[rows])))
        out.append(
            Figure(
                f"exact kNN on {device}, N = {n:,}, {dim} dims",
                cpu_s / gpu_s,
                "identical neighbours to the CPU search",
                same == 1.0,
                f"all {n:,} queries, k = 10: {gpu_s:.1f} s on {device}; the CPU search on this machine's cores "
                f"would take {cpu_s:.0f} s (timed on {len(rows):,} queries, times N); on those queries identical "
                f"neighbour indices {100 * same:.3f}%, largest distance difference {close:.1e}",
            )
        )
        del x, idx, dist
    return out


def whole_report(
    kind: str, model: Path, images: Path, out_dir: Path, batch: int, device: str, programs: Path, runs: int = 1
) -> list[Figure]:
    """``reportgen audit --device`` wall time, its phases, over one-thread decode + bare
    forward; with ``runs`` = 2 the second run reads the converted graph from the program
    cache (``programs``, empty at first), and the ratio is the second run's."""
    report = out_dir / "report.html"
    cmd = [sys.executable, "-m", "reportgen", "audit", str(model), str(images), "-o", str(report), "-q"]
    cmd += ["--no-cache", "--follow-links", "--size", "224", "--device", device, "--batch-size", str(batch)]
    before = os.environ.get(program_cache.ENV)
    os.environ[program_cache.ENV] = str(programs)
    walls = []
    try:
        for _ in range(runs):
            shutil.rmtree(out_dir, ignore_errors=True)
            wall, peak = _run_measured(cmd)
            walls.append(wall)
    finally:
        if before is None:
            os.environ.pop(program_cache.ENV, None)
        else:
            os.environ[program_cache.ENV] = before
    data = json.loads(report.with_suffix(".json").read_text())
    dataset = discover(images, follow_links=True)
    pre = Preprocess((224, 224))
    start = time.perf_counter()
    pixels = _decode_all([dataset.root / r.file for r in dataset.records], pre)
    decode_s = time.perf_counter() - start
    forward_s = bare_forward(kind, model, pixels, batch, device)
    phases = ", ".join(f"{k} {v:.1f} s" for k, v in sorted(data["timings"].items(), key=lambda kv: -kv[1])[:8])
    wall = walls[-1]
    ratio = wall / (decode_s + forward_s)
    label = "ONNX" if kind == "onnx" else "TorchScript"
    first = f" (first run, converting the graph: {walls[0]:.1f} s)" if runs > 1 else ""
    return [
        Figure(
            f"whole report on {device}, {label}, N = {len(pixels):,}",
            ratio,
            "<= 2.5 (x one-thread decode + bare forward)",
            ratio <= 2.5,
            f"`reportgen audit --device {device}` {wall:.1f} s wall{first}; model on {data['model']['device']} "
            f"({data['model']['runtime']}); decode {decode_s:.1f} s + bare forward {forward_s:.1f} s; longest phases "
            f"(the t-SNE overlaps the phases before it): {phases}; peak RSS {peak / 2**20:.0f} MiB",
        )
    ]


def _guarded(name: str, rows: list[Figure], work: Callable[[], list[Figure]]) -> None:
    """Run one group of figures; a failure becomes a row saying so, not a lost run."""
    try:
        rows.extend(work())
    except Exception as exc:  # noqa: BLE001 - recorded in the results instead
        traceback.print_exc()
        rows.append(Figure(name, None, "–", False, f"failed: {' '.join(str(exc).split())[:300]}"))


def run(
    work: Path, quick: bool, device: str, partial: Callable[[list[Figure]], None] | None = None
) -> tuple[list[Figure], list[str]]:
    """Every GPU figure (``partial`` sees the rows so far after each group); the notes say
    what the machine's runtimes offered."""
    import onnxruntime
    import torch

    from benchmarks.workload import build_images, build_models, build_resnet50

    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("the gpu suite needs a CUDA device (or --device cpu to check it on the CPU)")
    n_images, n_cam, batch = (48, 8, 16) if quick else (2000, 128, 64)
    sizes, dim, checked = ([3000], 64, 200) if quick else ([200_000, 1_000_000], 1024, 2000)
    models = build_models(work / "models")
    resnet50 = build_resnet50(work / "models")
    images = subset_folder(build_images(work / "images", n_images), work / f"subset-{n_images}", n_images)
    why_not_onnx = cuda_unavailable() if device == "cuda" else None
    onnx = why_not_onnx is None
    started = time.perf_counter()

    def step(name: str) -> None:
        if partial is not None and rows:
            partial(rows)
        print(f"[{time.perf_counter() - started:7.1f} s] {name}", file=sys.stderr, flush=True)

    rows: list[Figure] = []
    decode: list[tuple[float, np.ndarray]] = []

    def extract_rows(kind: str, label: str) -> list[Figure]:
        got, pair = extraction(kind, label, models[kind], images, batch, device, decode[0] if decode else None)
        decode[:] = [pair]
        return got

    step("extraction")
    _guarded("extraction, TorchScript", rows, lambda: extract_rows("torchscript", "TorchScript ResNet-18"))
    if onnx:
        _guarded("extraction, ONNX", rows, lambda: extract_rows("onnx", "ONNX ResNet-18"))
    if decode:
        _guarded("ResNet-50 throughput", rows, lambda: throughput(resnet50, images, batch, device, decode[0]))
    step("Grad-CAM")
    _guarded("Grad-CAM", rows, lambda: gradcam(models, images, n_cam, device, onnx))
    step("whole report")
    with tempfile.TemporaryDirectory() as folder:
        programs = Path(folder) / "programs"
        for kind in ("torchscript", *(["onnx"] if onnx else [])):
            _guarded(
                f"whole report, {kind}",
                rows,
                lambda kind=kind: whole_report(
                    kind,
                    models[kind],
                    images,
                    Path(folder) / "report",
                    batch,
                    device,
                    programs,
                    runs=2 if kind == "torchscript" else 1,
                ),
            )
    step("exact kNN")
    _guarded("exact kNN", rows, lambda: exact_knn(sizes, dim, device, checked))
    providers = onnxruntime.get_available_providers()
    notes = [
        f"- ONNX Runtime {onnxruntime.__version__}, providers here: {', '.join(providers)}"
        + ("" if onnx else f"; ONNX models are not measured on {device} here ({why_not_onnx})"),
        "- CPU figures for the same workloads: `RESULTS.md` (2-core machine)",
    ]
    return rows, notes
