"""A hostile image folder, generated on the fly (no binary blobs in the repository).

``build_corpus(root)`` writes the folder and returns what an audit must make of it:
the files that must be decoded (with the colour a viewer shows at the image's centre,
and for the EXIF case the colour at the top and bottom), the files that must be listed
as skipped (with a word the reason must contain), and the noise that must be passed
over without a word.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

EVIL_CLASS = "<img src=x onerror=alert(1)>"


@dataclass
class Corpus:
    root: Path
    decoded: dict[str, tuple[int, int, int]] = field(default_factory=dict)  # file -> centre colour
    rotated: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)  # file -> word in the reason
    noise: list[str] = field(default_factory=list)
    empty_classes: list[str] = field(default_factory=list)


def _save(img: Image.Image, path: Path, **kw: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    img.save(path, **kw)


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims ``width`` x ``height`` pixels, with a token IDAT."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _jpeg(color: tuple[int, int, int], size: tuple[int, int] = (48, 48)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "JPEG", quality=95)
    return buf.getvalue()


def build_corpus(root: Path) -> Corpus:
    c = Corpus(root)
    solid = root / "solid"
    # Plain formats.
    for name, fmt, color in (
        ("rgb.png", "PNG", (200, 30, 30)),
        ("UPPER.JPEG", "JPEG", (30, 160, 60)),
        ("img.webp", "WEBP", (40, 60, 220)),
        ("img.bmp", "BMP", (250, 200, 0)),
        ("img.tif", "TIFF", (120, 0, 120)),
    ):
        _save(
            Image.new("RGB", (48, 40), color),
            solid / name,
            format=fmt,
            **({"quality": 95} if fmt == "JPEG" else {"lossless": True} if fmt == "WEBP" else {}),
        )
        c.decoded[f"solid/{name}"] = color
    # Modes.
    modes = root / "modes"
    _save(Image.new("CMYK", (48, 48), (255, 0, 0, 0)), modes / "cmyk.jpg", quality=100)
    c.decoded["modes/cmyk.jpg"] = (0, 255, 255)
    Image.fromarray(np.full((40, 40), 32896, np.uint16)).save(_touch(modes / "gray16.png"))
    c.decoded["modes/gray16.png"] = (128, 128, 128)
    pal = Image.new("P", (40, 40), 1)
    pal.putpalette([0, 0, 0, 0, 200, 0] + [0] * 762)
    pal.paste(0, (0, 0, 40, 10))  # a transparent band along the top
    pal.save(_touch(modes / "palette_transparent.png"), transparency=0)
    c.decoded["modes/palette_transparent.png"] = (0, 200, 0)
    rgba = np.zeros((40, 40, 4), np.uint8)
    rgba[:] = (255, 0, 0, 255)
    rgba[:, :8] = (0, 0, 0, 0)  # transparent stripe: white once composited
    Image.fromarray(rgba, "RGBA").save(_touch(modes / "rgba.png"))
    c.decoded["modes/rgba.png"] = (255, 0, 0)
    _save(Image.new("LA", (40, 40), (90, 255)), modes / "la.png")
    c.decoded["modes/la.png"] = (90, 90, 90)
    _save(Image.new("RGB", (1, 1), (10, 200, 10)), modes / "one pixel.png")
    c.decoded["modes/one pixel.png"] = (10, 200, 10)
    _save(Image.new("RGB", (1200, 3), (20, 20, 240)), modes / "elongated.png")
    c.decoded["modes/elongated.png"] = (20, 20, 240)
    frames = [Image.new("RGB", (32, 32), col) for col in ((230, 20, 20), (20, 230, 20))]
    frames[0].save(_touch(modes / "animated.gif"), save_all=True, append_images=frames[1:], duration=100)
    c.decoded["modes/animated.gif"] = (230, 20, 20)
    # EXIF orientation 6: stored 60x30 (left red, right blue), shown 30x60 (top red).
    img = Image.new("RGB", (60, 30), (0, 0, 255))
    img.paste((255, 0, 0), (0, 0, 30, 30))
    exif = Image.Exif()
    exif[0x0112] = 6
    img.save(_touch(modes / "exif_rotated.jpg"), exif=exif, quality=95)
    c.rotated["modes/exif_rotated.jpg"] = ((255, 0, 0), (0, 0, 255))
    c.decoded["modes/exif_rotated.jpg"] = (128, 0, 128)  # centre straddles the seam
    # Names.
    names = root / "names"
    for name, color in (
        ("café résumé ☃.png", (255, 128, 0)),
        ("file with  spaces.png", (0, 128, 255)),
        ("<script>alert(1)<!script>.png", (60, 60, 60)),
    ):
        _save(Image.new("RGB", (40, 40), color), names / name)
        c.decoded[f"names/{name}"] = color
    _save(Image.new("RGB", (40, 40), (250, 250, 250)), root / EVIL_CLASS / "only image.png")
    c.decoded[f"{EVIL_CLASS}/only image.png"] = (250, 250, 250)
    (root / "empty class").mkdir()
    c.empty_classes.append("empty class")
    # Noise: hidden files, non-image names.
    _save(Image.new("RGB", (8, 8)), solid / ".hidden.png")
    (solid / ".DS_Store").write_bytes(b"\0\0\0\1Bud1")
    (names / "notes.txt").write_text("not an image")
    (root / ".cache").mkdir()
    _save(Image.new("RGB", (8, 8)), root / ".cache" / "thumb.png")
    c.noise += ["solid/.hidden.png", "solid/.DS_Store", "names/notes.txt", ".cache/thumb.png"]
    # Broken files.
    broken = root / "broken"
    broken.mkdir()
    (broken / "zero.jpg").write_bytes(b"")
    c.skipped["broken/zero.jpg"] = "empty"
    (broken / "truncated.jpg").write_bytes(_jpeg((90, 90, 90), (64, 64))[:350])
    c.skipped["broken/truncated.jpg"] = "truncated"
    png = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(png, "PNG")
    (broken / "truncated.png").write_bytes(png.getvalue()[:300])
    c.skipped["broken/truncated.png"] = "truncated"
    (broken / "text.jpg").write_text("hello, I am text\n")
    c.skipped["broken/text.jpg"] = "not a recognised image"
    (broken / "page.png").write_text("<!DOCTYPE html><html><body><script>alert(4)</script></body></html>")
    c.skipped["broken/page.png"] = "not a recognised image"
    os.symlink(root / "nowhere.png", broken / "dangling.png")
    c.skipped["broken/dangling.png"] = "symbolic link"
    (broken / "bomb.png").write_bytes(_png_header_only(30000, 30000))
    c.skipped["broken/bomb.png"] = "decompression-bomb"
    return c


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    return path
