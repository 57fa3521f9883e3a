"""Extraction on a Ray cluster (``--engine ray``): the local route's cache, value for value,
through killed workers and interrupted runs.  One local Ray instance (2 CPUs) serves the
module; the CLI test starts its own, as a user's run does."""

from __future__ import annotations

import json
import os
import signal
import socket
from pathlib import Path

import numpy as np
import pytest
from conftest import NO_RERUNS, SAMPLE, run_cli

from reportgen import ray_engine
from reportgen.config import AuditConfig
from reportgen.errors import UserError
from reportgen.extract import FeatureStore
from reportgen.image_stats import PROPERTIES
from reportgen.pipeline import audit

ray = pytest.importorskip("ray")

MODEL = SAMPLE / "model.onnx"
IMAGES = SAMPLE / "images"
N_IMAGES = sum(1 for p in IMAGES.rglob("*") if p.is_file())
# Batches of 8 in shards of 16: 18 shards of the sample, 2 workers two shards deep.
RUN = dict(model=MODEL, images=IMAGES, quiet=True, device="cpu", batch_size=8, tsne=False, explorer=False,
           gallery_size=0, faithfulness_images=0, robustness_images=0, channels=0, shortcut_images=0)  # fmt: skip
RAY = dict(engine="ray", shard_images=16, ray_workers=2)


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def local_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sample's features cache, written by the local route."""
    out = tmp_path_factory.mktemp("local") / "report.html"
    audit(AuditConfig(output=out, **RUN))
    return out.with_name("report.features")


def assert_same_cache(ours: Path, local: Path) -> None:
    """Every array file identical in bytes, and meta.json identical but for the seconds."""
    names = sorted(os.listdir(local))
    assert sorted(os.listdir(ours)) == names
    for name in names:
        if name.endswith(".npy"):
            assert (ours / name).read_bytes() == (local / name).read_bytes(), name
    meta = [json.loads((path / "meta.json").read_text()) for path in (ours, local)]
    for m in meta:
        m.pop("seconds")
    assert meta[0] == meta[1]


def test_ray_cache_and_report_are_the_local_routes(tmp_path: Path, local_cache: Path) -> None:
    """Through the CLI, which starts a Ray of its own: the same cache files and the same
    JSON, byte for byte, at the same output path.  The paths are given relative to the
    working folder, which Ray's workers do not share."""
    env = {"SOURCE_DATE_EPOCH": "0", "RAY_ADDRESS": ""}
    out = tmp_path / "run" / "report.html"
    args = ["audit", MODEL.name, IMAGES.name, "-o", out, "-q", "--device", "cpu", "--batch-size", "8", "--no-tsne",
            "--no-explorer", *NO_RERUNS]  # fmt: skip
    cwd = SAMPLE
    local = run_cli(*args, env=env, cwd=cwd)
    assert local.code == 0, local.err
    local_json = out.with_suffix(".json").read_bytes()
    os.rename(tmp_path / "run", tmp_path / "local")
    distributed = run_cli(*args, "--engine", "ray", "--shard-images", "16", "--ray-workers", "2", env=env, cwd=cwd)
    assert distributed.code == 0, distributed.err
    assert "Traceback" not in distributed.err
    assert out.with_suffix(".json").read_bytes() == local_json
    assert_same_cache(out.with_name("report.features"), local_cache)
    assert not (tmp_path / "run" / ".report.features.shards").exists()  # gone once the cache is complete
    # Without SOURCE_DATE_EPOCH the run says how it went.
    timed = run_cli(*args, "--engine", "ray", "--shard-images", "16", "--no-cache", env={"RAY_ADDRESS": ""}, cwd=cwd)
    assert timed.code == 0, timed.err
    engine = json.loads(out.with_suffix(".json").read_text())["engine"]
    assert engine["engine"] == "ray" and engine["shards"] == -(-N_IMAGES // 16) and engine["shards_reused"] == 0
    assert set(engine["seconds"]) >= {"connect", "shards", "assemble"}
    assert "Extraction engine" in out.read_text()
    # --no-cache: neither shards nor a scratch folder left (the cache is the earlier run's)
    assert sorted(os.listdir(tmp_path / "run")) == ["report.features", "report.html", "report.json"]


def test_a_killed_worker_leaves_a_complete_result(
    cluster: None, tmp_path: Path, local_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The worker that sent the first shard is killed (SIGKILL) while it holds the next:
    Ray restarts it, reruns that shard, and the cache is still the local route's."""
    save = ray_engine._save_shard
    killed: list[int] = []

    def save_then_kill(root, span, result, digest, files):
        save(root, span, result, digest, files)
        if not killed:
            killed.append(result["pid"])
            os.kill(result["pid"], signal.SIGKILL)

    monkeypatch.setattr(ray_engine, "_save_shard", save_then_kill)
    out = tmp_path / "report.html"
    result, _ = audit(AuditConfig(output=out, **RUN, **RAY))
    assert killed
    assert result.engine is not None and result.engine["workers_restarted"] >= 1
    assert_same_cache(out.with_name("report.features"), local_cache)


def test_a_rerun_after_an_interrupt_extracts_only_the_missing_shards(
    cluster: None, tmp_path: Path, local_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    save = ray_engine._save_shard
    saved: list[tuple[int, int]] = []

    def save_then_interrupt(root, span, result, digest, files):
        if len(saved) == 5:
            raise KeyboardInterrupt
        save(root, span, result, digest, files)
        saved.append(span)

    monkeypatch.setattr(ray_engine, "_save_shard", save_then_interrupt)
    out = tmp_path / "report.html"
    with pytest.raises(KeyboardInterrupt):
        audit(AuditConfig(output=out, **RUN, **RAY))
    shards = tmp_path / ".report.features.shards"
    assert sorted(os.listdir(shards)) == sorted(["shards.json", *(f"{s}-{e}" for s, e in saved)])
    assert sorted(os.listdir(tmp_path)) == [".report.features.shards"]  # no cache, no scratch folder

    first = list(saved)
    saved.clear()

    def save_counted(root, span, result, digest, files):
        save(root, span, result, digest, files)
        saved.append(span)

    monkeypatch.setattr(ray_engine, "_save_shard", save_counted)
    result, _ = audit(AuditConfig(output=out, **RUN, **RAY))
    total = -(-N_IMAGES // 16)
    assert result.engine is not None and result.engine["shards_reused"] == 5
    assert len(saved) == total - 5 and not set(saved) & set(first)
    assert_same_cache(out.with_name("report.features"), local_cache)
    assert not shards.exists()


def test_shards_of_another_key_are_replaced_and_a_foreign_folder_is_refused(tmp_path: Path) -> None:
    root = tmp_path / ".c.shards"
    ranges = ray_engine.shard_ranges(10, 3, 2)
    assert ranges == [(0, 4), (4, 8), (8, 10)]  # shards rounded up to whole batches
    ray_engine.open_shards_folder(root, "--features")
    files = {"a": "layer_0.npy"}
    ray_engine._save_shard(root, (0, 4), _result(4, {"a": np.ones((4, 2), np.float32)}, [4]), "key-1", files)
    ray_engine._save_shard(root, (4, 8), _result(4, {"a": np.ones((4, 2), np.float32)}, [4], 4), "key-2", files)
    # The right key, but its layer does not hold the shape the run asks for (as if written
    # by another version, or damaged): extracted again rather than read.
    ray_engine._save_shard(root, (8, 10), _result(2, {"a": np.ones((2, 3), np.float32)}, [2], 8), "key-1", files)
    (root / ".8-10.tmp").mkdir()  # a write an interrupt cut short
    assert ray_engine.finished_shards(root, "key-1", ranges, files, {"a": 2}) == {(0, 4)}
    assert sorted(os.listdir(root)) == ["0-4", "shards.json"]

    foreign = tmp_path / ".d.shards"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="not a shard folder reportgen wrote"):
        ray_engine.open_shards_folder(foreign, "--features")
    ray_engine.remove_shards_folder(foreign)
    assert (foreign / "notes.txt").read_text() == "mine"


def test_a_float16_layer_widens_where_the_local_pass_widens_it(tmp_path: Path) -> None:
    """Batches of 2, a shard of 6 rows whose second batch leaves float16's range: the rows
    before it keep their float16 rounding, as in a local pass writing batch by batch."""
    rng = np.random.default_rng(0)
    values = rng.normal(size=(12, 3)).astype(np.float32) * 1000
    values[8, 1] = 1e6  # shard 2, its second batch
    local = tmp_path / "local"
    local.mkdir()
    store = FeatureStore(local, 12, {"a": 3}, np.dtype(np.float16))
    for start in range(0, 12, 2):
        store.write("a", start, values[start : start + 2])
    expected = np.asarray(store.finish(12)["a"])
    assert expected.dtype == np.float32 and expected[8, 1] == 1e6
    assert not np.array_equal(expected[:6], values[:6])  # rounded to float16 before the widening

    from reportgen.data import ImageDataset, ImageRecord
    from reportgen.models import LayerInfo

    root = tmp_path / ".c.shards"
    ray_engine.open_shards_folder(root, "--features")
    for start in (0, 6):
        part = _result(6, {"a": values[start : start + 6]}, [2, 2, 2], first=start)
        ray_engine._save_shard(root, (start, start + 6), part, "k", {"a": "layer_0.npy"})
    records = [ImageRecord(f"{i}.png", -1, 1, 0) for i in range(12)]
    ours = tmp_path / "ours"
    ours.mkdir()
    assembly = ray_engine.Assembly(
        ImageDataset(tmp_path, False, [], records), root, [(0, 6), (6, 12)], [LayerInfo("a", (3,), "x")],
        {"a": "layer_0.npy"}, ours, "float16",
    )  # fmt: skip
    assembly.advance({(6, 12)})  # the later shard first: it waits for the one before it
    assert assembly.next == 0
    assembly.advance({(0, 6), (6, 12)})
    features = assembly.finish()
    assert features.arrays["a"].dtype == np.float32
    np.testing.assert_array_equal(features.arrays["a"], expected)
    assert features.files == [r.file for r in records]


def test_an_address_where_nothing_answers_is_one_line_within_seconds(tmp_path: Path) -> None:
    """Ray itself retries such an address for minutes, printing as it goes."""
    with socket.socket() as s:  # a port nothing listens on: bound, never listening
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        out = tmp_path / "report.html"
        args = ["audit", MODEL, IMAGES, "-o", out, "-q", "--engine", "ray", "--ray-address", f"127.0.0.1:{port}"]
        done = run_cli(*args, timeout=120)
    assert done.code == 2, done.err
    assert done.err.strip().count("\n") == 0 and f"cannot reach the Ray cluster at 127.0.0.1:{port}" in done.err
    assert not list(tmp_path.iterdir())  # nothing written, no shards folder
    assert ray_engine._unreachable("just-a-name") is not None and ray_engine._unreachable("auto") is None


def test_without_ray_installed_the_message_says_how_to_get_it(monkeypatch: pytest.MonkeyPatch) -> None:
    import sys

    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(UserError, match=r"pip install 'reportgen\[ray\]'"):
        ray_engine._import_ray()


def _result(n: int, layers: dict[str, np.ndarray], batches: list[int], first: int = 0) -> dict:
    """A worker's answer for a shard of ``n`` rows starting at record ``first``."""
    return {
        "rows": np.arange(first, first + n, dtype=np.int64),
        "sha256": ["0" * 64] * n,
        "failures": [],
        "batches": np.array(batches, np.int64),
        "outputs": np.zeros((n, 2), np.float32),
        "logits": None,
        "image_stats": np.zeros((n, len(PROPERTIES)), np.float32),
        "layers": layers,
        "pid": 1,
        "node": "here",
        "seconds": 0.0,
    }
