"""Every picture a report shows, made from what its sections ask for
(``Section.pictures``): the charts (``figures.py`` draws them), thumbnails, CAM overlays,
synthesised inputs and the explorer's sprite sheets.  The pipeline calls
:func:`build_figures` once the sections are built; rendering (``render.py``) only
places what it returns.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from reportgen.overlay import blend_uri, overlay_thumbnail
from reportgen.report import AuditResult, Figures, PictureRequest
from reportgen.thumbs import in_parallel, sprite_sheets, sprite_side, thumbnails
from reportgen.util import data_uri


def build_figures(
    result: AuditResult,
    root: Path,
    reference_root: Path | None = None,
    bar: Callable[[str, int, str], Any] | None = None,
) -> Figures:
    """Every picture the HTML shows, as the built sections ask for them (in report
    order); ``bar`` (description, total, unit -> a tqdm-like bar) reports progress."""
    wanted = PictureRequest()
    for built in result.sections:
        if built.content is None:
            continue
        asked = built.section.pictures(built.content)
        wanted.charts.update(asked.charts)
        wanted.thumbs |= asked.thumbs
        wanted.overlays.update(asked.overlays)
        wanted.pictures.update(asked.pictures)
        wanted.blends.update(asked.blends)
        wanted.sprites += asked.sprites
    total = (
        len(wanted.charts)
        + len(wanted.thumbs)
        + len(wanted.pictures)
        + len(wanted.overlays)
        + len(wanted.blends)
        + len(wanted.sprites)
    )
    progress = bar("figures", total, "pic") if bar is not None else nullcontext(_NoBar())
    figs = Figures()
    with progress as tick:
        for name, draw in wanted.charts.items():
            figs.images[name] = draw()
            tick.update()
        figs.thumbs = thumbnails(wanted.thumbs, root, reference_root, on_each=tick.update)
        for key, picture in sorted(wanted.pictures.items()):
            figs.thumbs[key] = picture_uri(picture)
            tick.update()
        resize = str(result.preprocessing.get("resize", "stretch"))
        overlays = sorted(wanted.overlays.items())
        made = in_parallel(lambda item: overlay_thumbnail(root / item[0].split(":", 2)[2], item[1], resize), overlays)
        for (key, _), uri in zip(overlays, made, strict=True):
            figs.thumbs[key] = uri
            tick.update()
        for key, (picture, cam) in sorted(wanted.blends.items()):
            figs.thumbs[key] = blend_uri(picture, cam)
            tick.update()
        if wanted.sprites:
            paths = [root / f for f in wanted.sprites]
            figs.sprites = sprite_sheets(paths, sprite_side(len(paths)), on_each=tick.update)
    return figs


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass


def picture_png(picture: np.ndarray, side: int | None = 128) -> bytes:
    """A [0, 1] image (H, W, C) as PNG; with ``side``, enlarged with square pixels (or
    shrunk) to about that size, else at its own size."""
    from io import BytesIO

    from PIL import Image

    arr = np.clip(np.rint(picture * 255), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr)
    if side is not None:
        factor = side // max(img.size)
        if factor > 1:
            img = img.resize((img.width * factor, img.height * factor), Image.Resampling.NEAREST)
        elif max(img.size) > side:
            img.thumbnail((side, side), Image.Resampling.BILINEAR)
    buf = BytesIO()
    img.save(buf, format="PNG", optimize=True)
    return buf.getvalue()


def picture_uri(picture: np.ndarray, side: int = 128) -> str:
    return data_uri(picture_png(picture, side), "image/png")
