"""Error slices: a planted group is found and described, a folder without one gets none,
and ``compare`` grades each slice under both models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from conftest import load_json, run_cli
from PIL import Image, ImageDraw
from pixel_models import pixel_detectors, traced

from reportgen.analyses.slices import cohen_d, find_slices, wilson

COLOURS = [(220, 30, 30), (30, 200, 30), (30, 30, 220)]  # c0 red, c1 green, c2 blue discs
DUSK = 0.25  # the dusk pictures' light: every value scaled by it
PER_CLASS = 60
DUSK_IMAGES = 30
MISFILED = 6  # images filed under a wrong class, spread over the classes: scattered errors


def colour_model(threshold: float):
    """One colour detector per class, each firing above ``threshold``.  At 0.3 (a threshold
    set on daylight pictures) a disc at dusk is too dim for every detector: all scores tie
    and the model answers c0, so the blue discs at dusk are all wrong; at 0.05 it sees them."""
    weights = [(1.0, -0.5, -0.5), (-0.5, 1.0, -0.5), (-0.5, -0.5, 1.0)]
    return traced(pixel_detectors(weights, [-threshold] * 3))


def draw_images(root: Path, dusk: bool) -> list[str]:
    """Red, green and blue discs on grey, and with ``dusk`` the blue ones of the sub-folder
    ``c2/dusk`` in a quarter of the light; a few discs filed under a wrong class.  Returns
    the dusk files."""
    rng = np.random.default_rng(11)
    files = []
    for c, colour in enumerate(COLOURS):
        for i in range(PER_CLASS + (DUSK_IMAGES if dusk and c == 2 else 0)):
            at_dusk = i >= PER_CLASS
            img = Image.new("RGB", (32, 32), (128, 128, 128))
            cx, cy = rng.uniform(9, 23, 2)
            r = rng.uniform(5, 8)
            ImageDraw.Draw(img).ellipse((cx - r, cy - r, cx + r, cy + r), fill=colour)
            pixels = np.asarray(img, np.float32) + rng.normal(0, 6, (32, 32, 3))
            if at_dusk:
                pixels *= DUSK
            misfiled = not at_dusk and i < MISFILED and c == i % 3
            folder = f"c{(c + 1) % 3}" if misfiled else f"c{c}/dusk" if at_dusk else f"c{c}"
            file = f"{folder}/{c}_{i:03d}.png"
            (root / folder).mkdir(parents=True, exist_ok=True)
            Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8)).save(root / file)
            if at_dusk:
                files.append(file)
    return files


AUDIT = ["-q", "--no-tsne", "--mean", "0", "--std", "1", "--size", "32", "--device", "cpu",
         "--shortcut-images", "0", "--channels", "0", "--gallery-size", "2"]  # fmt: skip


@pytest.fixture(scope="module")
def planted(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    base = tmp_path_factory.mktemp("slices")
    for name, threshold in (("daylight", 0.3), ("fixed", 0.05)):
        colour_model(threshold).save(str(base / f"{name}.ts"))
    dusk = draw_images(base / "images", dusk=True)
    draw_images(base / "plain", dusk=False)
    out = {"base": base, "dusk": dusk}
    for name, model, images in (
        ("daylight", "daylight.ts", "images"),
        ("fixed", "fixed.ts", "images"),
        ("plain", "daylight.ts", "plain"),
    ):
        html = base / "out" / name / "r.html"
        result = run_cli("audit", base / model, base / images, "-o", html, *AUDIT)
        assert result.code == 0, result.err
        out[name] = html
    return out


def test_the_planted_slice_is_found_and_described(planted: dict[str, object]) -> None:
    data = load_json(planted["daylight"])
    dusk = set(planted["dusk"])
    predictions = {p["file"]: p for p in data["predictions"]}
    assert all(predictions[f]["pred"] != predictions[f]["label"] for f in dusk)  # the model fails there, by design
    slices = data["slices"]
    assert slices, data["slice_search"]
    top = slices[0]
    members = set(top["files"])
    assert len(members & dusk) >= 0.8 * len(dusk) and len(members & dusk) >= 0.6 * len(members)
    # Its numbers, recomputed from the predictions.
    right = sum(predictions[f]["pred"] == predictions[f]["label"] for f in members)
    assert top["size"] == len(members) and top["accuracy"] == pytest.approx(right / len(members), abs=1e-6)
    assert top["ci"] == pytest.approx(list(wilson(right, len(members))), abs=1e-6)
    assert top["ci"][0] <= top["accuracy"] <= top["ci"][1] < top["overall_accuracy"]
    assert top["overall_accuracy"] == pytest.approx(data["accuracy"], abs=1e-6)
    # Described by what sets it apart: darker, and its folder.
    props = {p["name"]: p for p in top["properties"]}
    assert props["brightness"]["effect"] < -2 and props["brightness"]["slice_mean"] < props["brightness"]["rest_mean"]
    assert props["folder c2/dusk"]["slice_mean"] >= 0.6 and props["folder c2/dusk"]["rest_mean"] < 0.1
    assert "darker" in top["description"] and "c2/dusk/" in top["description"]
    # The brightness effect against an independent reading of the files (luminance of the
    # decoded PNGs, which are the model's input size: no resampling).
    base = planted["base"]

    def luma(file: str) -> float:
        rgb = np.asarray(Image.open(base / "images" / file).convert("RGB"), np.float64) / 255
        return float((rgb @ [0.299, 0.587, 0.114]).mean())

    inside = np.array([luma(f) for f in sorted(members)])
    rest = np.array([luma(f) for f in predictions if f not in members])
    assert props["brightness"]["slice_mean"] == pytest.approx(inside.mean(), abs=1e-4)
    assert props["brightness"]["effect"] == pytest.approx(cohen_d(inside, rest), abs=1e-3)
    d = (inside.mean() - rest.mean()) / np.sqrt(
        ((len(inside) - 1) * inside.var(ddof=1) + (len(rest) - 1) * rest.var(ddof=1)) / (len(inside) + len(rest) - 2)
    )
    assert cohen_d(inside, rest) == pytest.approx(d, rel=1e-9)
    # Read back from the features cache (the properties are stored there): the same slices.
    again = Path(planted["base"]) / "out" / "again" / "r.html"
    cache = Path(planted["daylight"]).with_name("r.features")
    result = run_cli("audit", base / "daylight.ts", base / "images", "-o", again, "--features", cache, *AUDIT)
    assert result.code == 0, result.err
    reread = load_json(again)
    assert reread["features_from_cache"] is True and reread["slice_search"]["image_properties"] is True
    assert reread["slices"] == slices
    # The page: the section, its side-bar entry, the exemplar strip.
    html = Path(planted["daylight"]).read_text(encoding="utf-8")
    assert 'href="#slices"' in html and 'id="slices"' in html and html.count('class="tile miss"') >= 1


def test_no_slice_without_a_failing_group(planted: dict[str, object]) -> None:
    data = load_json(planted["plain"])
    assert data["accuracy"] < 1.0  # the misfiled images are errors, but no group
    assert data["slices"] == [], data["slices"]
    assert "No group of images stands out" in Path(planted["plain"]).read_text(encoding="utf-8")


def test_compare_grades_each_slice_under_both_models(planted: dict[str, object], tmp_path: Path) -> None:
    dusk = set(planted["dusk"])
    fixed = load_json(planted["fixed"])
    assert all(p["pred"] == p["label"] for p in fixed["predictions"] if p["file"] in dusk)
    out = tmp_path / "diff.html"
    # The daylight model after the fixed one: its slice is a regression the gate catches.
    result = run_cli(
        "compare", planted["fixed"], planted["daylight"], "-o", out, "-q", "--no-cam",
        "--fail-on", "slice_accuracy_drop=0.5",
    )  # fmt: skip
    assert result.code == 3 and "slice_accuracy_drop" in result.err and "new audit's slice 1" in result.err
    diff = json.loads(out.with_suffix(".json").read_text())
    ours = [s for s in diff["slices"] if s["found_by"] == "new" and s["id"] == 1]
    assert len(ours) == 1
    members = set(load_json(planted["daylight"])["slices"][0]["files"])
    by_file = {p["file"]: p for p in fixed["predictions"]}
    assert ours[0]["size"] == len(members)
    assert ours[0]["old_accuracy"] == pytest.approx(
        np.mean([by_file[f]["pred"] == by_file[f]["label"] for f in members]), abs=1e-6
    )
    assert diff["gates"]["slice_accuracy_drop"]["value"] == pytest.approx(
        ours[0]["old_accuracy"] - ours[0]["new_accuracy"], abs=1e-6
    )
    assert 'id="slices"' in out.read_text(encoding="utf-8")
    # The other way round the slice is fixed: no drop, the gate passes.
    back = run_cli(
        "compare", planted["daylight"], planted["fixed"], "-o", out, "-q", "--no-cam",
        "--fail-on", "slice_accuracy_drop=0.05",
    )  # fmt: skip
    assert back.code == 0, back.err


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_errors_that_features_do_not_explain_make_no_slice(seed: int) -> None:
    """Errors drawn independently of the features: whatever the mixture gathers on the half
    it is fitted on must not pass the test on the other half."""
    rng = np.random.default_rng(seed)
    n = 2000
    truth = rng.integers(0, 4, n)
    features = rng.normal(size=(n, 40)) + np.eye(4, 40)[truth] * 3
    pred = np.where(rng.random(n) < 0.15, (truth + 1) % 4, truth)
    search = find_slices(
        [features, features[:, ::-1].copy()], ["a", "b"], truth, pred, list("wxyz"),
        files=[f"f{i}.png" for i in range(n)], image_stats=None, seed=seed,
    )  # fmt: skip
    assert search.slices == [], [s.description() for s in search.slices]
    # A group of class 2 set apart along one direction, where the model fails: found, and
    # only it.
    group = (truth == 2) & (rng.random(n) < 0.3)
    features[group, 10] += 8
    pred = np.where(group, 0, truth)
    pred = np.where(~group & (rng.random(n) < 0.05), (truth + 1) % 4, pred)
    search = find_slices(
        [features, features[:, ::-1].copy()], ["a", "b"], truth, pred, list("wxyz"),
        files=[f"f{i}.png" for i in range(n)], image_stats=None, seed=seed,
    )  # fmt: skip
    assert search.slices, "a planted region of errors must be found"
    top = set(search.slices[0].rows.tolist())
    planted_rows = set(np.flatnonzero(group).tolist())
    assert len(top & planted_rows) >= 0.8 * len(planted_rows) and len(top & planted_rows) >= 0.6 * len(top)


def test_what_the_sample_flags_is_supported_by_its_numbers(sample_audits: dict[str, Path], manifest: dict) -> None:
    """No false alarm on the sample: any slice it reports errs more on the images its fit
    never saw (at the corrected level), and its errors are mostly the planted defects."""
    data = load_json(sample_audits["onnx"])
    search = data["slice_search"]
    assert search["image_properties"] is True and len(search["layers"]) == 2
    planted = {m["file"] for m in manifest["mislabeled"]} | set(manifest["cue_missing"]) | set(manifest["cue_on_other"])
    predictions = {p["file"]: p for p in data["predictions"]}
    for s in data["slices"]:
        assert s["held_out"]["p_value"] < 0.05 / search["tested"]
        assert s["held_out"]["accuracy"] < data["accuracy"] and s["size"] >= search["min_size"]
        wrong = [f for f in s["files"] if predictions[f]["pred"] != predictions[f]["label"]]
        assert len(wrong) == s["errors"] and len(set(wrong) & planted) >= 0.5 * len(wrong), wrong


def test_picture_properties_and_file_facts(tmp_path: Path) -> None:
    from reportgen.data import Preprocess, open_image_facts, resize_for_model
    from reportgen.image_stats import PROPERTIES, image_stats

    # A 40 x 30 JPEG stored sideways (EXIF orientation 6: shown 30 wide, 40 tall).
    exif = Image.Exif()
    exif[0x0112] = 6
    Image.new("RGB", (40, 30), (200, 40, 40)).save(tmp_path / "turned.jpg", exif=exif.tobytes(), quality=95)
    half = np.zeros((16, 16, 3), np.uint8)
    half[:, 8:] = 255  # a hard edge: half black, half white
    Image.fromarray(half).save(tmp_path / "edge.png")
    _, _, facts = open_image_facts(tmp_path / "turned.jpg")
    assert (facts.width, facts.height, facts.exif) == (30, 40, True)
    img, _, facts = open_image_facts(tmp_path / "edge.png")
    assert (facts.width, facts.height, facts.exif) == (16, 16, False)
    stats = dict(
        zip(PROPERTIES, image_stats(np.asarray(resize_for_model(img, Preprocess((16, 16)))), facts), strict=True)
    )
    luma = half.astype(np.float64) @ [0.299, 0.587, 0.114] / 255
    assert stats["brightness"] == pytest.approx(luma.mean(), abs=1e-5)
    assert stats["contrast"] == pytest.approx(luma.std(), abs=1e-5)
    assert stats["colourfulness"] == pytest.approx(0.0, abs=1e-6)  # grey levels only
    # The Laplacian is 1 on the two columns beside the edge, 0 elsewhere (interior 14 x 14).
    assert stats["sharpness"] == pytest.approx(2 / 14, abs=1e-5)
    assert (stats["width"], stats["height"], stats["exif"]) == (16, 16, 0)
