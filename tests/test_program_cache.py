"""The converted-program cache: a TorchScript file is converted once, later runs read the
graph back (identical layers and values), and the cache writes, reads and prunes only
what it made."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from conftest import NO_RERUNS, SAMPLE, run_cli

from reportgen.models import load_model, program_cache, torchscript
from reportgen.models.base import ModelAdapter
from reportgen.models.program_cache import TAG, TAG_NAME

SIZE = (32, 32)


def prepared(path: Path) -> ModelAdapter:
    adapter = load_model(path, device="cpu")
    adapter.prepare(SIZE)
    return adapter


def snapshot(adapter: ModelAdapter) -> tuple[list, np.ndarray, dict[str, np.ndarray]]:
    layers = adapter.layers()
    x = np.random.default_rng(0).standard_normal((3, 3, *SIZE)).astype(np.float32)
    names = [layer.name for layer in layers[1:-1]]
    scores, feats = adapter.extract(x, names)
    return [(layer.name, layer.shape, layer.module, layer.layout) for layer in layers], scores, feats


def test_second_run_reads_the_converted_graph(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "programs"
    monkeypatch.setenv(program_cache.ENV, str(folder))
    first = snapshot(prepared(SAMPLE / "model.ts"))
    entries = sorted(p.name for p in folder.iterdir())
    assert (folder / TAG_NAME).read_text() == TAG and len(entries) == 2, entries

    def no_conversion(*args: object, **kwargs: object) -> None:
        raise AssertionError("converted again")

    monkeypatch.setattr(torchscript, "convert", no_conversion)
    second = snapshot(prepared(SAMPLE / "model.ts"))
    assert first[0] == second[0]
    np.testing.assert_array_equal(first[1], second[1])
    for name, values in first[2].items():
        np.testing.assert_array_equal(values, second[2][name])

    # Another input size is another entry: converted (here: refused by the stub).
    adapter = load_model(SAMPLE / "model.ts", device="cpu")
    with pytest.raises(Exception, match="converted again"):
        adapter.prepare((48, 48))


def test_unreadable_or_foreign_entries_are_converted_again(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "programs"
    monkeypatch.setenv(program_cache.ENV, str(folder))
    reference = snapshot(prepared(SAMPLE / "model.ts"))
    (entry,) = [p for p in folder.iterdir() if p.suffix == ".pt2"]
    entry.write_bytes(b"PK\x03\x04 not an archive")
    again = snapshot(prepared(SAMPLE / "model.ts"))
    np.testing.assert_array_equal(reference[1], again[1])
    assert entry.stat().st_size > 1000  # the broken entry was replaced by a good one

    # A folder reportgen did not make (no tag of its own) is neither read nor written.
    foreign = tmp_path / "someone-elses"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    monkeypatch.setenv(program_cache.ENV, str(foreign))
    snapshot(prepared(SAMPLE / "model.ts"))
    assert sorted(p.name for p in foreign.iterdir()) == ["keep.txt"]

    # An empty folder named for it is adopted.
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv(program_cache.ENV, str(empty))
    snapshot(prepared(SAMPLE / "model.ts"))
    assert (empty / TAG_NAME).read_text() == TAG and len(list(empty.glob("*.pt2"))) == 1

    monkeypatch.setenv(program_cache.ENV, "off")
    assert program_cache.cache_folder() is None


def test_prune_keeps_the_newest_and_nothing_else_is_touched(tmp_path: Path) -> None:
    folder = tmp_path / "programs"
    folder.mkdir()
    (folder / TAG_NAME).write_text(TAG)
    (folder / "notes.txt").write_text("not an entry")
    names = [f"{i:064x}.pt2" for i in range(program_cache.KEEP + 3)]
    for age, name in enumerate(names):
        path = folder / name
        path.write_bytes(b"x")
        stamp = 1_000_000 + age
        os.utime(path, (stamp, stamp))
    cache = program_cache.ProgramCache(folder, "0" * 64, {})
    cache._prune()
    left = sorted(p.name for p in folder.iterdir())
    assert left == sorted([*names[3:], TAG_NAME, "notes.txt"])


def test_audit_twice_gives_the_same_report(tmp_path: Path) -> None:
    env = {program_cache.ENV: str(tmp_path / "programs")}
    reports = []
    for run in ("a", "b"):
        out = tmp_path / run / "report.html"
        result = run_cli("audit", SAMPLE / "model.ts", SAMPLE / "images", "-o", out, "-q", "--no-cache", *NO_RERUNS,
                         env={**env, "SOURCE_DATE_EPOCH": "0"})  # fmt: skip
        assert result.code == 0, result.err
        reports.append(json.loads(out.with_suffix(".json").read_text()))
    assert len(list((tmp_path / "programs").glob("*.pt2"))) == 1
    a, b = reports
    for report in reports:
        report["options"].pop("output", None)
        report["options"].pop("cache", None)
    assert a == b
