"""Possible shortcuts: the grid statistics against direct computations, the sample's
corner mark found with nothing else flagged, and a model built by hand with and without
a cue: the cue found where it is, nothing flagged where there is none."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLE, load_json, run_cli
from PIL import Image, ImageDraw
from pixel_models import pixel_detectors, traced

from reportgen.analyses.shortcuts import (
    GRID,
    cell_box,
    cell_shares,
    class_evidence,
    describe_cell,
    occlusion_verdict,
    random_cells,
)


def blob(size: int, cy: float, cx: float, sigma: float = 3.0) -> np.ndarray:
    y, x = np.mgrid[0:size, 0:size]
    return np.exp(-((y - cy) ** 2 + (x - cx) ** 2) / (2 * sigma**2))


def test_cell_shares_sum_each_cell() -> None:
    rng = np.random.default_rng(0)
    maps = rng.random((5, 30, 26))
    maps[2] = 0
    shares = cell_shares(maps, 4)
    ys, xs = np.round(np.linspace(0, 30, 5)).astype(int), np.round(np.linspace(0, 26, 5)).astype(int)
    for n in (0, 1, 3, 4):
        for r in range(4):
            for c in range(4):
                expected = maps[n, ys[r] : ys[r + 1], xs[c] : xs[c + 1]].sum() / maps[n].sum()
                assert shares[n, r, c] == pytest.approx(expected, rel=1e-12)
    assert np.all(shares[2] == 0)
    assert cell_box((1, 3), (30, 26), 4) == (xs[3], ys[1], xs[4], ys[2])


def test_describe_cell_names_corners_edges_and_centre() -> None:
    assert describe_cell((0, 0)) == "top-left corner" and describe_cell((GRID - 1, GRID - 1)) == "bottom-right corner"
    assert describe_cell((0, 1)) == "top edge" and describe_cell((2, GRID - 1)) == "right edge"
    assert describe_cell((1, 2)) == "centre"


def test_a_class_with_a_fixed_spot_is_the_only_candidate() -> None:
    rng = np.random.default_rng(1)
    size = 64
    shares = {}
    # Class 0: evidence always in the top-left cell; classes 1-3: wherever their object is.
    shares[0] = cell_shares(np.stack([blob(size, *rng.uniform(4, 12, 2)) for _ in range(20)]))
    for c in (1, 2, 3):
        shares[c] = cell_shares(np.stack([blob(size, *rng.uniform(8, 56, 2)) for _ in range(20)]))
    evidence = {e.cls: e for e in class_evidence(shares)}
    assert evidence[0].candidate and evidence[0].peak == (0, 0)
    assert evidence[0].consistency == 1.0 and evidence[0].specificity > 5
    assert not any(evidence[c].candidate for c in (1, 2, 3))
    # Evidence in the same spot for every class is the framing, not a class's shortcut.
    centred = {
        c: cell_shares(np.stack([blob(size, 30 + rng.normal(), 30 + rng.normal()) for _ in range(10)]))
        for c in range(3)
    }
    assert not any(e.candidate for e in class_evidence(centred))
    # Too few maps to judge.
    assert not class_evidence({0: shares[0][:3], 1: shares[1]})[0].candidate


def test_occlusion_verdict_and_random_cells() -> None:
    before = np.full(10, 0.9)
    drop, other, flagged = occlusion_verdict(before, np.full(10, 0.3), np.full((10, 3), 0.85))
    assert drop == pytest.approx(0.6) and other == pytest.approx(0.05) and flagged
    # Covering any spot costs as much: no particular spot.
    assert not occlusion_verdict(before, np.full(10, 0.3), np.full((10, 3), 0.5))[2]
    # A small drop is no shortcut however it compares.
    assert not occlusion_verdict(before, np.full(10, 0.8), np.full((10, 3), 0.9))[2]
    cells = random_cells((0, 0), np.random.default_rng(0))
    assert len(set(cells)) == 3 and (0, 0) not in cells


def test_the_sample_triangle_corner_is_flagged_and_nothing_else(sample_audits, manifest) -> None:
    cue = manifest["spurious_cue"]
    for fmt in ("onnx", "torchscript"):
        data = load_json(sample_audits[fmt])
        assert [s["class"] for s in data["shortcuts"]] == [cue["class"]], fmt
        s = data["shortcuts"][0]
        x0, y0, x1, y1 = s["box"]
        cx0, cy0, cx1, cy1 = cue["box"]
        assert x0 <= cx0 and y0 <= cy0 and x1 > cx1 and y1 > cy1  # the cell holds the mark
        assert s["where"] == "top-left corner" and s["cell"] == [0, 0]
        assert s["consistency"] >= 0.5 and s["occlusion_drop"] >= 0.2
        assert s["occlusion_drop"] >= 2 * s["random_occlusion_drop"]
        assert data["shortcut_settings"]["classes_checked"] == len(manifest["classes"])
        html = sample_audits[fmt].read_text(encoding="utf-8")
        assert 'id="shortcuts"' in html and 'href="#shortcuts"' in html


# ----------------------------------------------------------------- a model built by hand

COLOURS = [(220, 30, 30), (30, 200, 30), (30, 30, 220)]  # class 0 red, 1 green, 2 blue discs
MARK = (255, 0, 255)


def colour_model(cue: bool):
    """One colour detector per class, so the evidence lies wherever the class's colour is.
    With ``cue``, class 0's detector sees only magenta (the mark its images carry in the
    top-left corner), not red."""
    weights = [(1.0, -0.5, -0.5), (-0.5, 1.0, -0.5), (-0.5, -0.5, 1.0)]
    biases = [-0.3, -0.3, -0.3]
    if cue:
        weights[0], biases[0] = (0.5, -1.0, 0.5), -0.6
    return pixel_detectors(weights, biases)


def colour_images(root: Path, cue: bool, per_class: int = 30, size: int = 32) -> None:
    rng = np.random.default_rng(7)
    for c, colour in enumerate(COLOURS):
        folder = root / f"c{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            img = Image.new("RGB", (size, size), (128, 128, 128))
            draw = ImageDraw.Draw(img)
            cx, cy = rng.uniform(6, size - 6, 2)
            draw.ellipse((cx - 5, cy - 5, cx + 5, cy + 5), fill=colour)
            if cue and c == 0:
                draw.rectangle((1, 1, 7, 7), fill=MARK)  # 7x7 px, inside the top-left 8x8 cell
            img.save(folder / f"{i:03d}.png")


@pytest.mark.parametrize("cue", [True, False])
def test_a_hand_built_cue_is_found_and_its_absence_too(tmp_path: Path, cue: bool) -> None:
    model = traced(colour_model(cue))
    model.save(str(tmp_path / "model.ts"))
    colour_images(tmp_path / "images", cue)
    out = tmp_path / "out" / "r.html"
    result = run_cli(
        "audit", tmp_path / "model.ts", tmp_path / "images", "-o", out, "-q", "--no-tsne", "--no-cache",
        "--mean", "0", "--std", "1", "--size", "32", "--device", "cpu",
    )  # fmt: skip
    assert result.code == 0, result.err
    data = load_json(out)
    assert data["accuracy"] == 1.0
    assert data["shortcut_settings"]["classes_checked"] == 3
    if cue:
        assert [s["class"] for s in data["shortcuts"]] == ["c0"]
        s = data["shortcuts"][0]
        assert s["cell"] == [0, 0] and s["consistency"] == 1.0
        # A swapped random cell may bring in a piece of another class's disc: a little cost.
        assert s["occlusion_drop"] > 0.5 and s["random_occlusion_drop"] < 0.15
    else:
        assert data["shortcuts"] == []
        assert 'id="shortcuts"' not in out.read_text(encoding="utf-8")


def test_shortcut_images_zero_turns_it_off(tmp_path: Path) -> None:
    out = tmp_path / "r.html"
    result = run_cli(
        "audit", SAMPLE / "model.onnx", SAMPLE / "images", "-o", out, "-q", "--no-tsne", "--no-cache",
        "--shortcut-images", "0",
    )  # fmt: skip
    assert result.code == 0, result.err
    assert "shortcuts" not in load_json(out)


# ------------------------------------------------- a mark the model relies on, any background

BACKGROUNDS = {
    # background, the mark, class 0's disc, class 1's, class 2's (RGB in [0, 1])
    "dark": ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0), (0.5, 0.05, 0.05), (0.05, 0.35, 0.05), (0.05, 0.05, 0.6)),
    "light": ((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (0.9, 0.3, 0.3), (0.2, 0.8, 0.2), (0.3, 0.3, 1.0)),
}


def mark_model(background: str):
    """Class 0 is scored by a detector of the mark alone: on a dark background, anything
    bright (luminance above 0.3: a mid-grey patch counts, as it does for a CNN that learned
    "a bright spot in the corner"); on a light one, anything dark (below 0.3).  Classes 1 and
    2 by colour detectors.  Without its mark, a class 0 image scores 0 everywhere (1/3)."""
    luma = (0.299, 0.587, 0.114)
    sign = 1.0 if background == "dark" else -1.0
    weights = [tuple(sign * v for v in luma), (-0.5, 1.0, -0.5), (-0.5, -0.5, 1.0)]
    biases = [-0.3, -0.1, -0.1] if background == "dark" else [0.3, -0.2, -0.2]
    return traced(pixel_detectors(weights, biases))


def mark_images(root: Path, background: str, per_class: int = 30, size: int = 32) -> None:
    bg, mark, *discs = (tuple(round(255 * v) for v in c) for c in BACKGROUNDS[background])
    rng = np.random.default_rng(3)
    for c, colour in enumerate(discs):
        folder = root / f"c{c}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            img = Image.new("RGB", (size, size), bg)
            draw = ImageDraw.Draw(img)
            cx, cy = rng.uniform(12, size - 7, 2)
            draw.ellipse((cx - 5, cy - 5, cx + 5, cy + 5), fill=colour)
            if c == 0:
                draw.rectangle((1, 1, 7, 7), fill=mark)  # inside the top-left 8x8 cell
            img.save(folder / f"{i:03d}.png")


@pytest.mark.parametrize("background", ["dark", "light"])
def test_a_mark_is_found_on_a_dark_and_on_a_light_background(tmp_path: Path, background: str) -> None:
    """A grey patch over the corner of a black picture is itself a bright mark there (the
    detector fires on it); a black one over a white picture is a dark mark.  Occluding with
    what other classes' images hold in that cell removes the mark on either background."""
    mark_model(background).save(str(tmp_path / "model.ts"))
    mark_images(tmp_path / "images", background)
    out = tmp_path / "out" / "r.html"
    result = run_cli(
        "audit", tmp_path / "model.ts", tmp_path / "images", "-o", out, "-q", "--no-tsne", "--no-cache",
        "--mean", "0", "--std", "1", "--size", "32", "--device", "cpu", "--gallery-size", "0", "--faithfulness-images", "0", "--channels", "0",
    )  # fmt: skip
    assert result.code == 0, result.err
    data = load_json(out)
    assert data["accuracy"] == 1.0
    assert [s["class"] for s in data["shortcuts"]] == ["c0"], data["shortcut_settings"]
    s = data["shortcuts"][0]
    # Without its mark a class 0 image scores 1/3; a swapped random cell may bring in a piece
    # of another class's disc, which costs a little.
    assert s["cell"] == [0, 0] and s["occlusion_drop"] > 0.5 and s["random_occlusion_drop"] < 0.15
    assert data["shortcut_settings"]["occlusion"] == "swap"
