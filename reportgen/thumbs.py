"""Thumbnails: small JPEG data URIs of the images a report shows, one per image."""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path

from PIL import Image

from reportgen.data import DecodeError, open_image
from reportgen.util import data_uri

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


def thumbnails(
    keys: set[str], audited_root: Path, reference_root: Path | None, on_each: Callable[[], object] | None = None
) -> dict[str, str]:
    """Data URIs for thumbnail keys ``a:<file>`` (audited folder) and ``r:<file>`` (reference)."""
    out: dict[str, str] = {}
    for key in sorted(keys):
        kind, _, rel = key.partition(":")
        root = reference_root if kind == "r" and reference_root is not None else audited_root
        out[key] = thumbnail_uri(root / rel)
        if on_each is not None:
            on_each()
    return out
