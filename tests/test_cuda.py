"""The CUDA path gives the CPU path's report: run only where torch sees a GPU.

CI has no GPU, so these skip there; they run on a GPU machine (the developers' lent
H100/H200) with ``python -m pytest tests/test_cuda.py``.  Convolutions on the GPU may use
TF32 and other kernels than the CPU, so features agree to a relative tolerance, and the
decisions built on them (predictions, neighbours, Grad-CAM maps) are compared, not bytes.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SAMPLE, read_cache, run_cli

from reportgen.extract import load_cache
from reportgen.models.onnx_adapter import cuda_unavailable

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")

TORCH_FORMATS = ["model.ts", "model.pt2"]


ORT_CUDA = pytest.mark.skipif(
    cuda_unavailable() is not None, reason="ONNX Runtime's CUDA provider is not installed or cannot run"
)


def audit(tmp_path: Path, model: str, device: str) -> tuple[dict, Path]:
    out = tmp_path / device / "report.html"
    result = run_cli("audit", SAMPLE / model, SAMPLE / "images", "-o", out, "-q", "--device", device)
    assert result.code == 0, result.err
    return json.loads(out.with_suffix(".json").read_text()), out.with_suffix(".features")


@pytest.mark.parametrize("model", [*TORCH_FORMATS, pytest.param("model.onnx", marks=ORT_CUDA)])
def test_cuda_report_matches_cpu(tmp_path: Path, model: str) -> None:
    gpu, gpu_cache = audit(tmp_path, model, "cuda")
    cpu, cpu_cache = audit(tmp_path, model, "cpu")
    assert gpu["model"]["device"] == "cuda" and cpu["model"]["device"] == "cpu"
    if model.endswith(".onnx"):
        assert "CUDAExecutionProvider" in gpu["model"]["runtime"], gpu["model"]["runtime"]
        assert not any("CPU" in w and "CUDA" in w for w in gpu["warnings"]), gpu["warnings"]

    # Predictions: the same class for every image except where the CPU's top two scores
    # are within the features' tolerance of each other.
    flips = [
        (a["file"], a["score"])
        for a, b in zip(cpu["predictions"], gpu["predictions"], strict=True)
        if a["pred"] != b["pred"]
    ]
    assert all(score < 0.51 for _, score in flips), flips
    for a, b in zip(cpu["predictions"], gpu["predictions"], strict=True):
        assert abs(a["score"] - b["score"]) < 5e-3
    assert abs(cpu["accuracy"] - gpu["accuracy"]) <= len(flips) / cpu["dataset"]["n_images"] + 1e-9

    # Features: every layer within 1% of the CPU's (relative to the layer's scale).
    cpu_run, gpu_run = load_cache(cpu_cache, None), load_cache(gpu_cache, None)
    for layer in cpu_run.features.layers:
        a = np.asarray(cpu_run.features.arrays[layer.name], np.float64)
        b = np.asarray(gpu_run.features.arrays[layer.name], np.float64)
        scale = float(np.abs(a).max()) or 1.0
        assert float(np.abs(a - b).max()) / scale < 1e-2, layer.name

    # Neighbours: the per-layer kNN accuracy agrees to within a couple of images.
    for la, lb in zip(cpu["layers"], gpu["layers"], strict=True):
        if la["knn_accuracy"] is not None:
            assert abs(la["knn_accuracy"] - lb["knn_accuracy"]) <= 3 / cpu["dataset"]["n_images"] + 1e-9, la["name"]


@pytest.mark.parametrize(
    ("method", "model"),
    [("gradcam", "model.ts"), ("ablationcam", "model.ts"), pytest.param("gradcam", "model.onnx", marks=ORT_CUDA)],
)
def test_cuda_cam_maps_match_cpu(method: str, model: str) -> None:
    from reportgen.analyses.cam import compute_cam
    from reportgen.data import Preprocess, discover, load_one
    from reportgen.models import last_spatial_layer, load_model

    pre = Preprocess((64, 64))
    dataset = discover(SAMPLE / "images")
    x = np.stack([load_one(dataset.root / r.file, pre)[0] for r in dataset.records[:12]])
    targets = np.arange(len(x)) % 6
    maps = {}
    for device in ("cpu", "cuda"):
        adapter = load_model(SAMPLE / model, device=device)
        adapter.prepare(pre.size)
        assert adapter.info.device == device
        split = adapter.split(last_spatial_layer(adapter.layers()))
        maps[device] = np.asarray(compute_cam(method, split, x, targets, pre.size).maps, np.float64)
    a, b = maps["cpu"].reshape(len(x), -1), maps["cuda"].reshape(len(x), -1)
    for i in range(len(x)):
        if np.ptp(a[i]) == 0:
            assert np.ptp(b[i]) < 1e-3
            continue
        assert np.corrcoef(a[i], b[i])[0, 1] > 0.99, i


def test_cuda_decoding_worker_processes_match_threads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """On a GPU the CLI decodes large sets in worker processes two batches ahead of the
    forward pass; the features must be those of decoding on threads, on the same device."""
    from reportgen import cli, data, extract

    used: list[bool] = []
    real = data.decode_pool

    def watched(workers: int, processes: bool) -> object:
        used.append(processes)
        return real(workers, processes)

    runs = {}
    for name, smallest in (("threads", 10**9), ("processes", 0)):
        monkeypatch.setattr(extract, "PROCESS_DECODE_MIN", smallest)
        monkeypatch.setattr(extract, "GPU_PROCESS_DECODE_MIN", smallest)  # the model is on the GPU here
        monkeypatch.setattr(data, "decode_pool", watched)
        out, cache = tmp_path / name / "report.html", tmp_path / name / "features"
        args = ["audit", str(SAMPLE / "model.ts"), str(SAMPLE / "images"), "-o", str(out), "-q"]
        assert cli.main([*args, "--no-tsne", "--device", "cuda", "--batch-size", "8", "--features", str(cache)]) == 0
        runs[name] = read_cache(cache)
    assert used == [False, True]
    a, b = runs["threads"], runs["processes"]
    assert a.files == b.files and a.sha256 == b.sha256 and a.skipped == b.skipped
    np.testing.assert_allclose(b.outputs, a.outputs, rtol=1e-4, atol=1e-5)
    for layer in a.layers:
        x = np.asarray(a.arrays[layer.name], np.float64)
        y = np.asarray(b.arrays[layer.name], np.float64)
        assert float(np.abs(x - y).max()) <= 1e-4 * (float(np.abs(x).max()) or 1.0), layer.name


def test_cuda_program_cache_gives_the_converted_run(tmp_path: Path) -> None:
    """The converted graph read back from the program cache runs on the GPU as the fresh
    conversion does (the cache holds a CPU graph; it is moved to the device after)."""
    env = {"REPORTGEN_PROGRAM_CACHE": str(tmp_path / "programs"), "SOURCE_DATE_EPOCH": "0"}
    reports = []
    for run in ("first", "second"):
        out = tmp_path / run / "report.html"
        args = ["audit", SAMPLE / "model.ts", SAMPLE / "images", "-o", out, "-q", "--device", "cuda", "--no-cache"]
        result = run_cli(*args, "--faithfulness-images", "0", "--robustness-images", "0", env=env)
        assert result.code == 0, result.err
        reports.append(json.loads(out.with_suffix(".json").read_text()))
    assert len(list((tmp_path / "programs").glob("*.pt2"))) == 1
    first, second = reports
    assert [p["pred"] for p in first["predictions"]] == [p["pred"] for p in second["predictions"]]
    for a, b in zip(first["predictions"], second["predictions"], strict=True):
        assert abs(a["score"] - b["score"]) < 1e-4
