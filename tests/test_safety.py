"""The promises that crafted inputs tried to break (issue 29), one test or more each:
nothing is unpickled without --trust-pickle, nothing reportgen did not write is replaced
or deleted, nothing outside what the user named is read, Ctrl-C always stops a run and
its last message is true, untrusted sizes cost what they should, and odd values take the
documented path instead of a traceback."""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
from conftest import NO_RERUNS, SAMPLE, assert_no_traceback, default_interrupts, load_json, make_image, run_cli
from onnx_models import endless_loop_cnn, tiny_cnn

from reportgen import cli, outputs
from reportgen.data import discover
from reportgen.thumbs import thumbnail_uri

FAST = ["-q", "--no-tsne", *NO_RERUNS]


@pytest.fixture(scope="module")
def small(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three classes of four noisy 32 px images each."""
    root = tmp_path_factory.mktemp("small") / "images"
    rng = np.random.default_rng(3)
    for c in ("a", "b", "c"):
        for i in range(4):
            pixels = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
            (root / c).mkdir(parents=True, exist_ok=True)
            from PIL import Image

            Image.fromarray(pixels).save(root / c / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def model3(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tiny_cnn(tmp_path_factory.mktemp("model3") / "m.onnx", classes=3)


# ------------------------------------------------------------------ 1. pickles in a .pt2


def _crafted_pt2(src: Path, dst: Path, marker: Path, *, how: str = "weight") -> Path:
    """``src`` with one entry that runs code when unpickled: a weight marked ``use_pickle``
    (``how="weight"``), or an opaque constant that torch reads with ``pickle.loads``."""
    import torch

    class Payload:
        def __reduce__(self):  # the tensor comes back, so a careless loader carries on
            return (eval, (f"open({str(marker)!r}, 'w').close() or __import__('torch').zeros(1)",))

    with zipfile.ZipFile(src) as zin:
        items = [(info, zin.read(info.filename)) for info in zin.infolist()]
    out = []
    for info, data in items:
        if how == "weight" and info.filename.endswith("model_weights_config.json"):
            config = json.loads(data)
            first = next(iter(config["config"]))
            config["config"][first]["use_pickle"] = True
            target = config["config"][first]["path_name"]
            data = json.dumps(config).encode()
        if how == "opaque" and info.filename.endswith("model_constants_config.json"):
            config = json.loads(data)
            config["config"]["evil"] = {
                "path_name": "opaque_obj_0",
                "is_param": False,
                "use_pickle": True,
                "tensor_meta": None,
            }
            data = json.dumps(config).encode()
        out.append((info, data))
    buf = io.BytesIO()
    if how == "weight":
        torch.save(Payload(), buf)
    else:
        import pickle

        buf.write(pickle.dumps(Payload()))
    with zipfile.ZipFile(dst, "w") as zout:
        for info, data in out:
            if how == "weight" and info.filename.endswith("/weights/" + target):
                data = buf.getvalue()
            zout.writestr(info, data)
        if how == "opaque":
            prefix = next(i.filename for i, _ in out if i.filename.endswith("model_constants_config.json"))
            zout.writestr(prefix.rsplit("/", 1)[0] + "/opaque_obj_0", buf.getvalue())
    return dst


@pytest.mark.parametrize("how", ["weight", "opaque"])
def test_a_pt2_archive_runs_no_pickle_without_trust(tmp_path: Path, small: Path, how: str) -> None:
    marker = tmp_path / "pwned"
    evil = _crafted_pt2(SAMPLE / "model.pt2", tmp_path / "evil.pt2", marker, how=how)
    renamed = tmp_path / "evil.pt"
    shutil.copy(evil, renamed)
    image = next(small.rglob("*.png"))
    runs = [
        ("audit", evil, small, "-o", tmp_path / "out" / "r.html", *FAST),
        ("layers", evil),
        ("cam", evil, image, "-o", tmp_path / "c.png"),
        ("audit", renamed, small, "-o", tmp_path / "out2" / "r.html", *FAST),
    ]
    for args in runs:
        result = run_cli(*args)
        assert_no_traceback(result)
        assert result.code == 2 and "--trust-pickle" in result.err, (args[0], result.err)
        assert result.err.count("\n") == 1
        assert not marker.exists(), f"{args[0]} ran the archive's pickle"
    assert not (tmp_path / "out" / "r.html").exists()


def test_the_honest_pt2_still_loads(tmp_path: Path) -> None:
    result = run_cli("layers", SAMPLE / "model.pt2")
    assert result.code == 0, result.err
    assert "torch.export" in result.out


def test_compare_old_model_runs_no_pickle(tmp_path: Path, sample_audits: dict[str, Path]) -> None:
    """The old audit claims the crafted archive (its SHA-256), and flips exist: compare
    goes as far as loading it for the maps, and must refuse there."""
    marker = tmp_path / "pwned"
    evil = _crafted_pt2(SAMPLE / "model.pt2", tmp_path / "evil.pt2", marker)
    data = load_json(sample_audits["onnx"])
    data["model"]["sha256"] = hashlib.sha256(evil.read_bytes()).hexdigest()
    for p in data["predictions"][:5]:
        p["pred"] = next(c for c in data["classes"] if c != p["pred"])
    old = tmp_path / "old" / "report.json"
    old.parent.mkdir()
    old.write_text(json.dumps(data))
    result = run_cli(
        "compare", old, sample_audits["onnx"], "-o", tmp_path / "d.html", "--old-model", evil,
        "--new-model", SAMPLE / "model.onnx", "--images", SAMPLE / "images",
    )  # fmt: skip
    assert_no_traceback(result)
    assert result.code == 0, result.err
    assert not marker.exists()
    assert "--trust-pickle" in (tmp_path / "d.html").read_text()


# ------------------------------------------------------------------ 2. outputs: replace only what reportgen wrote


def test_features_never_deletes_a_folder_that_is_no_cache(tmp_path: Path, small: Path, model3: Path) -> None:
    project = tmp_path / "project"
    shutil.copytree(small, project / "images")
    (project / "notes.txt").write_text("mine")
    before = sorted(p.relative_to(project) for p in project.rglob("*"))
    holding = run_cli(
        "audit", model3, project / "images", "--features", project, "-o", tmp_path / "o" / "r.html", *FAST
    )
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("mine")
    beside = run_cli("audit", model3, project / "images", "--features", other, "-o", tmp_path / "o" / "r.html", *FAST)
    for result in (holding, beside):
        assert_no_traceback(result)
        assert result.code == 2 and result.err.count("\n") == 1, result.err
    assert "--features" in holding.err and "--features" in beside.err and "not written by reportgen" in beside.err
    assert sorted(p.relative_to(project) for p in project.rglob("*")) == before
    assert (project / "notes.txt").read_text() == "mine" and (other / "keep.txt").read_text() == "mine"
    assert not (tmp_path / "o").exists()  # refused before any work


def test_a_cache_reportgen_wrote_is_replaced(tmp_path: Path, small: Path, model3: Path) -> None:
    out = tmp_path / "o" / "r.html"
    assert run_cli("audit", model3, small, "-o", out, *FAST).code == 0
    again = run_cli("audit", model3, small, "-o", out, *FAST, "--pool-values", "0")  # another key: replaced
    assert again.code == 0, again.err
    assert json.loads((out.with_name("r.features") / "meta.json").read_text())["key"]["options"]["pool_values"] == 0


def test_files_that_are_not_reportgen_outputs_are_left_alone(tmp_path: Path, small: Path, model3: Path) -> None:
    out = tmp_path / "o" / "r.html"
    out.parent.mkdir()
    cases = {
        out.with_name("r.predictions.csv.gz"): gzip.compress(b"my,own,data\n"),
        out.with_name("r.json"): b'{"mine": true}',
        out: b"<html>my page</html>",
    }
    for path, data in cases.items():
        path.write_bytes(data)
        result = run_cli("audit", model3, small, "-o", out, *FAST)
        assert_no_traceback(result)
        assert result.code == 2 and "not written by reportgen" in result.err, result.err
        assert path.read_bytes() == data
        path.unlink()
    assert run_cli("audit", model3, small, "-o", out, *FAST).code == 0
    assert run_cli("audit", model3, small, "-o", out, *FAST).code == 0  # its own pair: replaced


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_an_output_that_is_no_regular_file_is_refused(tmp_path: Path, small: Path, model3: Path, kind: str) -> None:
    target = tmp_path / "out.html"
    if kind == "fifo":
        os.mkfifo(target)
    else:
        target.mkdir()
    result = run_cli("audit", model3, small, "-o", target, *FAST)
    assert_no_traceback(result)
    assert result.code == 2 and ("not a regular file" in result.err or "is a folder" in result.err), result.err
    assert target.is_fifo() if kind == "fifo" else target.is_dir()
    assert not (tmp_path / "out.json").exists()


def test_cam_output_rules(tmp_path: Path) -> None:
    image = next((SAMPLE / "images").rglob("*.jpg"))
    mine = tmp_path / "mine.png"
    mine.write_bytes(b"\x89PNG\r\n\x1a\n not reportgen's")
    refused = run_cli("cam", SAMPLE / "model.onnx", image, "-o", mine)
    assert (
        refused.code == 2 and "not written by reportgen" in refused.err and mine.read_bytes().endswith(b"reportgen's")
    )
    own = tmp_path / "map.png"
    for _ in range(2):  # the second run replaces the first's picture
        done = run_cli("cam", SAMPLE / "model.onnx", image, "-o", own)
        assert done.code == 0, done.err
    assert outputs.is_reportgen_png(own)


# ------------------------------------------------------------------ 3. compare reads only what it may


def _audit_json(path: Path, root: str, files: dict[str, tuple[str, str, str]], **extra: object) -> Path:
    """A minimal audit JSON: ``files`` maps file -> (label, prediction, sha256)."""
    data = {
        "schema_version": 2,
        "tool_version": "0",
        "model": {"path": "m.onnx", "format": "onnx", "sha256": path.stem},
        "dataset": {"root": root, "root_resolved": root, "n_images": len(files)},
        "classes": ["a", "b"],
        "preprocessing": {
            "size": [32, 32],
            "mean": [0.5] * 3,
            "std": [0.5] * 3,
            "channels": 3,
            "resize": "stretch",
            "channels_last": False,
        },
        "predictions": [
            {"file": f, "label": lab, "pred": pred, "score": 0.9, "sha256": digest}
            for f, (lab, pred, digest) in files.items()
        ],
        "skipped": [],
        "options": {},
        **extra,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def _compare_contained(*args: object) -> subprocess.CompletedProcess[str]:
    """compare in a process that cannot take the machine down if it misbehaves."""

    def limits() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))

    return subprocess.run(
        [sys.executable, "-m", "reportgen", "compare", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=120,
        preexec_fn=limits,
    )


def test_compare_reads_pictures_only_as_the_audits_recorded_them(tmp_path: Path) -> None:
    outside = tmp_path / "private"
    secret = make_image(outside / "secret.png", (40, 30), (10, 200, 90))
    os.mkfifo(outside / "pipe.png")
    digest = hashlib.sha256(secret.read_bytes()).hexdigest()
    files_old = {"secret.png": ("a", "a", "0" * 64), "pipe.png": ("a", "a", ""), "zero": ("a", "a", "")}
    files_new = {f: (lab, "b", d) for f, (lab, _, d) in files_old.items()}
    old = _audit_json(tmp_path / "old.json", str(outside), files_old)
    new = _audit_json(tmp_path / "new.json", str(outside), files_new)
    out = tmp_path / "d" / "diff.html"
    result = _compare_contained(old, new, "-o", out, "-q")
    assert result.returncode == 0, result.stderr
    html = out.read_text()
    assert thumbnail_uri(secret) not in html  # hash recorded does not match: never embedded
    assert "differ from what the audits recorded" in html
    # The same folder with the true hash recorded: the audited picture is shown.
    files_old["secret.png"] = ("a", "a", digest)
    files_new["secret.png"] = ("a", "b", digest)
    _audit_json(old, str(outside), files_old)
    _audit_json(new, str(outside), files_new)
    assert _compare_contained(old, new, "-o", out, "-q").returncode == 0
    assert thumbnail_uri(secret) in out.read_text()
    # /dev/zero, named through a folder: never read.
    dev = {"zero": ("a", "a", ""), "null": ("a", "a", "")}
    _audit_json(old, "/dev", dev)
    _audit_json(new, "/dev", {f: (lab, "b", d) for f, (lab, _, d) in dev.items()})
    assert _compare_contained(old, new, "-o", out, "-q").returncode == 0


def test_compare_uses_only_the_audits_own_caches(tmp_path: Path, sample_audits: dict[str, Path]) -> None:
    real = load_json(sample_audits["onnx"])
    foreign_cache = sample_audits["onnx"].with_name("report.features")
    crafted = dict(real, options={**real["options"], "features": str(foreign_cache)})
    crafted["model"] = dict(real["model"], sha256="f" * 64)
    old = tmp_path / "old.json"
    old.write_text(json.dumps(crafted))
    out = tmp_path / "d" / "diff.html"
    result = run_cli("compare", old, sample_audits["onnx"], "-o", out, "-q", "--no-cam")
    assert result.code == 0, result.err
    diff = json.loads(out.with_suffix(".json").read_text())
    assert diff["old"]["features_cache"] is None and diff["new"]["features_cache"] == str(foreign_cache)
    assert diff["layers_similarity"] == [] and "no features cache" in diff["similarity_note"]


# ------------------------------------------------------------------ 4. untrusted text in pictures


def test_mathtext_in_class_names_is_drawn_literally(tmp_path: Path) -> None:
    root = tmp_path / "images"
    rng = np.random.default_rng(0)
    from PIL import Image

    for name in ("$\\foo$", "$x^2$", "plain"):
        for i in range(4):
            (root / name).mkdir(parents=True, exist_ok=True)
            Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(root / name / f"{i}.png")
    model_a = tiny_cnn(tmp_path / "a.onnx", classes=3, seed=1)
    model_b = tiny_cnn(tmp_path / "b.onnx", classes=3, seed=2)
    outs = []
    for model in (model_a, model_b):
        out = tmp_path / model.stem / "r.html"
        result = run_cli("audit", model, root, "-o", out, "-q", "--gallery-size", "1", "--channels", "0")
        assert_no_traceback(result)
        assert result.code == 0, result.err
        assert load_json(out)["classes"] == ["$\\foo$", "$x^2$", "plain"]
        outs.append(out)
    diff = run_cli("compare", *outs, "-o", tmp_path / "d.html", "-q", "--no-cam")
    assert diff.code == 0, diff.err


# ------------------------------------------------------------------ 5. the pair is replaced together, and the message is true


@pytest.fixture()
def audited_pair(tmp_path: Path, small: Path, model3: Path) -> tuple[list[str], Path]:
    out = tmp_path / "o" / "r.html"
    args = ["audit", str(model3), str(small), "-o", str(out), *FAST]
    assert cli.main(args) == 0
    return args, out


def test_a_full_disk_leaves_the_previous_pair(
    audited_pair: tuple[list[str], Path], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    args, out = audited_pair
    before = out.read_bytes(), out.with_suffix(".json").read_bytes()
    real = outputs.temporary_beside

    def full(path: Path, content: object) -> str:
        if Path(path).suffix != ".html":
            return real(path, content)  # type: ignore[arg-type]

        def write(fh: object) -> None:
            fh.write(b"<!DOCTYPE html>")  # type: ignore[attr-defined]
            raise OSError(errno.ENOSPC, "No space left on device")

        return real(path, write)  # the disk fills while the HTML is written, after the JSON's temporary

    monkeypatch.setattr(outputs, "temporary_beside", full)
    capsys.readouterr()
    assert cli.main([*args, "--seed", "5"]) == 2
    err = capsys.readouterr().err
    assert "No space left on device" in err and err.count("\n") == 1
    assert (out.read_bytes(), out.with_suffix(".json").read_bytes()) == before
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")], "a temporary was left behind"


def test_ctrl_c_at_the_renames_finishes_the_pair_and_says_so(
    audited_pair: tuple[list[str], Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    python_interrupts: None,
) -> None:
    args, out = audited_pair
    before = out.read_bytes(), out.with_suffix(".json").read_bytes()
    real = os.replace

    def interrupted(src: object, dst: object) -> None:
        real(src, dst)
        if str(dst).endswith(".json"):
            signal.raise_signal(signal.SIGINT)  # between the JSON's rename and the HTML's

    monkeypatch.setattr(outputs.os, "replace", interrupted)
    capsys.readouterr()
    assert cli.main([*args, "--seed", "5"]) == 130
    err = capsys.readouterr().err
    assert f"interrupted after writing {out.with_suffix('.json')}, {out}" in err and "Traceback" not in err
    after = out.read_bytes(), out.with_suffix(".json").read_bytes()
    assert after[0] != before[0] and after[1] != before[1]  # both replaced, never one
    assert '"seed": 5' in after[1].decode()


def test_ctrl_c_after_wrote_says_the_report_was_written(
    audited_pair: tuple[list[str], Path],
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    python_interrupts: None,
) -> None:
    from reportgen import progress

    args, _ = audited_pair
    real = progress.note

    def note(message: str, enabled: bool = True, **kw: object) -> None:
        real(message, enabled)
        if message.startswith("wrote"):
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(progress, "note", note)
    capsys.readouterr()
    assert cli.main([a for a in args if a != "-q"]) == 130
    err = capsys.readouterr().err
    assert "interrupted after writing" in err and "no report was written" not in err and "Traceback" not in err


# ------------------------------------------------------------------ 7. Ctrl-C stops a model that never ends


def test_ctrl_c_stops_an_onnx_model_that_never_ends(tmp_path: Path) -> None:
    model = endless_loop_cnn(tmp_path / "loop.onnx")
    # Interrupt once the run has been inside ONNX Runtime for two seconds: deterministic,
    # whatever the machine's speed.
    (tmp_path / "loop_probe.py").write_text(
        "import os, signal, threading, time\n"
        "import onnxruntime\n"
        "from reportgen import cli\n"
        "entered = threading.Event()\n"
        "run = onnxruntime.InferenceSession.run\n"
        "def recording(self, *args, **kwargs):\n"
        "    entered.set()\n"
        "    return run(self, *args, **kwargs)\n"
        "onnxruntime.InferenceSession.run = recording\n"
        "def watch():\n"
        "    entered.wait()\n"
        "    time.sleep(2)\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"
        "threading.Thread(target=watch, daemon=True).start()\n"
        f"cli.entry(['layers', {str(model)!r}])\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "loop_probe"],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=120,
        preexec_fn=default_interrupts,
    )
    assert proc.returncode == 130, proc.stderr
    assert proc.stderr.strip() == "reportgen: interrupted; no report was written or replaced"  # no runtime log lines


# ------------------------------------------------------------------ 8. huge and odd image files


def test_huge_files_are_skipped_unread(tmp_path: Path, small: Path, model3: Path) -> None:
    root = tmp_path / "images"
    shutil.copytree(small, root)
    with open(root / "a" / "huge.png", "wb") as fh:  # sparse: no disk used
        fh.truncate(8 << 30)
    os.mkfifo(root / "b" / "pipe.png")
    from PIL import Image

    noise = np.random.default_rng(0).integers(0, 255, (800, 800, 3), dtype=np.uint8)
    Image.fromarray(noise).save(root / "c" / "big.png")  # about 1.9 MB
    out = tmp_path / "o" / "r.html"
    result = run_cli("audit", model3, root, "-o", out, *FAST, "--max-image-mb", "1")
    assert result.code == 0, result.err
    skipped = {s["file"]: s["reason"] for s in load_json(out)["skipped"]}
    assert "file too large" in skipped["a/huge.png"] and "--max-image-mb" in skipped["a/huge.png"]
    assert "file too large" in skipped["c/big.png"]
    assert skipped["b/pipe.png"] == "not a regular file"
    assert load_json(out)["dataset"]["n_images"] == 12


# ------------------------------------------------------------------ 9. no network


@pytest.mark.skipif(
    shutil.which("strace") is None and not os.environ.get("REPORTGEN_REQUIRE_STRACE"),
    reason="needs strace (CI installs it)",
)
def test_an_onnx_audit_opens_no_network_socket(tmp_path: Path, small: Path, model3: Path) -> None:
    log = tmp_path / "strace.log"
    proc = subprocess.run(
        ["strace", "-f", "-e", "trace=socket,connect,sendto,sendmsg", "-o", str(log), sys.executable, "-m", "reportgen",
         "audit", str(model3), str(small), "-o", str(tmp_path / "o" / "r.html"), *FAST, "--no-cache"],
        capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    if proc.returncode != 0 and "ptrace" in proc.stderr and not os.environ.get("REPORTGEN_REQUIRE_STRACE"):
        pytest.skip(f"strace cannot trace here: {proc.stderr.strip()}")
    assert proc.returncode == 0, proc.stderr
    calls = [line for line in log.read_text().splitlines() if "AF_INET" in line or "sin_port" in line]
    assert calls == [], calls[:5]


# ------------------------------------------------------------------ 10. a link to a parent folder


def test_a_link_to_an_ancestor_is_skipped(tmp_path: Path, small: Path) -> None:
    root = tmp_path / "images"
    shutil.copytree(small, root)
    (root / "a" / "up").symlink_to("..")
    (root / "b" / "top").symlink_to(root)
    for follow in (False, True):
        dataset = discover(root, follow_links=follow)
        assert len(dataset.records) == 12
        reasons = {s.file: s.reason for s in dataset.skipped}
        assert set(reasons) == {"a/up", "b/top"}
        assert all("contains it" in r for r in reasons.values())


# ------------------------------------------------------------------ 11. outputs apart from every input


def test_outputs_inside_what_a_run_reads_are_refused(tmp_path: Path, small: Path, model3: Path) -> None:
    a = tmp_path / "a" / "r.html"
    assert run_cli("audit", model3, small, "-o", a, *FAST).code == 0
    ref = tmp_path / "ref"
    shutil.copytree(small, ref)
    cases = [
        ("audit", model3, small, "-o", ref / "r.html", "--reference", ref, *FAST),
        ("audit", model3, small, "-o", tmp_path / "x" / "r.html", "--features", model3, *FAST),
        ("compare", a, a, "-o", small / "d.html", "--images", small, "-q"),
        ("compare", a, a, "-o", a, "-q"),
    ]
    before = a.with_suffix(".json").read_bytes()
    for args in cases:
        result = run_cli(*args)
        assert_no_traceback(result)
        assert result.code == 2 and result.err.count("\n") == 1, (args, result.err)
    assert a.with_suffix(".json").read_bytes() == before
    assert sorted(p.name for p in ref.rglob("*") if p.is_file()) == sorted(
        p.name for p in small.rglob("*") if p.is_file()
    )
    assert not (small / "d.html").exists() and model3.is_file()


# ------------------------------------------------------------------ 12. untrusted sizes


def test_a_predictions_csv_bomb_is_refused_early(tmp_path: Path) -> None:
    files = {f"x/{i}.png": ("a", "a", "") for i in range(3)}
    old = _audit_json(tmp_path / "old.json", str(tmp_path), files)
    new = _audit_json(tmp_path / "new.json", str(tmp_path), files, predictions=None,
                      predictions_file={"name": "new.predictions.csv.gz"})  # fmt: skip
    with gzip.open(tmp_path / "new.predictions.csv.gz", "wb") as fh:
        fh.write(b"file,label,pred,score,sha256\n" + b"x/0.png,a,a,0.5,\n" * 200_000)
    result = run_cli("compare", old, new, "-o", tmp_path / "d" / "diff.html", "-q", "--max-images", "1000")
    assert_no_traceback(result)
    assert result.code == 2 and result.err.count("\n") == 1, result.err
    assert "holds more than 1,000 predictions (--max-images raises the cap)" in result.err


def test_a_model_asking_for_huge_inputs_needs_size(tmp_path: Path) -> None:
    hint = json.dumps({"input_size": [8192, 8192]})
    model = tiny_cnn(tmp_path / "m.onnx", size=None, metadata={"reportgen": hint})
    result = run_cli("layers", model)
    assert_no_traceback(result)
    assert result.code == 2 and "--size 8192x8192" in result.err and result.err.count("\n") == 1


# ------------------------------------------------------------------ 13. malformed inputs, terminal text, logs


def test_malformed_compare_jsons_are_user_errors(tmp_path: Path) -> None:
    good = _audit_json(tmp_path / "good.json", str(tmp_path), {"x.png": ("a", "a", "")})
    deep = tmp_path / "deep.json"
    deep.write_text("[" * 100_000 + "]" * 100_000)
    typed = json.loads(good.read_text())
    typed["predictions"][0]["score"] = "high"
    (tmp_path / "typed.json").write_text(json.dumps(typed))
    unknown = json.loads(good.read_text())
    unknown["predictions"][0]["pred"] = "zebra"
    (tmp_path / "unknown.json").write_text(json.dumps(unknown))
    future = json.loads(good.read_text())
    future.update(schema_version=99, tool_version="\x1b[31m\x1b]0;owned\x07 9.9")
    (tmp_path / "future.json").write_text(json.dumps(future))
    for name in ("deep", "typed", "unknown", "future"):
        result = run_cli("compare", tmp_path / f"{name}.json", good, "-o", tmp_path / "d" / "diff.html", "-q")
        assert_no_traceback(result)
        assert result.code == 2 and result.err.count("\n") == 1, (name, result.err)
        assert "\x1b" not in result.err and "\x07" not in result.err


def test_duplicate_class_names_in_metadata_are_not_used(tmp_path: Path, small: Path) -> None:
    model = tiny_cnn(tmp_path / "m.onnx", classes=3, metadata={"reportgen": json.dumps({"classes": ["a", "a", "b"]})})
    out = tmp_path / "o" / "r.html"
    result = run_cli("audit", model, small, "-o", out, *FAST)
    assert result.code == 0, result.err
    data = load_json(out)
    assert data["classes"] == ["a", "b", "c"] and data["class_source"] == "folder names"
    assert any("more than once" in w for w in data["warnings"])


# ------------------------------------------------------------------ 14. values no distance can use


def test_overflowing_activations_take_the_constant_layers_path(tmp_path: Path, small: Path) -> None:
    import onnx
    from onnx import numpy_helper

    model = tiny_cnn(tmp_path / "m.onnx", classes=3)
    proto = onnx.load(str(model))
    for init in proto.graph.initializer:
        if init.name in ("w1", "w2"):
            init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init) * np.float32(3e9), init.name))
    onnx.save(proto, str(model))
    out = tmp_path / "o" / "r.html"
    result = run_cli("audit", model, small, "-o", out, "-q", "--gallery-size", "1", "--channels", "2")
    assert_no_traceback(result)
    assert result.code == 0, result.err
    notes = {layer["name"]: layer["note"] or "" for layer in load_json(out)["layers"]}
    assert any("too large for distances" in n or "NaN or infinite" in n for n in notes.values()), notes
    assert "warning" not in result.err


def test_the_onnx_light_inception_gets_a_report(tmp_path: Path) -> None:
    onnx = pytest.importorskip("onnx")
    model = Path(onnx.__file__).parent / "backend/test/data/light/light_inception_v1.onnx"
    if not model.is_file():
        pytest.skip("the onnx package ships no light_inception_v1.onnx")
    root = tmp_path / "images"
    for i, colour in enumerate([(200, 10, 10), (10, 200, 10), (10, 10, 200), (90, 90, 90)]):
        make_image(root / f"im{i}.png", (48, 40), colour)
    out = tmp_path / "o" / "r.html"
    result = run_cli("audit", model, root, "-o", out, *FAST)
    assert_no_traceback(result)
    assert result.code == 0, result.err
    assert any("too large for distances" in (layer["note"] or "") for layer in load_json(out)["layers"])


# ------------------------------------------------------------------ 15. one image, every command, every format


@pytest.mark.parametrize("model", ["model.onnx", "model.ts", "model.pt2"])
def test_every_command_works_on_one_image(tmp_path: Path, model: str) -> None:
    image = next((SAMPLE / "images" / "triangle").glob("*.jpg"))
    root = tmp_path / "images" / "triangle"
    root.mkdir(parents=True)
    shutil.copy(image, root)
    audit = run_cli("audit", SAMPLE / model, root.parent, "-o", tmp_path / "o" / "r.html", "-q")
    assert audit.code == 0, audit.err
    assert load_json(tmp_path / "o" / "r.html")["dataset"]["n_images"] == 1
    cam = run_cli("cam", SAMPLE / model, image, "-o", tmp_path / "c.npy")
    assert cam.code == 0, cam.err
    assert np.load(tmp_path / "c.npy").shape == (64, 64)


def test_cam_on_one_image_of_a_traced_swin(tmp_path: Path) -> None:
    """torch's conversion of a traced Swin keeps a guard that holds for its batch of 2
    only; one image runs beside a copy of itself, and gets the map it gets in a batch."""
    from architectures import FAMILIES, build, export

    from reportgen.analyses.cam import compute_cam
    from reportgen.data import Preprocess, load_one
    from reportgen.models import last_spatial_layer, load_model

    swin = next(f for f in FAMILIES if f.name == "swin")
    model = export(build(swin), "torchscript", tmp_path)
    images = sorted((SAMPLE / "images" / "star").glob("*.jpg"))[:2]
    result = run_cli("cam", model, images[0], "--size", "64", "-o", tmp_path / "one.npy")
    assert result.code == 0, result.err
    adapter = load_model(model, device="cpu")
    adapter.prepare((64, 64))
    split = adapter.split(last_spatial_layer(adapter.layers()))
    x = np.stack([load_one(image, Preprocess((64, 64)))[0] for image in images])
    batch = compute_cam("gradcam", split, x, None, (64, 64))
    np.testing.assert_allclose(np.load(tmp_path / "one.npy"), batch.maps[0], atol=1e-5)


# ------------------------------------------------------------------ 16. tried as a new user would


def test_reference_that_is_the_audited_folder(tmp_path: Path, small: Path, model3: Path) -> None:
    plain = tmp_path / "p" / "r.html"
    same = tmp_path / "s" / "r.html"
    assert run_cli("audit", model3, small, "-o", plain, *FAST).code == 0
    result = run_cli("audit", model3, small, "-o", same, *FAST, "--reference", small)
    assert result.code == 0, result.err
    a, b = load_json(plain), load_json(same)
    assert [x["knn_accuracy"] for x in a["layers"]] == [x["knn_accuracy"] for x in b["layers"]]
    assert all(d["a"] != d["b"] for d in b["near_duplicates"])
    assert not any(d["b_in_reference"] for d in b["near_duplicates"])
    assert any("holds 12 of the audited images themselves" in w for w in b["warnings"])


def test_compare_says_on_the_terminal_that_a_model_file_is_wrong(tmp_path: Path, small: Path, model3: Path) -> None:
    a = tmp_path / "a" / "r.html"
    assert run_cli("audit", model3, small, "-o", a, *FAST).code == 0
    other = tiny_cnn(tmp_path / "other.onnx", classes=3, seed=9)
    result = run_cli("compare", a, a, "-o", tmp_path / "d.html", "-q", "--old-model", other, "--new-model", model3)
    assert result.code == 0, result.err
    assert "--old-model other.onnx is not the model the old audit ran" in result.err
