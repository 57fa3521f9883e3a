"""GPU figures (``python -m benchmarks --suite gpu``): the CUDA path, each figure against
the bare alternative measured on the same machine in the same run.

* extraction: reportgen's images/s (decode included) against the bare TorchScript forward
  pass on pre-decoded tensors, and against decoding alone;
* Grad-CAM: reportgen against the grad-cam package, both on the GPU;
* exact kNN on the GPU (``models/cuda_knn.py``) at 200,000 and 1,000,000 rows of 1,024
  values, checked against the CPU search on sampled queries, and against the CPU search's
  own speed on those queries;
* a whole ``reportgen audit --device cuda``: wall time per phase, over decode + forward.

It needs a CUDA device (``--device cpu`` runs the same code on the CPU, to check it).
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
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


def _sync(device: str) -> None:
    import torch

    if device == "cuda":
        torch.cuda.synchronize()


def extraction(model: Path, images: Path, batch: int, device: str) -> list[Figure]:
    """reportgen's extraction (all default layers, decode on its threads) over the bare
    forward pass, and over decoding alone in one thread."""
    dataset = discover(images, follow_links=True)
    pre = Preprocess((224, 224))
    files = [dataset.root / r.file for r in dataset.records]
    start = time.perf_counter()
    pixels = _decode_all(files, pre)
    decode_s = time.perf_counter() - start
    ours, bare, _, layers = _extraction_seconds(
        "torchscript", model, dataset, pixels, pre, batch, repeats=2, device=device
    )
    n = len(files)
    return [
        Figure(
            f"extraction on {device}, TorchScript ResNet-18",
            (decode_s + bare) / ours,
            ">= 1 (x one-thread decode + bare forward)",
            (decode_s + bare) / ours >= 1.0,
            f"{n} JPEGs 400x300 -> 224 px, {len(layers)} layers, batch {batch}: reportgen {n / ours:.0f} img/s "
            f"(decode included); bare forward {n / bare:.0f} img/s on pre-decoded tensors; decode alone, one "
            f"thread, {n / decode_s:.0f} img/s",
        )
    ]


def gradcam(models: dict[str, Path], images: Path, n_images: int, device: str) -> list[Figure]:
    """reportgen's Grad-CAM on the device over the grad-cam package's on the same device
    (same weights, layer, images, targets), and the maps' agreement."""
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
    adapter = load_model(models["state_dict"], device=device, arch="resnet18")
    adapter.prepare(pre.size)
    split = adapter.split(last_spatial_layer(adapter.layers()))
    ours = {}

    def reportgen_cam() -> None:
        ours["maps"] = compute_cam("gradcam", split, x, targets, pre.size).maps

    ours_s = _best_of(reportgen_cam, repeats=3)
    a = np.asarray(ours["maps"], np.float64).reshape(len(x), -1)
    b = np.asarray(theirs["maps"], np.float64).reshape(len(x), -1)
    corr = [np.corrcoef(p, q)[0, 1] for p, q in zip(a, b, strict=True) if np.ptp(p) > 0 and np.ptp(q) > 0]
    ratio = package_s / ours_s
    return [
        Figure(
            f"Grad-CAM on {device}, torch (state_dict)",
            ratio,
            ">= 2 (x the grad-cam package on the same device)",
            ratio >= 2.0,
            f"{len(x)} images at 224 px, ResNet-18 layer4: reportgen {len(x) / ours_s:.0f} img/s, grad-cam package "
            f"{len(x) / package_s:.0f} img/s; map correlation with the package's: median "
            f"{float(np.median(corr)) if corr else float('nan'):.4f}",
        )
    ]


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


def whole_report(model: Path, images: Path, out_dir: Path, batch: int, device: str) -> list[Figure]:
    """``reportgen audit --device`` wall time, its phases, over one-thread decode + bare forward."""
    report = out_dir / "report.html"
    shutil.rmtree(out_dir, ignore_errors=True)
    cmd = [sys.executable, "-m", "reportgen", "audit", str(model), str(images), "-o", str(report), "-q"]
    cmd += ["--no-cache", "--follow-links", "--size", "224", "--device", device, "--batch-size", str(batch)]
    wall, peak = _run_measured(cmd)
    data = json.loads(report.with_suffix(".json").read_text())
    dataset = discover(images, follow_links=True)
    pre = Preprocess((224, 224))
    start = time.perf_counter()
    pixels = _decode_all([dataset.root / r.file for r in dataset.records], pre)
    decode_s = time.perf_counter() - start
    forward_s = bare_forward("torchscript", model, pixels, batch, device)
    phases = ", ".join(f"{k} {v:.1f} s" for k, v in sorted(data["timings"].items(), key=lambda kv: -kv[1])[:6])
    ratio = wall / (decode_s + forward_s)
    return [
        Figure(
            f"whole report on {device}, N = {len(pixels):,}",
            ratio,
            "<= 2.5 (x one-thread decode + bare forward)",
            ratio <= 2.5,
            f"`reportgen audit --device {device}` {wall:.1f} s wall (model on {data['model']['device']}); decode "
            f"{decode_s:.1f} s + bare forward {forward_s:.1f} s; longest phases: {phases}; peak RSS "
            f"{peak / 2**20:.0f} MiB",
        )
    ]


def run(work: Path, quick: bool, device: str) -> tuple[list[Figure], list[str]]:
    """Every GPU figure; the notes say what the machine's runtimes offered."""
    import onnxruntime
    import torch

    from benchmarks.workload import build_images, build_models

    if device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("the gpu suite needs a CUDA device (or --device cpu to check it on the CPU)")
    n_images, n_cam, batch = (48, 8, 16) if quick else (2000, 128, 64)
    sizes, dim, checked = ([3000], 64, 200) if quick else ([200_000, 1_000_000], 1024, 2000)
    models = build_models(work / "models")
    images = subset_folder(build_images(work / "images", n_images), work / f"subset-{n_images}", n_images)
    started = time.perf_counter()

    def step(name: str) -> None:
        print(f"[{time.perf_counter() - started:7.1f} s] {name}", file=sys.stderr, flush=True)

    rows: list[Figure] = []
    step("extraction")
    rows += extraction(models["torchscript"], images, batch, device)
    step("Grad-CAM")
    rows += gradcam(models, images, n_cam, device)
    step("exact kNN")
    rows += exact_knn(sizes, dim, device, checked)
    step("whole report")
    with tempfile.TemporaryDirectory() as folder:
        rows += whole_report(models["torchscript"], images, Path(folder) / "report", batch, device)
    notes = [
        f"- ONNX Runtime providers here: {', '.join(onnxruntime.get_available_providers())}"
        + (
            "; no CUDA provider, so ONNX models run on the CPU on this machine and are not measured here"
            if "CUDAExecutionProvider" not in onnxruntime.get_available_providers()
            else ""
        ),
        "- CPU figures for the same workloads: `RESULTS.md` (2-core machine)",
    ]
    return rows, notes
