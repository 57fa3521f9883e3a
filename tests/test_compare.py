"""`reportgen compare` and the quality gates."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SAMPLE, assert_no_traceback, load_json, run_cli

from reportgen.analyses.similarity import knn_overlap, linear_cka, paired_bootstrap

FAST = ["-q", "--gallery-size", "0", "--faithfulness-images", "0", "--channels", "0", "--shortcut-images", "0", "--no-tsne"]  # fmt: skip


@pytest.fixture(scope="module")
def two_audits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The shipped model (ONNX) and a second version of it (its last layers perturbed by
    seeded noise, saved as TorchScript), both audited on the sample."""
    base = tmp_path_factory.mktemp("compare")
    sys.path.insert(0, str(SAMPLE))
    import make_sample

    net = make_sample.build_model()
    net.load_state_dict(torch.jit.load(str(SAMPLE / "model.ts")).state_dict())
    generator = torch.Generator().manual_seed(3)
    with torch.no_grad():
        for param in (net.conv4.weight, net.fc.weight):
            param.add_(0.6 * param.std() * torch.randn(param.shape, generator=generator))
    net.eval()
    meta = {"classes": make_sample.CLASSES, "input_size": [64, 64]}
    v2 = base / "model_v2.ts"
    torch.jit.save(torch.jit.script(net), str(v2), _extra_files={"reportgen.json": json.dumps(meta)})
    out = {}
    for name, model in (("v1", SAMPLE / "model.onnx"), ("v2", v2)):
        html = base / name / "report.html"
        result = run_cli("audit", model, SAMPLE / "images", "-o", html, *FAST)
        assert result.code == 0, result.err
        out[name] = html
        out[f"model_{name}"] = model
    return out


def test_flips_are_exactly_those_the_predictions_imply(two_audits: dict[str, Path], tmp_path: Path) -> None:
    diff = tmp_path / "diff.html"
    result = run_cli(
        "compare", two_audits["v1"].with_suffix(".json"), two_audits["v2"], "-o", diff, "-q",
        "--old-model", two_audits["model_v1"], "--new-model", two_audits["model_v2"],
    )  # fmt: skip
    assert result.code == 0, result.err
    data = json.loads(diff.with_suffix(".json").read_text())
    old = {p["file"]: p for p in load_json(two_audits["v1"])["predictions"]}
    new = {p["file"]: p for p in load_json(two_audits["v2"])["predictions"]}
    regressions = sorted(f for f in old if old[f]["pred"] == old[f]["label"] and new[f]["pred"] != new[f]["label"])
    fixes = sorted(f for f in old if old[f]["pred"] != old[f]["label"] and new[f]["pred"] == new[f]["label"])
    assert regressions, "the perturbed model should lose some images"
    still_wrong = sorted(
        f for f in old if old[f]["pred"] != new[f]["pred"] and old[f]["label"] not in (old[f]["pred"], new[f]["pred"])
    )
    assert sorted(f["file"] for f in data["flips"]["regressions"]) == regressions
    assert sorted(f["file"] for f in data["flips"]["fixes"]) == fixes
    assert still_wrong, "the perturbed model should change some mistakes into other mistakes"
    assert sorted(f["file"] for f in data["flips"]["still_wrong"]) == still_wrong
    assert data["flips"]["unlabeled_changes"] == []
    changed = sum(old[f]["pred"] != new[f]["pred"] for f in old)
    assert data["changed_predictions"] == changed == len(regressions) + len(fixes) + len(still_wrong)
    flip = data["flips"]["regressions"][0]
    assert flip["old_pred"] == old[flip["file"]]["pred"] and flip["new_pred"] == new[flip["file"]]["pred"]
    # Accuracy and its interval.
    acc_old = np.mean([p["pred"] == p["label"] for p in old.values()])
    acc_new = np.mean([p["pred"] == p["label"] for p in new.values()])
    acc = data["accuracy"]
    assert acc["old"]["value"] == pytest.approx(acc_old, abs=1e-6) and acc["new"]["value"] == pytest.approx(
        acc_new, abs=1e-6
    )
    assert acc["delta"]["low"] <= acc["delta"]["value"] <= acc["delta"]["high"]
    # Confusion difference equals the difference of the two audits' own matrices.
    cm_old = np.array(load_json(two_audits["v1"])["confusion_matrix"])
    cm_new = np.array(load_json(two_audits["v2"])["confusion_matrix"])
    assert data["confusion_difference"] == (cm_new - cm_old).tolist()
    # Representation similarity from the two caches: below 1 for two different models.
    sims = data["layers_similarity"]
    assert len(sims) == len(load_json(two_audits["v1"])["layers"])
    assert sims[0]["cka"] == pytest.approx(1.0, abs=1e-6)  # the pixel layer is the same
    assert min(s["cka"] for s in sims) < 0.999
    html = diff.read_text()
    assert 'id="flips"' in html and html.count('data-thumb="old:') >= 1 and html.count('data-thumb="new:') >= 1
    assert "https:" not in html and "http:" not in html


def test_a_model_compared_with_itself(two_audits: dict[str, Path], tmp_path: Path) -> None:
    diff = tmp_path / "self.html"
    result = run_cli("compare", two_audits["v1"], two_audits["v1"], "-o", diff, "-q", "--no-cam")
    assert result.code == 0, result.err
    data = json.loads(diff.with_suffix(".json").read_text())
    assert all(abs(s["cka"] - 1.0) <= 1e-6 for s in data["layers_similarity"])
    assert all(s["knn_overlap"] == 1.0 for s in data["layers_similarity"])
    assert all(group == [] for group in data["flips"].values()) and data["accuracy"]["delta"]["value"] == 0


def test_gates_exit_codes(two_audits: dict[str, Path], tmp_path: Path) -> None:
    drop = load_json(two_audits["v1"])["accuracy"] - load_json(two_audits["v2"])["accuracy"]
    assert drop > 0.01
    out = tmp_path / "gate.html"
    failing = run_cli(
        "compare",
        two_audits["v1"],
        two_audits["v2"],
        "-o",
        out,
        "-q",
        "--no-cam",
        "--fail-on",
        f"accuracy_drop={drop / 2:.4f}",
    )
    assert failing.code == 3 and out.exists(), failing.err
    assert_no_traceback(failing)
    lines = failing.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("reportgen: gate failed: accuracy_drop")
    gates = json.loads(out.with_suffix(".json").read_text())["gates"]
    assert gates["accuracy_drop"]["passed"] is False
    passing = run_cli(
        "compare",
        two_audits["v1"],
        two_audits["v2"],
        "-o",
        out,
        "-q",
        "--no-cam",
        "--fail-on",
        "accuracy_drop=0.9,class_recall_drop=1.0",
    )
    assert passing.code == 0, passing.err
    recall = run_cli(
        "compare", two_audits["v1"], two_audits["v2"], "-o", out, "-q", "--no-cam", "--fail-on", "class_recall_drop=0.0"
    )
    assert recall.code == 3 and "class_recall_drop" in recall.err and "class " in recall.err
    bad = run_cli("compare", two_audits["v1"], two_audits["v2"], "-o", out, "--fail-on", "speed=1")
    assert bad.code == 2 and "accuracy_drop" in bad.err


def test_audit_fail_under(tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    failing = run_cli(
        "audit", SAMPLE / "model.onnx", SAMPLE / "images", "-o", out, *FAST, "--fail-under", "accuracy=0.99"
    )
    assert failing.code == 3 and out.exists()
    assert failing.err.strip().splitlines() == [
        f"reportgen: gate failed: accuracy {load_json(out)['accuracy']:.4f} < 0.99"
    ]
    passing = run_cli(
        "audit", SAMPLE / "model.onnx", SAMPLE / "images", "-o", out, *FAST, "--fail-under", "accuracy=0.5,macro_f1=0.5"
    )
    assert passing.code == 0, passing.err


def test_different_folders_and_future_versions_are_refused(two_audits: dict[str, Path], tmp_path: Path) -> None:
    other = tmp_path / "other"
    for cls in ("circle", "ring"):
        shutil.copytree(SAMPLE / "images" / cls, other / cls)
    for path in other.rglob("*.jpg"):
        path.rename(path.with_name("x_" + path.name))
    elsewhere = tmp_path / "elsewhere" / "r.html"
    assert run_cli("audit", SAMPLE / "model.onnx", other, "-o", elsewhere, *FAST).code == 0
    result = run_cli("compare", two_audits["v1"], elsewhere, "-o", tmp_path / "d.html")
    assert result.code == 2 and "different image folders" in result.err
    future = tmp_path / "future.json"
    data = load_json(two_audits["v1"])
    data["schema_version"] = 99
    data["tool_version"] = "9.0.0"
    future.write_text(json.dumps(data))
    result = run_cli("compare", two_audits["v1"], future, "-o", tmp_path / "d.html")
    assert result.code == 2 and "upgrade reportgen" in result.err
    junk = tmp_path / "junk.json"
    junk.write_text('{"hello": 1}')
    result = run_cli("compare", junk, two_audits["v1"], "-o", tmp_path / "d.html")
    assert result.code == 2 and "not a reportgen audit" in result.err


def test_folder_changes_are_listed(two_audits: dict[str, Path], tmp_path: Path) -> None:
    images = tmp_path / "images"
    shutil.copytree(SAMPLE / "images", images)
    first = tmp_path / "a" / "r.html"
    assert run_cli("audit", SAMPLE / "model.onnx", images, "-o", first, *FAST).code == 0
    removed = sorted(images.glob("ring/*.jpg"))[0]
    removed.unlink()
    changed = sorted(images.glob("star/*.jpg"))[0]
    changed.write_bytes(changed.read_bytes() + b"\0")
    shutil.copy(SAMPLE / "images" / "circle" / "img_0020.jpg", images / "circle" / "new_one.jpg")
    second = tmp_path / "b" / "r.html"
    assert run_cli("audit", SAMPLE / "model.onnx", images, "-o", second, *FAST).code == 0
    out = tmp_path / "d.html"
    assert run_cli("compare", first, second, "-o", out, "-q", "--no-cam").code == 0
    changes = json.loads(out.with_suffix(".json").read_text())["folder_changes"]
    assert changes == {
        "added": ["circle/new_one.jpg"],
        "removed": [f"ring/{removed.name}"],
        "modified": [f"star/{changed.name}"],
    }


def test_similarity_measures() -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 12))
    q, _ = np.linalg.qr(rng.standard_normal((12, 12)))
    assert linear_cka(x, 3.0 * x @ q + 5.0) == pytest.approx(1.0, abs=1e-9)  # rotation, scale, shift
    assert linear_cka(x, rng.standard_normal((200, 12))) < 0.3
    assert knn_overlap(x, x @ q) == pytest.approx(1.0)
    boot = paired_bootstrap(np.ones(50), np.zeros(50), resamples=200)
    assert boot.delta.value == -1 and boot.delta.low == boot.delta.high == -1


def _crafted(source: Path, dest: Path, edit: Callable[[dict], None]) -> Path:
    data = load_json(source)
    edit(data)
    dest.write_text(json.dumps(data))
    return dest


@pytest.mark.parametrize("entry", ["../../etc/hostname", "/etc/hostname", "circle/../../x.jpg"])
def test_an_entry_outside_the_image_folder_is_refused(two_audits: dict[str, Path], tmp_path: Path, entry: str) -> None:
    """An audit JSON is untrusted: its entries choose which files compare decodes."""

    def point_outside(data: dict) -> None:
        data["predictions"][0]["file"] = entry

    crafted = _crafted(two_audits["v2"], tmp_path / "crafted.json", point_outside)
    result = run_cli("compare", two_audits["v1"], crafted, "-o", tmp_path / "d.html", "--no-cam")
    assert_no_traceback(result)
    assert result.code == 2 and "not a relative path inside the image folder" in result.err
    assert len(result.err.strip().splitlines()) == 1
    assert not (tmp_path / "d.html").exists()


def test_a_model_named_only_in_the_json_is_never_loaded(two_audits: dict[str, Path], tmp_path: Path) -> None:
    """A JSON that points its model at another file (with that file's hash) gets no maps
    from it; maps come only from the files given on the command line, checked by hash."""
    other = tmp_path / "other.onnx"
    shutil.copy(SAMPLE / "model.onnx", other)  # the audited bytes at another path: what a JSON could name

    def point_at_other(data: dict) -> None:
        data["model"]["path"] = str(other)

    crafted = _crafted(two_audits["v1"], two_audits["v1"].parent / "crafted.json", point_at_other)
    diff = tmp_path / "d.html"
    result = run_cli("compare", crafted, two_audits["v2"], "-o", diff, "-q")
    assert result.code == 0, result.err
    html = diff.read_text()
    assert 'data-thumb="old:' not in html and 'data-thumb="new:' not in html
    assert "give --old-model and --new-model" in html
    # The right files on the command line give the maps; a wrong one is named and refused.
    wrong = run_cli(
        "compare", crafted, two_audits["v2"], "-o", diff, "-q",
        "--old-model", two_audits["model_v2"], "--new-model", two_audits["model_v2"],
    )  # fmt: skip
    assert wrong.code == 0, wrong.err
    html = diff.read_text()
    assert "is not the model the old audit ran" in html and 'data-thumb="old:' not in html
    right = run_cli(
        "compare", crafted, two_audits["v2"], "-o", diff, "-q",
        "--old-model", other, "--new-model", two_audits["model_v2"],
    )  # fmt: skip
    assert right.code == 0, right.err
    assert 'data-thumb="old:' in diff.read_text()


def test_a_link_out_of_the_image_folder_is_not_read(two_audits: dict[str, Path], tmp_path: Path) -> None:
    """A flip whose file is, links resolved, outside the folder is shown grey, not decoded."""
    images = tmp_path / "images"
    shutil.copytree(SAMPLE / "images", images)
    flips = load_json(two_audits["v2"])
    old = {p["file"]: p for p in load_json(two_audits["v1"])["predictions"]}
    flipped = next(
        p["file"] for p in flips["predictions"] if old[p["file"]]["pred"] == old[p["file"]]["label"] != p["pred"]
    )
    secret = tmp_path / "secret.png"
    from PIL import Image

    Image.new("RGB", (64, 64), (255, 0, 0)).save(secret)
    (images / flipped).unlink()
    (images / flipped).symlink_to(secret)
    diff = tmp_path / "d.html"
    result = run_cli("compare", two_audits["v1"], two_audits["v2"], "-o", diff, "-q", "--no-cam", "--images", images)
    assert result.code == 0, result.err
    page = re.search(r'<script type="application/json" id="page-data">(.*?)</script>', diff.read_text(), re.S)
    thumb = json.loads(page.group(1))["thumbs"][f"a:{flipped}"]
    pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(thumb.split(",", 1)[1]))).convert("RGB"))
    assert abs(pixels.astype(int) - 200).max() <= 8  # the grey square, not the red secret


def _top_label_ece(scores: np.ndarray, correct: np.ndarray, bins: int = 15) -> float:
    """ECE by a direct loop over 15 equal-width bins (lower edge open, as papers bin)."""
    total = 0.0
    for b in range(bins):
        lo, hi = b / bins, (b + 1) / bins
        inside = [(s, c) for s, c in zip(scores, correct, strict=True) if lo < s <= hi or (b == 0 and s == 0)]
        if inside:
            gap = abs(np.mean([c for _, c in inside]) - np.mean([s for s, _ in inside]))
            total += len(inside) / len(scores) * gap
    return total


def test_negative_flip_rate_and_ece_gates(two_audits: dict[str, Path], tmp_path: Path) -> None:
    old = {p["file"]: p for p in load_json(two_audits["v1"])["predictions"]}
    new = {p["file"]: p for p in load_json(two_audits["v2"])["predictions"]}
    labeled = sorted(f for f in old if old[f]["label"] is not None)
    negative = sum(old[f]["pred"] == old[f]["label"] and new[f]["pred"] != new[f]["label"] for f in labeled)
    rate = negative / len(labeled)
    eces = []
    for side in (old, new):
        scores = np.array([side[f]["score"] for f in labeled])
        eces.append(_top_label_ece(scores, np.array([side[f]["pred"] == side[f]["label"] for f in labeled])))
    assert rate > 0 and eces[1] != eces[0]
    out = tmp_path / "gate.html"
    gate = f"negative_flip_rate={rate / 2:.4f},ece_increase=1.0"
    failing = run_cli("compare", two_audits["v1"], two_audits["v2"], "-o", out, "-q", "--no-cam", "--fail-on", gate)
    assert failing.code == 3 and "negative_flip_rate" in failing.err and "ece_increase" not in failing.err, failing.err
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["negative_flip_rate"] == pytest.approx(rate, abs=1e-6)
    ece = data["calibration"]["ece"]
    assert ece["old"] == pytest.approx(eces[0], abs=1e-6) and ece["new"] == pytest.approx(eces[1], abs=1e-6)
    assert data["gates"]["ece_increase"]["value"] == pytest.approx(eces[1] - eces[0], abs=1e-6)
    assert data["gates"]["ece_increase"]["passed"] is True
    # The new model's ECE is also what its own audit's calibration section says.
    assert load_json(two_audits["v2"])["calibration"]["ece"] == pytest.approx(eces[1], abs=1e-6)
    worse = eces[1] - eces[0]
    threshold = worse / 2 if worse > 0 else worse - 0.01
    ece_gate = run_cli(
        "compare", two_audits["v1"], two_audits["v2"], "-o", out, "-q", "--no-cam", "--fail-on",
        f"ece_increase={threshold:.5f}",
    )  # fmt: skip
    assert ece_gate.code == 3 and "ece_increase" in ece_gate.err
    html = out.read_text()
    assert "Negative flip rate" in html and "ECE" in html


def test_robustness_change_and_gate(two_audits: dict[str, Path], tmp_path: Path) -> None:
    def table(html: Path) -> dict[tuple[str, int], float]:
        return {(c["name"], c["severity"]): c["accuracy"] for c in load_json(html)["robustness"]["corruptions"]}

    old, new = table(two_audits["v1"]), table(two_audits["v2"])
    assert len(old) == len(new) == 18
    drop = float(np.mean([old[k] - new[k] for k in old]))
    out = tmp_path / "robust.html"
    threshold = drop / 2 if drop > 0 else drop - 0.01
    failing = run_cli(
        "compare", two_audits["v1"], two_audits["v2"], "-o", out, "-q", "--no-cam", "--fail-on",
        f"robustness_drop={threshold:.5f}",
    )  # fmt: skip
    assert failing.code == 3 and "robustness_drop" in failing.err, failing.err
    data = json.loads(out.with_suffix(".json").read_text())
    assert data["robustness"]["mean_drop"] == pytest.approx(drop, abs=1e-5)
    rows = {(c["name"], c["severity"]): c for c in data["robustness"]["corruptions"]}
    assert all(rows[k]["old"] == pytest.approx(old[k]) and rows[k]["new"] == pytest.approx(new[k]) for k in old)
    assert 'id="robustness"' in out.read_text(encoding="utf-8")
    passing = run_cli(
        "compare", two_audits["v1"], two_audits["v2"], "-o", out, "-q", "--no-cam", "--fail-on", "robustness_drop=1.0"
    )
    assert passing.code == 0, passing.err
