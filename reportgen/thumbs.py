"""Thumbnails: small JPEG data URIs of the images a report shows, one per image, and the
explorer's sprite sheets (every point's thumbnail, tiled into a few WebP or JPEG sheets)."""

from __future__ import annotations

import io
import math
import os
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from PIL import Image

from reportgen.data import DecodeError, open_image
from reportgen.util import data_uri

A = TypeVar("A")
T = TypeVar("T")
THUMB = 96


def open_fitted(path: Path, side: int) -> Image.Image:
    """The image (as a viewer shows it) fitted inside ``side`` x ``side``; a grey square
    when it can no longer be decoded (changed on disk since extraction)."""
    try:
        img, _ = open_image(path, 3, draft=(side, side))
    except DecodeError:
        return placeholder(side)
    img.thumbnail((side, side), Image.Resampling.BILINEAR)
    return img


def placeholder(side: int = THUMB) -> Image.Image:
    """The grey square shown for an image that cannot (or may not) be read."""
    return Image.new("RGB", (side, side), (200, 200, 200))


def jpeg_uri(img: Image.Image) -> str:
    """A data URI of the image as a compact JPEG."""
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=82, optimize=True)
    return data_uri(buf.getvalue(), "image/jpeg")


def thumbnail_uri(path: Path, side: int = THUMB) -> str:
    return jpeg_uri(open_fitted(path, side))


def in_parallel(work: Callable[[A], T], items: list[A]) -> Iterator[T]:
    """``work`` of each item, in order, on threads: decoding and encoding in Pillow (and
    numpy's array work) let go of the GIL, and a report's thousands of thumbnails were a
    serial decode before."""
    with ThreadPoolExecutor(max_workers=min(16, os.cpu_count() or 1)) as pool:
        yield from pool.map(work, items)


def thumbnails(
    keys: set[str], audited_root: Path, reference_root: Path | None, on_each: Callable[[], object] | None = None
) -> dict[str, str]:
    """Data URIs for thumbnail keys ``a:<file>`` (audited folder) and ``r:<file>`` (reference)."""
    ordered = sorted(keys)
    paths = []
    for key in ordered:
        kind, _, rel = key.partition(":")
        root = reference_root if kind == "r" and reference_root is not None else audited_root
        paths.append(root / rel)
    out: dict[str, str] = {}
    for key, uri in zip(ordered, in_parallel(thumbnail_uri, paths), strict=True):
        out[key] = uri
        if on_each is not None:
            on_each()
    return out


# The explorer's thumbnails share one pixel budget: 10,000 points get 40 px tiles (about
# 2 MB as WebP for photographs), a few hundred get 96 px ones (the report's thumbnail size).
SPRITE_PIXELS = 16_000_000
SPRITE_SIDES = (24, THUMB)  # smallest tile that still shows what the image is; largest worth having
SHEET_SIDE = 4096  # px: every browser draws images this large
SPRITE_BACKGROUND = (236, 238, 241)


def sprite_side(n: int) -> int:
    """Tile side (even, in px) for ``n`` points under :data:`SPRITE_PIXELS`."""
    side = int(math.sqrt(SPRITE_PIXELS / max(n, 1)))
    lo, hi = SPRITE_SIDES
    return max(lo, min(hi, side - side % 2))


@dataclass
class SpriteSheets:
    """Tile ``i`` lies in sheet ``i // per_sheet``, at column ``j % columns`` and row
    ``j // columns`` of it (``j = i % per_sheet``); each tile is the image fitted inside
    ``side`` x ``side``, centred."""

    side: int
    columns: int
    per_sheet: int
    sheets: list[bytes]  # WebP or JPEG files
    mime: str = "image/webp"


def sprite_format() -> str:
    """WebP where Pillow can write it (half the bytes of JPEG at the same quality on
    photographs; every current browser shows it), else JPEG."""
    from PIL import features

    return "WEBP" if features.check("webp") else "JPEG"


def sprite_sheets(
    paths: list[Path], side: int, on_each: Callable[[], object] | None = None, quality: int = 75
) -> SpriteSheets:
    """The thumbnails of ``paths``, in order, tiled into sheets of at most
    :data:`SHEET_SIDE` px a side (a file that cannot be read gets the grey square)."""
    columns = max(1, SHEET_SIDE // side)
    per_sheet = columns * columns
    fmt = sprite_format()
    sheets = []
    for start in range(0, len(paths), per_sheet):
        chunk = paths[start : start + per_sheet]
        rows = math.ceil(len(chunk) / columns)
        sheet = Image.new("RGB", (min(len(chunk), columns) * side, rows * side), SPRITE_BACKGROUND)
        for j, tile in enumerate(in_parallel(lambda path: open_fitted(path, side).convert("RGB"), chunk)):
            x, y = (j % columns) * side, (j // columns) * side
            sheet.paste(tile, (x + (side - tile.width) // 2, y + (side - tile.height) // 2))
            if on_each is not None:
                on_each()
        buf = io.BytesIO()
        if fmt == "WEBP":
            sheet.save(buf, format="WEBP", quality=quality, method=4)
        else:
            sheet.save(buf, format="JPEG", quality=quality, optimize=True)
        sheets.append(buf.getvalue())
    return SpriteSheets(side, columns, per_sheet, sheets, "image/webp" if fmt == "WEBP" else "image/jpeg")
