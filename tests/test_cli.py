"""The command line end to end: the sample in two formats, broken folders, hostile names,
errors without tracebacks, the features cache."""

from __future__ import annotations

import json
import re
import shutil
from html import unescape
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLE, assert_no_traceback, jpeg_bytes, load_json, make_image, page_text, read_cache, run_cli
from sklearn.metrics import confusion_matrix

from reportgen import __version__

# ------------------------------------------------------------------ the sample


def test_onnx_and_torchscript_reports_agree(sample_audits: dict[str, Path]) -> None:
    a, b = load_json(sample_audits["onnx"]), load_json(sample_audits["torchscript"])
    assert a["model"]["format"] == "onnx" and b["model"]["format"] == "torchscript"
    assert [p["file"] for p in a["predictions"]] == [p["file"] for p in b["predictions"]]
    assert [p["pred"] for p in a["predictions"]] == [p["pred"] for p in b["predictions"]]
    assert np.allclose([p["score"] for p in a["predictions"]], [p["score"] for p in b["predictions"]], atol=1e-4)
    assert [layer["name"] for layer in a["layers"]] == [layer["name"] for layer in b["layers"]]


def test_features_of_both_formats_agree(sample_audits: dict[str, Path]) -> None:
    caches = {fmt: read_cache(html.with_name("report.features")) for fmt, html in sample_audits.items()}
    onnx, ts = caches["onnx"], caches["torchscript"]
    assert onnx.files == ts.files
    assert [layer.name for layer in onnx.layers] == [layer.name for layer in ts.layers] and len(onnx.layers) >= 4
    for name, values in onnx.arrays.items():
        assert values.dtype == np.float32, name  # a small set: stored in full precision
        scale = np.abs(values).max() + 1e-6
        assert np.allclose(values, ts.arrays[name], atol=1e-4 * scale), name
    assert np.allclose(onnx.outputs, ts.outputs, atol=1e-4)


def test_json_metrics_equal_scikit_learn_on_its_own_predictions(sample_audits: dict[str, Path]) -> None:
    data = load_json(sample_audits["onnx"])
    classes = data["classes"]
    truth = [classes.index(p["label"]) for p in data["predictions"]]
    pred = [classes.index(p["pred"]) for p in data["predictions"]]
    assert data["confusion_matrix"] == confusion_matrix(truth, pred, labels=range(len(classes))).tolist()
    assert data["accuracy"] == pytest.approx(float(np.mean(np.array(truth) == np.array(pred))), abs=1e-6)
    for key in (
        "tool_version",
        "model",
        "dataset",
        "classes",
        "per_class",
        "skipped",
        "layers",
        "timings",
        "throughput",
    ):
        assert key in data
    assert data["tool_version"] == __version__
    assert data["model"]["input_size"] == [64, 64] and len(data["model"]["sha256"]) == 64
    assert data["dataset"]["n_images"] == 274 and data["skipped"] == []
    assert data["throughput"]["extraction_images_per_s"] > 0


def test_report_is_self_contained(sample_audits: dict[str, Path]) -> None:
    html = sample_audits["onnx"].read_text()
    assert not re.search(r"https?:", html), re.search(r".{40}https?:.{40}", html)
    policy = re.search(r'<meta http-equiv="Content-Security-Policy" content="([^"]*)">', html)
    assert policy and "default-src 'none'" in unescape(policy.group(1))
    srcs = re.findall(r'\bsrc="([^"]*)"', html)
    assert srcs and all(s.startswith("data:image/") for s in srcs)
    assert "<link" not in html and "@import" not in html
    for section in ("summary", "confusion", "per-class", "balance", "skipped", "configuration"):
        assert f'id="{section}"' in html


# ------------------------------------------------------------------ folders


def test_broken_images_are_listed_exactly(tmp_path: Path) -> None:
    images = tmp_path / "images"
    for cls in ("circle", "square"):
        shutil.copytree(SAMPLE / "images" / cls, images / cls)
    (images / "circle" / "zero.jpg").write_bytes(b"")
    (images / "square" / "truncated.jpg").write_bytes(jpeg_bytes((64, 64))[:400])
    (images / "square" / "text.jpg").write_text("this is not a picture\n")
    (images / "square" / "readme.txt").write_text("noise, passed over")
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(json.loads((SAMPLE / "manifest.json").read_text())["classes"]))
    out = tmp_path / "out" / "r.html"
    result = run_cli("audit", SAMPLE / "model.onnx", images, "-o", out, "-q", "--labels", labels)
    assert result.code == 0, result.err
    data = load_json(out)
    assert sorted(s["file"] for s in data["skipped"]) == ["circle/zero.jpg", "square/text.jpg", "square/truncated.jpg"]
    reasons = {s["file"]: s["reason"] for s in data["skipped"]}
    assert "empty" in reasons["circle/zero.jpg"] and "truncated" in reasons["square/truncated.jpg"]
    assert "not a recognised image" in reasons["square/text.jpg"]
    html = page_text(out)
    for name in reasons:
        assert name in html


def test_hostile_names_are_escaped(tmp_path: Path) -> None:
    evil = "<img src=x onerror=alert(1)>"
    images = tmp_path / "images"
    make_image(images / evil / "<svg onload=alert(2)>.png", size=(64, 64), color=(250, 0, 0))
    make_image(images / "plain" / "a.png", size=(64, 64), color=(0, 0, 250))
    (images / evil / "broken <b>x<b>.jpg").write_bytes(b"")
    model = tmp_path / "m.onnx"
    from onnx_models import tiny_cnn

    tiny_cnn(model, classes=2, size=(64, 64))
    out = tmp_path / "out" / "r.html"
    result = run_cli("audit", model, images, "-o", out, "-q")
    assert result.code == 0, result.err
    html = page_text(out)
    assert "<img src=x" not in html and "<svg onload" not in html and "<b>x" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    data = load_json(out)
    assert evil in data["classes"]


def test_flat_folder_shows_predictions_without_accuracy(tmp_path: Path) -> None:
    images = tmp_path / "flat"
    images.mkdir()
    for path in sorted((SAMPLE / "images" / "ring").glob("*.jpg"))[:12]:
        shutil.copy(path, images / path.name)
    out = tmp_path / "out" / "r.html"
    result = run_cli("audit", SAMPLE / "model.onnx", images, "-o", out, "-q")
    assert result.code == 0, result.err
    data = load_json(out)
    assert data["accuracy"] is None and data["dataset"]["labeled"] is False
    assert len(data["predictions"]) == 12 and all(p["label"] is None for p in data["predictions"])
    assert sum(p["pred"] == "ring" for p in data["predictions"]) >= 10


def test_every_slow_step_has_a_progress_bar_and_quiet_silences_them(tmp_path: Path) -> None:
    images = tmp_path / "few"
    for cls in ("ring", "square", "triangle"):
        (images / cls).mkdir(parents=True)
        for path in sorted((SAMPLE / "images" / cls).glob("*.jpg"))[:10]:
            shutil.copy(path, images / cls / path.name)
    labels = tmp_path / "labels.txt"
    labels.write_text("\n".join(json.loads((SAMPLE / "manifest.json").read_text())["classes"]) + "\n")
    args = ["audit", SAMPLE / "model.onnx", images, "--labels", labels, "--units", "1", "--unit-steps", "5"]
    loud = run_cli(*args, "-o", tmp_path / "loud.html")
    assert loud.code == 0, loud.err
    bars = {m.group(1) for m in re.finditer(r"(?:^|\r)([\w -]+?):\s+\d+%\|", loud.err, re.M)}
    assert bars == {
        "extract",
        "kNN",
        "t-SNE",
        "gradcam",
        "shortcuts",
        "robustness",
        "feature visualisation",
        "figures",
    }, loud.err
    # Each bar counts what its step does: 30 images, 3 x 5 optimisation steps.
    assert re.search(r"extract:\s+0%\|.*\| 0/30 ", loud.err), loud.err
    assert re.search(r"feature visualisation:\s+0%\|.*\| 0/15 ", loud.err), loud.err
    quiet = run_cli(*args, "-o", tmp_path / "quiet.html", "-q")
    assert quiet.code == 0 and quiet.err == "", quiet.err


def test_count_mismatch_is_reported_not_guessed(tmp_path: Path) -> None:
    images = tmp_path / "images"
    for cls in ("circle", "ring", "star"):
        shutil.copytree(SAMPLE / "images" / cls, images / cls)
    from onnx_models import tiny_cnn

    model = tiny_cnn(tmp_path / "m.onnx", classes=5, size=(64, 64))
    out = tmp_path / "out" / "r.html"
    result = run_cli("audit", model, images, "-o", out, "-q")
    assert result.code == 0, result.err
    data = load_json(out)
    assert data["accuracy"] is None and data["classes"] == ["0", "1", "2", "3", "4"]
    assert any("--labels" in w for w in data["warnings"])
    assert "--labels" in out.read_text()


# ------------------------------------------------------------------ cache


def test_second_run_reuses_the_cache_and_skips_the_model(tmp_path: Path, copy_sample: Path) -> None:
    model = tmp_path / "model.onnx"
    shutil.copy(SAMPLE / "model.onnx", model)
    out = tmp_path / "out" / "r.html"
    # No section that needs the model: a run from the cache never loads it.
    audit = ["audit", model, copy_sample, "-o", out, "-q", "--no-tsne", "--gallery-size", "0", "--faithfulness-images", "0",
             "--channels", "0"]  # fmt: skip
    audit += ["--shortcut-images", "0", "--robustness-images", "0"]
    first = run_cli(*audit)
    assert first.code == 0, first.err
    assert load_json(out)["features_from_cache"] is False
    cache = out.with_name("r.features")
    assert cache.is_dir()
    assert {"meta.json", "files.npy", "sha256.npy", "labels.npy", "outputs.npy"} <= {p.name for p in cache.iterdir()}
    assert not [p for p in cache.parent.iterdir() if p.name.endswith(".tmp")]  # no scratch directory left
    # The second run finds the cache: no model load and no extraction phase are timed.
    second = run_cli(*audit)
    assert second.code == 0, second.err
    again = load_json(out)
    assert again["features_from_cache"] is True
    assert "extract" not in (again["timings"] or {}) and "load model" not in (again["timings"] or {})
    # Changing an image invalidates the cache.
    victim = next(copy_sample.glob("circle/*.jpg"))
    victim.write_bytes(victim.read_bytes() + b"\0")
    third = run_cli(*audit)
    assert third.code == 0 and load_json(out)["features_from_cache"] is False


# ------------------------------------------------------------------ errors and basics


def test_version_and_help() -> None:
    result = run_cli("--version")
    assert result.code == 0 and result.out.strip() == f"reportgen {__version__}"
    for command in ([], ["audit"], ["demo"], ["layers"]):
        result = run_cli(*command, "--help")
        assert result.code == 0 and "usage:" in result.out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["audit", "missing.onnx", "."], "model file not found"),
        (["audit", SAMPLE / "model.onnx", "/no/such/folder"], "image folder not found"),
        (["audit", SAMPLE / "model.onnx", SAMPLE / "images", "--size", "abc"], "--size expects"),
        (["audit", SAMPLE / "model.onnx", SAMPLE / "images", "--size", "32"], "only accepts 64x64"),
        (["audit", SAMPLE / "model.onnx", SAMPLE / "images", "--layers", "nope"], "no layer named"),
        (["audit", SAMPLE / "model.onnx", SAMPLE / "images", "--mean", "1,2"], "1 or 3 numbers"),
        (
            ["audit", SAMPLE / "model.onnx", SAMPLE / "images", "-o", SAMPLE / "images" / "r.html"],
            "inside the image folder",
        ),
        (["audit", SAMPLE / "manifest.json", SAMPLE / "images"], "cannot tell what kind of model"),
        (["audit"], "required"),
        (["frobnicate"], "invalid choice"),
    ],
)
def test_user_errors_are_one_line(tmp_path: Path, args: list, message: str) -> None:
    result = run_cli(*args, "-q" if args and args[0] == "audit" and len(args) > 2 else "--debug", cwd=tmp_path)
    assert result.code == 2, (result.code, result.err)
    assert_no_traceback(result)
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("reportgen: error:") and message in lines[0], result.err


def test_layers_command_lists_tensors() -> None:
    result = run_cli("layers", SAMPLE / "model.onnx")
    assert result.code == 0, result.err
    lines = result.out.splitlines()
    # The sample's ONNX file carries its module names (torch's dynamo exporter writes
    # them), so they come first and the tensor names second.
    header = next(line for line in lines if not line.startswith("#"))
    assert header.split()[:2] == ["module", "tensor"]
    marked = [line[2:].split()[1] for line in lines if line.startswith(("* ", "*c"))]
    assert marked[0] == "input" and marked[-1] == "logits" and len(marked) >= 5
    assert sum(line.startswith("*c") for line in lines) == 1
    assert any(line[2:].split()[:2] == ["bn1", "getitem"] for line in lines)


def test_demo_command(tmp_path: Path) -> None:
    result = run_cli("demo", "-o", tmp_path / "demo", "-q")
    assert result.code == 0, result.err
    assert (tmp_path / "demo" / "report.html").is_file()
    assert load_json(tmp_path / "demo" / "report.html")["dataset"]["n_images"] == 274
