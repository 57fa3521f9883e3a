"""Hostile folders, odd models, untrusted names, atomic writes, reproducible output."""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from conftest import SAMPLE, assert_no_traceback, default_interrupts, load_json, page_text, read_cache, run_cli
from corpus import EVIL_CLASS, build_corpus
from onnx_models import tiny_cnn
from PIL import Image

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory: pytest.TempPathFactory):
    return build_corpus(tmp_path_factory.mktemp("corpus") / "images")


def _snapshot(root: Path) -> dict[str, tuple[int, int]]:
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_symlink() or not path.exists():
            out[str(path)] = (-1, -1)
        elif path.is_file():
            st = path.stat()
            out[str(path)] = (st.st_size, st.st_mtime_ns)
    return out


@pytest.mark.parametrize("model", ["model.onnx", "model.ts"])
def test_corpus(corpus, tmp_path: Path, model: str) -> None:
    before = _snapshot(corpus.root)
    out = tmp_path / "out" / "report.html"
    result = run_cli("audit", SAMPLE / model, corpus.root, "-o", out, "-q", "--no-tsne")
    assert result.code == 0, result.err
    assert_no_traceback(result)
    assert _snapshot(corpus.root) == before  # nothing written inside the image folder
    data = load_json(out)
    # Exactly these files decoded, exactly these skipped; noise never mentioned.
    assert sorted(p["file"] for p in data["predictions"]) == sorted(corpus.decoded)
    assert sorted(s["file"] for s in data["skipped"]) == sorted(corpus.skipped)
    for s in data["skipped"]:
        assert corpus.skipped[s["file"]] in s["reason"], s
    text = page_text(out)
    for noise in corpus.noise:
        assert noise not in json.dumps(data) and Path(noise).name not in text
    assert EVIL_CLASS in data["dataset"]["classes"] and "empty class" in data["dataset"]["classes"]
    assert "<img src=x onerror" not in text and "<script>alert(" not in text
    # Every valid image decoded to the right colours: read them back from the pixel layer.
    cached = read_cache(out.with_name("report.features"))
    files = cached.files
    pixels = np.asarray(cached.arrays["input"]).reshape(len(files), 3, 16, 16)
    rgb = (pixels.transpose(0, 2, 3, 1) * IMAGENET_STD + IMAGENET_MEAN) * 255
    for name, colour in corpus.decoded.items():
        if name in corpus.rotated:
            continue
        centre = rgb[files.index(name), 6:10, 6:10].reshape(-1, 3).mean(axis=0)
        assert np.allclose(centre, colour, atol=8), (name, centre, colour)
    for name, (top, bottom) in corpus.rotated.items():
        img = rgb[files.index(name)]
        assert np.allclose(img[1:5].reshape(-1, 3).mean(0), top, atol=12), name
        assert np.allclose(img[-5:-1].reshape(-1, 3).mean(0), bottom, atol=12), name


# ------------------------------------------------------------------ odd models


@pytest.fixture(scope="module")
def small_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("small") / "images"
    for cls in ("circle", "ring", "star"):
        (root / cls).mkdir(parents=True)
        for path in sorted((SAMPLE / "images" / cls).glob("*.jpg"))[:8]:
            shutil.copy(path, root / cls / path.name)
    return root


ODD_MODELS = {
    "fixed batch 1": {"batch": 1, "classes": 3},
    "opset 9": {"opset": 9, "classes": 3},
    "outputs probabilities": {"softmax": True, "classes": 3},
    "output N,C,1,1": {"output_4d": True, "classes": 3},
    "input name with slashes": {"input_name": "net/input:0/x", "classes": 3},
    "grayscale": {"channels": 1, "classes": 3},
    "non-square input": {"size": (32, 48), "classes": 3},
    "more outputs than classes": {"classes": 10},
    "constant features": {"constant": True, "classes": 3},
    "NaN for bright images": {"nan_above": 0.2, "classes": 3},
    "dynamic size": {"size": None, "classes": 3},
}


@pytest.mark.parametrize("name", list(ODD_MODELS))
def test_odd_models(small_folder: Path, tmp_path: Path, name: str) -> None:
    model = tiny_cnn(tmp_path / "m.onnx", **ODD_MODELS[name])
    out = tmp_path / "out" / "r.html"
    args = ["audit", model, small_folder, "-o", out, "-q", "--gallery-size", "2", "--channels", "2"]
    result = run_cli(*args)
    assert_no_traceback(result)
    if name == "dynamic size":
        assert result.code == 2 and result.err.count("\n") == 1 and "--size" in result.err
        result = run_cli(*args, "--size", "40")
    assert result.code == 0, result.err
    data = load_json(out)
    html = page_text(out)
    n = len(data["predictions"])
    assert n + len(data["skipped"]) == 24
    if name == "outputs probabilities":
        assert data["model"]["output_kind"] == "probabilities"
        # The score is the model's own probability, not a softmax of it.
        sess = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
        from reportgen.data import Preprocess, load_one

        first = data["predictions"][0]
        x = load_one(small_folder / first["file"], Preprocess((32, 32)))[0][None]
        assert first["score"] == pytest.approx(float(sess.run(None, {"input": x})[0].max()), abs=1e-5)
    if name == "more outputs than classes":
        assert data["accuracy"] is None and any("--labels" in w for w in data["warnings"])
        labels = tmp_path / "labels.txt"
        labels.write_text("\n".join(["circle", "cross", "ring", "square", "star", "a", "b", "c", "d", "e"]))
        result = run_cli(*args, "--labels", labels)
        assert result.code == 0, result.err
        assert load_json(out)["accuracy"] is not None
    if name == "constant features":
        notes = [layer for layer in data["tsne"]["layers"].values() if layer["note"]]
        assert notes and all("same features" in x["note"] for x in notes)
        assert "NaN" not in out.with_suffix(".json").read_text()
    if name == "NaN for bright images":
        nan_skips = [s for s in data["skipped"] if "NaN" in s["reason"]]
        assert nan_skips and len(nan_skips) == 24 - n
        for s in nan_skips:
            assert s["file"] in html
    if name == "grayscale":
        assert data["model"]["channels"] == 1 and len(data["preprocessing"]["mean"]) == 1
    if name == "non-square input":
        assert data["model"]["input_size"] == [32, 48]
    assert 'id="summary"' in html


def test_hostile_model_strings_are_escaped(small_folder: Path, tmp_path: Path) -> None:
    model = tiny_cnn(tmp_path / "m.onnx", classes=3, metadata={"author": "<script>alert('meta')</script>"})
    import onnx

    proto = onnx.load(str(model))
    for node in proto.graph.node:  # rename a tensor to markup
        node.input[:] = ["<b onmouseover=alert(5)>relu</b>" if i == "relu2/out" else i for i in node.input]
        node.output[:] = ["<b onmouseover=alert(5)>relu</b>" if o == "relu2/out" else o for o in node.output]
    onnx.save(proto, str(model))
    out = tmp_path / "out" / "r.html"
    result = run_cli("audit", model, small_folder, "-o", out, "-q")
    assert result.code == 0, result.err
    html = page_text(out)
    assert "<script>alert('meta')" not in html and "&lt;script&gt;alert(" in html
    assert "<b onmouseover" not in html and "&lt;b onmouseover=alert(5)&gt;" in html
    assert any(layer["name"].startswith("<b onmouseover") for layer in load_json(out)["layers"])


def test_pickle_is_refused_without_the_flag(tmp_path: Path, small_folder: Path) -> None:
    import torch

    class Evil:
        def __reduce__(self):
            return (subprocess.call, (["touch", str(tmp_path / "pwned")],))

    torch.save({"model": Evil()}, tmp_path / "evil.pt")
    result = run_cli("audit", tmp_path / "evil.pt", small_folder, "-o", tmp_path / "out" / "r.html", "-q")
    assert result.code == 2 and "--trust-pickle" in result.err
    assert not (tmp_path / "pwned").exists()


# ------------------------------------------------------------------ atomic writes


def test_interrupted_run_leaves_the_previous_report(tmp_path: Path, copy_sample: Path) -> None:
    out = tmp_path / "out" / "report.html"
    first = run_cli("audit", SAMPLE / "model.onnx", copy_sample, "-o", out, "-q", "--no-cache")
    assert first.code == 0, first.err
    before_html, before_json = out.read_bytes(), out.with_suffix(".json").read_bytes()
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "reportgen",
            "audit",
            str(SAMPLE / "model.onnx"),
            str(copy_sample),
            "-o",
            str(out),
            "--no-cache",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=default_interrupts,
    )
    # Interrupt once the run is under way (its progress bar shows), not at a fixed time: a
    # signal that lands while a loaded machine is still importing torch's C extensions
    # can kill the interpreter outright, which is not what this test is about.
    seen = bytearray()
    started = threading.Event()

    def watch() -> None:
        assert proc.stderr is not None
        while chunk := proc.stderr.read(1):
            seen.extend(chunk)
            if b"extract" in seen:
                started.set()
        started.set()

    reader = threading.Thread(target=watch, daemon=True)
    reader.start()
    assert started.wait(timeout=300)
    time.sleep(0.5)
    proc.send_signal(signal.SIGINT)
    proc.wait(timeout=120)
    reader.join(timeout=10)
    err = seen.decode(errors="replace")
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert out.read_bytes() == before_html and out.with_suffix(".json").read_bytes() == before_json
    assert not [p for p in out.parent.iterdir() if p.name.endswith(".tmp")]


def test_interrupt_inside_an_extension_import_still_exits_130(tmp_path: Path) -> None:
    # CI caught the run above dying by SIGINT (-2) after printing its message: the interrupt
    # landed while scipy.stats' first import ran code through PyRun_String, which sets
    # CPython's "unhandled KeyboardInterrupt" flag even though the CLI handled it, and under
    # `python -m` the interpreter then kills itself at exit. Raise the interrupt through
    # PyRun_String on purpose, so the outcome does not depend on timing.
    (tmp_path / "interrupt_probe.py").write_text(
        "import ctypes\n"
        "from reportgen import cli\n"
        "def interrupted(args):\n"
        "    run = ctypes.pythonapi.PyRun_String\n"
        "    run.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.py_object, ctypes.py_object]\n"
        "    run.restype = ctypes.py_object\n"
        "    run(b'raise KeyboardInterrupt', 257, {}, {})\n"  # 257: Py_file_input
        "cli._cmd_layers = interrupted\n"
        "cli.entry(['layers', 'model.onnx'])\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "interrupt_probe"], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert proc.returncode == 130, (proc.returncode, proc.stderr)
    assert proc.stderr.strip() == "reportgen: interrupted; no report was written or replaced"


def test_an_interrupt_a_library_swallows_still_stops_the_run(
    tmp_path: Path, copy_sample: Path, monkeypatch: pytest.MonkeyPatch, python_interrupts: None
) -> None:
    # A library that catches BaseException (or an extension that clears the pending error)
    # can swallow the KeyboardInterrupt and let the run carry on to write its report.
    # Swallow one on purpose, mid-run: the run must still stop, exit 130 and write nothing.
    from reportgen import cli, pipeline

    real = pipeline.build_figures

    def swallowing(*args: object, **kwargs: object) -> object:
        try:
            signal.raise_signal(signal.SIGINT)
        except BaseException:  # noqa: BLE001 - what the careless library does
            pass
        return real(*args, **kwargs)

    monkeypatch.setattr(pipeline, "build_figures", swallowing)
    out = tmp_path / "out" / "report.html"
    code = cli.main(["audit", str(SAMPLE / "model.onnx"), str(copy_sample), "-o", str(out), "-q", "--no-cache"])
    assert code == 130
    assert not out.parent.exists() or not list(out.parent.iterdir())
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the CLI put Python's handler back


# ------------------------------------------------------------------ reproducible


def test_same_inputs_same_bytes(tmp_path: Path) -> None:
    out = tmp_path / "out"
    env = {"SOURCE_DATE_EPOCH": "1700000000"}
    first = run_cli("demo", "-o", out, "-q", env=env)
    assert first.code == 0, first.err
    html, js = (out / "report.html").read_bytes(), (out / "report.json").read_bytes()
    shutil.rmtree(out / "report.features")  # extract again rather than reuse the cache
    second = run_cli("demo", "-o", out, "-q", env=env)
    assert second.code == 0, second.err
    assert (out / "report.json").read_bytes() == js
    assert (out / "report.html").read_bytes() == html
    data = json.loads(js)
    assert data["generated_at"] == "2023-11-14T22:13:20Z" and data["timings"] is None
    # Without SOURCE_DATE_EPOCH only the timestamp and timings may change (here: a cache hit).
    third = run_cli("demo", "-o", out, "-q")
    assert third.code == 0, third.err
    again = json.loads((out / "report.json").read_bytes())
    for key in ("generated_at", "timings", "throughput", "features_from_cache"):
        data.pop(key)
        again.pop(key)
    assert again == data


def test_screenshot_friendly_sizes(sample_audits) -> None:
    """The animated GIF and thumbnails decode; the report stays small for the sample."""
    html = sample_audits["onnx"].read_text()
    assert len(html) < 6_000_000
    gif = re.search(r'id="tsne-gif"[^>]*src="data:image/gif;base64,([^"]+)"', html)
    assert gif is not None
    import base64
    import io

    assert Image.open(io.BytesIO(base64.b64decode(gif.group(1)))).n_frames > 1
