"""The loader: discovery, labels, decoding of every mode, broken files, preprocessing."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
from conftest import jpeg_bytes, make_image
from PIL import Image

from reportgen.data import (
    DecodeError,
    Preprocess,
    discover,
    iter_batches,
    open_image,
    resize_for_model,
    to_tensor,
)
from reportgen.errors import UserError


def test_labeled_layout_nested_hidden_and_noise(tmp_path: Path) -> None:
    make_image(tmp_path / "b_cls" / "x.png")
    make_image(tmp_path / "a_cls" / "deep" / "deeper" / "y.JPG", fmt="JPEG")
    make_image(tmp_path / "a_cls" / ".hidden.png")
    (tmp_path / "a_cls" / "notes.txt").write_text("not an image")
    (tmp_path / "a_cls" / ".DS_Store").write_bytes(b"\0\0")
    (tmp_path / ".git").mkdir()
    make_image(tmp_path / ".git" / "z.png")
    (tmp_path / "empty_cls").mkdir()
    ds = discover(tmp_path)
    assert ds.labeled
    assert ds.folder_classes == ["a_cls", "b_cls", "empty_cls"]
    assert [(r.file, r.folder_class) for r in ds.records] == [("a_cls/deep/deeper/y.JPG", 0), ("b_cls/x.png", 1)]
    assert ds.skipped == []


def test_flat_layout_is_unlabeled(tmp_path: Path) -> None:
    make_image(tmp_path / "one.png")
    make_image(tmp_path / "two.webp", fmt="WEBP")
    ds = discover(tmp_path)
    assert not ds.labeled
    assert ds.folder_classes == []
    assert [r.folder_class for r in ds.records] == [-1, -1]


def test_loose_file_beside_class_folders_is_reported(tmp_path: Path) -> None:
    make_image(tmp_path / "cls" / "a.png")
    make_image(tmp_path / "stray.png")
    ds = discover(tmp_path)
    assert [s.file for s in ds.skipped] == ["stray.png"]
    assert "outside any class folder" in ds.skipped[0].reason


def test_dangling_symlink_is_skipped_with_reason(tmp_path: Path) -> None:
    make_image(tmp_path / "cls" / "a.png")
    os.symlink(tmp_path / "nowhere.png", tmp_path / "cls" / "link.png")
    ds = discover(tmp_path)
    assert [s.file for s in ds.skipped] == ["cls/link.png"]
    assert "symbolic link" in ds.skipped[0].reason


def test_missing_or_empty_folder_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="not found"):
        discover(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no image files"):
        discover(tmp_path / "empty")


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b"", "empty file"),
        (b"<html><script>alert(1)</script></html>", "not a recognised image"),
        (jpeg_bytes()[:300], "truncated"),
    ],
)
def test_broken_files_have_readable_reasons(tmp_path: Path, content: bytes, reason: str) -> None:
    path = tmp_path / "bad.jpg"
    path.write_bytes(content)
    with pytest.raises(DecodeError, match=reason):
        open_image(path)


def test_modes_are_converted_to_the_colours_a_viewer_shows(tmp_path: Path) -> None:
    # CMYK: pure cyan ink is RGB (0, 255, 255).
    cmyk = make_image(tmp_path / "cmyk.jpg", mode="CMYK", color=(255, 0, 0, 0), fmt="JPEG", quality=100)
    assert np.allclose(np.asarray(open_image(cmyk)[0]).reshape(-1, 3).mean(0), (0, 255, 255), atol=3)
    # 16-bit gray: 65535 is white and 32896 mid-gray, not clipped to white.
    arr16 = np.full((10, 12), 32896, np.uint16)
    path16 = tmp_path / "g16.png"
    Image.fromarray(arr16).save(path16)
    assert Image.open(path16).mode.startswith("I")
    assert np.allclose(np.asarray(open_image(path16)[0]), 128, atol=1)
    # Fully transparent pixels become white (composited over white); opaque keep colour.
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[:2] = (255, 0, 0, 255)
    path_rgba = tmp_path / "rgba.png"
    Image.fromarray(rgba, "RGBA").save(path_rgba)
    out = np.asarray(open_image(path_rgba)[0])
    assert (out[:2] == (255, 0, 0)).all() and (out[2:] == 255).all()
    # LA (gray with alpha) and palette with a transparent index.
    la = make_image(tmp_path / "la.png", mode="LA", color=(0, 0))
    assert (np.asarray(open_image(la)[0]) == 255).all()
    pal = Image.new("P", (4, 4), 1)
    pal.putpalette([0, 0, 0, 0, 255, 0] + [0] * 762)
    pal.info["transparency"] = 0
    pal.save(tmp_path / "pal.png", transparency=0)
    assert (np.asarray(open_image(tmp_path / "pal.png")[0]) == (0, 255, 0)).all()


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    # 40 wide x 20 high, stored with orientation 6 (rotate 90° clockwise to display).
    img = Image.new("RGB", (40, 20), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 20, 20))  # left half red
    exif = Image.Exif()
    exif[0x0112] = 6
    path = tmp_path / "rot.jpg"
    img.save(path, exif=exif, quality=100)
    shown = open_image(path)[0]
    assert shown.size == (20, 40)
    arr = np.asarray(shown).astype(int)
    assert arr[5, 10, 0] > 200 and arr[35, 10, 2] > 200  # red on top after rotation


def test_first_frame_of_animated_gif(tmp_path: Path) -> None:
    frames = [Image.new("RGB", (8, 8), c) for c in ((255, 0, 0), (0, 255, 0))]
    frames[0].save(tmp_path / "anim.gif", save_all=True, append_images=frames[1:])
    arr = np.asarray(open_image(tmp_path / "anim.gif")[0])
    assert arr[..., 0].mean() > 200 and arr[..., 1].mean() < 50


def test_decompression_bomb_is_skipped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = make_image(tmp_path / "big.png", size=(200, 200))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)
    with pytest.raises(DecodeError, match="decompression-bomb"):
        open_image(path)


def test_preprocess_stretch_and_crop() -> None:
    img = Image.new("RGB", (100, 50), (255, 0, 0))
    img.paste((0, 0, 255), (0, 0, 10, 50))  # a blue strip on the left
    stretch = resize_for_model(img, Preprocess((32, 32)))
    assert stretch.size == (32, 32) and np.asarray(stretch)[16, 0, 2] > 200  # strip kept
    crop = resize_for_model(img, Preprocess((32, 32), resize="crop"))
    assert crop.size == (32, 32) and np.asarray(crop)[:, 0, 2].max() < 50  # strip cut off
    pre = Preprocess((32, 32), mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    tensor = to_tensor(stretch, pre)
    assert tensor.shape == (3, 32, 32) and tensor.dtype == np.float32
    assert np.isclose(tensor[0, 16, 20], (1.0 - 0.5) / 0.25)  # red channel of a red pixel


def test_grayscale_model_input(tmp_path: Path) -> None:
    path = make_image(tmp_path / "c.png", color=(255, 0, 0))
    img = open_image(path, channels=1)[0]
    assert img.mode == "L"
    assert np.allclose(np.asarray(img), 76, atol=1)  # ITU-R 601 luma of pure red


@pytest.mark.parametrize("processes", [False, True], ids=["threads", "processes"])
@pytest.mark.parametrize("prefetch", [0, 2])
def test_iter_batches_keeps_order_and_reports_failures(tmp_path: Path, processes: bool, prefetch: int) -> None:
    for i in range(7):
        make_image(tmp_path / "cls" / f"{i:02d}.png", color=(i * 30, 0, 0))
    (tmp_path / "cls" / "03.png").write_bytes(b"")
    ds = discover(tmp_path)
    pre = Preprocess((8, 8), mean=(0, 0, 0), std=(1, 1, 1))
    batches = list(iter_batches(ds, pre, batch_size=3, workers=2, prefetch=prefetch, processes=processes))
    decoded = [i for b in batches for i in b.indices]
    assert decoded == [0, 1, 2, 4, 5, 6]
    assert [f for b in batches for f, _ in b.failures] == [3]
    assert [b.sha256 for b in batches] == [[open_image(ds.path(ds.records[i]))[1] for i in b.indices] for b in batches]
    red = np.concatenate([b.pixels for b in batches])[:, 0, 0, 0]
    assert np.allclose(red * 255, [0, 30, 60, 120, 150, 180], atol=0.5)
