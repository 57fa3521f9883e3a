"""What changes with large sets: the features cache on disk (memory-mapped, float16 when
large), the predictions moved out of the JSON, and the capped HTML tables."""

from __future__ import annotations

import csv
import gzip
import json
import re
import shutil
from html import unescape
from pathlib import Path

import numpy as np
import pytest
from conftest import NO_RERUNS, SAMPLE, load_json, read_cache, run_cli

from reportgen import cli, data, extract
from reportgen.compare import load_audit
from reportgen.extract import FeatureStore, feature_dtype, load_cache
from reportgen.sections import predictions

FAST = ["-q", "--no-tsne", "--device", "cpu", *NO_RERUNS]


def test_auto_precision_switches_to_float16_past_the_size() -> None:
    assert feature_dtype("auto", 1000, 5000) == np.float32
    assert feature_dtype("auto", 200_000, 5000) == np.float16  # 4 GB in float32
    assert feature_dtype("float32", 10**7, 5000) == np.float32
    assert feature_dtype("float16", 10, 10) == np.float16


def test_a_float16_layer_that_overflows_moves_to_float32(tmp_path: Path) -> None:
    store = FeatureStore(tmp_path, 4, {"a": 3, "b": 2}, np.dtype(np.float16))
    store.write("a", 0, np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], np.float32))
    store.write("b", 0, np.ones((2, 2), np.float32))
    store.write("a", 2, np.array([[1e6, 0.5, np.inf], [7.0, 8.0, 9.0]], np.float32))  # beyond 65,504
    store.write("b", 2, np.full((2, 2), 0.1, np.float32))
    arrays = store.finish(4)
    assert arrays["a"].dtype == np.float32 and arrays["b"].dtype == np.float16
    assert np.array_equal(arrays["a"], [[1, 2, 3], [4, 5, 6], [1e6, 0.5, np.inf], [7, 8, 9]])
    assert np.array_equal(arrays["b"][2:], np.float16(0.1) * np.ones((2, 2)))
    assert isinstance(arrays["a"], np.memmap)  # read back from disk, not held in memory


def test_float16_features_keep_the_results(sample_audits: dict[str, Path], tmp_path: Path) -> None:
    """--feature-precision float16 stores every layer value rounded to float16 (nothing
    else), and the layers' kNN accuracies stay within one image of the float32 run's."""
    out = tmp_path / "half.html"
    done = run_cli(
        "audit", SAMPLE / "model.onnx", SAMPLE / "images", "-o", out, *FAST, "--feature-precision", "float16"
    )
    assert done.code == 0, done.err
    half = read_cache(out.with_name("half.features"))
    full = read_cache(sample_audits["onnx"].with_name("report.features"))
    assert half.files == full.files
    for name, values in half.arrays.items():
        if name == "logits":
            assert values.dtype == np.float32
            continue
        assert values.dtype == np.float16, name
        assert np.array_equal(values, np.asarray(full.arrays[name]).astype(np.float16)), name
    n = len(half.files)
    a = {layer["name"]: layer["knn_accuracy"] for layer in load_json(out)["layers"]}
    b = {layer["name"]: layer["knn_accuracy"] for layer in load_json(sample_audits["onnx"])["layers"]}
    assert a.keys() == b.keys()
    for name in a:
        assert abs(a[name] - b[name]) <= 1.0 / n + 1e-9, name


def test_decoding_worker_processes_store_the_same_features(
    sample_audits: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI decodes large sets in worker processes: what they decode (pixels, hashes,
    order, skipped files) must be what the threads decoded for the sample's audit."""
    used: list[bool] = []
    real = data.decode_pool

    def watched(workers: int, processes: bool) -> object:
        used.append(processes)
        return real(workers, processes)

    monkeypatch.setattr(extract, "PROCESS_DECODE_MIN", 0)
    monkeypatch.setattr(data, "decode_pool", watched)
    out, cache = tmp_path / "report.html", tmp_path / "features"
    args = ["audit", str(SAMPLE / "model.onnx"), str(SAMPLE / "images"), "-o", str(out), "--features", str(cache)]
    assert cli.main([*args, *FAST]) == 0
    assert used == [True]
    mine, threads = read_cache(cache), read_cache(sample_audits["onnx"].with_name("report.features"))
    assert mine.files == threads.files and mine.sha256 == threads.sha256 and mine.skipped == threads.skipped
    np.testing.assert_array_equal(mine.outputs, threads.outputs)
    assert list(mine.arrays) == list(threads.arrays)
    for name, values in threads.arrays.items():
        np.testing.assert_array_equal(mine.arrays[name], values, err_msg=name)


def test_a_model_on_an_accelerator_is_fed_by_processes_on_every_core(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With the model on a GPU, decoding is all the CPU does: a few hundred images are
    enough for worker processes, one per core, and they decode what threads decode.
    (The adapter runs on the CPU here; only its device says "cuda".)"""
    from reportgen.models import load_model, resolve_layers

    pools: list[tuple[int, bool]] = []
    real = data.decode_pool

    def watched(workers: int, processes: bool) -> object:
        pools.append((workers, processes))
        return real(workers, processes)

    monkeypatch.setattr(data, "decode_pool", watched)
    monkeypatch.setattr(extract, "GPU_PROCESS_DECODE_MIN", 10)
    monkeypatch.setattr("os.cpu_count", lambda: 3)
    dataset = data.discover(SAMPLE / "images")
    adapter = load_model(SAMPLE / "model.onnx", device="cpu")
    pre = data.resolve_preprocess(adapter.info)
    adapter.prepare(pre.size)
    layers = resolve_layers(None, adapter, pre.channels, pre.size)
    runs = {}
    for device in ("cpu", "cuda"):
        adapter.info.device = device
        folder = tmp_path / device
        folder.mkdir()
        runs[device] = extract.extract(
            dataset, adapter, layers, pre, folder, batch_size=16, show_progress=False, decode_processes=True
        )
    adapter.info.device = "cpu"
    assert pools == [(3, False), (3, True)]  # threads below PROCESS_DECODE_MIN on the CPU; 3 processes on a GPU
    a, b = runs["cpu"], runs["cuda"]
    assert a.files == b.files and a.sha256 == b.sha256
    np.testing.assert_array_equal(a.outputs, b.outputs)
    for name, values in a.arrays.items():
        np.testing.assert_array_equal(np.asarray(b.arrays[name]), np.asarray(values), err_msg=name)


def test_a_single_file_cache_from_an_older_version_is_named_and_replaced(tmp_path: Path) -> None:
    old = tmp_path / "old.features"
    np.savez(old.with_suffix(".npz"), meta=np.array(json.dumps({"format": 3, "tool_version": "0.9"})))
    old.with_suffix(".npz").rename(old)
    out = tmp_path / "r.html"
    done = run_cli("audit", SAMPLE / "model.onnx", SAMPLE / "images", "-o", out, *FAST[1:], "--features", old)
    assert done.code == 0, done.err
    assert "a single-file cache (format 3, reportgen 0.9)" in done.err
    assert old.is_dir() and load_cache(old, None) is not None
    assert not any("could not be used" in w for w in load_json(out)["warnings"])  # out of date, not broken


@pytest.fixture()
def large_audit(sample_audits: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The sample audited as if it were large: predictions beyond 50 go to the CSV, and
    the HTML lists 20 of them (from a copy of the sample's features cache)."""
    cache = tmp_path / "report.features"
    shutil.copytree(sample_audits["onnx"].with_name("report.features"), cache)
    monkeypatch.setattr(predictions, "PREDICTIONS_INLINE", 50)
    monkeypatch.setattr(predictions, "HTML_ROWS", 20)
    out = tmp_path / "report.html"
    assert cli.main(["audit", str(SAMPLE / "model.onnx"), str(SAMPLE / "images"), "-o", str(out), *FAST]) == 0
    return out


def test_many_predictions_go_to_a_csv_that_holds_them_all(large_audit: Path, sample_audits: dict[str, Path]) -> None:
    data = load_json(large_audit)
    reference = load_json(sample_audits["onnx"])["predictions"]
    assert data["predictions"] is None
    entry = data["predictions_file"]
    assert entry == {
        "name": "report.predictions.csv.gz",
        "format": "csv.gz",
        "rows": len(reference),
        "columns": ["file", "label", "pred", "score", "sha256"],
    }
    with gzip.open(large_audit.with_name(entry["name"]), "rt", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["file"] for r in rows] == [p["file"] for p in reference]
    for row, p in zip(rows, reference, strict=True):
        assert (row["label"] or None, row["pred"], float(row["score"]), row["sha256"]) == (
            p["label"],
            p["pred"],
            p["score"],
            p["sha256"],
        )
    # compare reads the rows back from the CSV
    assert load_audit(large_audit).data["predictions"] == reference


def test_the_html_lists_the_misclassified_first_when_capped(large_audit: Path) -> None:
    html = large_audit.read_text()
    section = html[html.index('<section id="predictions">') : html.index('<section id="skipped">')]
    assert "Show 20 of 274 predictions" in section
    shown = [unescape(f.replace("<wbr>", "")) for f in re.findall(r'<tr><td class="mono">(.*?)</td>', section)]
    with gzip.open(large_audit.with_name("report.predictions.csv.gz"), "rt", newline="") as fh:
        rows = list(csv.DictReader(fh))
    wrong = sorted(
        (r for r in rows if r["label"] and r["label"] != r["pred"]), key=lambda r: (-float(r["score"]), r["file"])
    )
    rest = sorted(
        (r for r in rows if not r["label"] or r["label"] == r["pred"]), key=lambda r: (float(r["score"]), r["file"])
    )
    assert shown == [r["file"] for r in (wrong + rest)[:20]]
    assert len(wrong) >= 5  # the sample's planted errors: the order is tested, not trivially
