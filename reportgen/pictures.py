"""Every picture a report shows, made from the numbers in an :class:`AuditResult`: the
charts (``figures.py`` draws them), thumbnails, CAM overlays and the explorer's sprite
sheets.  The pipeline calls :func:`build_figures` once the sections are built; rendering
(``render.py``) only places what it returns.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import numpy as np

from reportgen import figures as plots
from reportgen.overlay import blend_uri, overlay_thumbnail
from reportgen.report import AuditResult, Figures
from reportgen.thumbs import sprite_sheets, sprite_side, thumbnails
from reportgen.util import data_uri


def build_figures(
    result: AuditResult,
    root: Path,
    reference_root: Path | None = None,
    bar: Callable[[str, int, str], Any] | None = None,
) -> Figures:
    """Every picture the HTML shows, from the numbers in ``result``; ``bar`` (description,
    total, unit -> a tqdm-like bar) reports progress over the pictures."""
    sections = result.sections
    wanted: set[str] = set()
    for section in (sections.knn, sections.suspects, sections.galleries, sections.channels, sections.units):
        if section is not None:
            wanted |= section.thumb_keys()
    pictures = sorted(sections.units.pictures.items()) if sections.units is not None else []
    overlays = [
        (k, m)
        for section in (sections.galleries, sections.channels)
        if section is not None
        for k, m in sorted(section.maps.items())
    ]
    tsne = sections.tsne
    explorer = sections.explorer
    points = len(explorer.files) if explorer is not None else 0
    total = 3 + (2 if tsne is not None else 0) + len(wanted) + len(pictures) + len(overlays) + points
    progress = bar("figures", total, "pic") if bar is not None else nullcontext(_NoBar())
    with progress as tick:
        figs = _charts(result, tick)
        figs.thumbs = thumbnails(wanted, root, reference_root, on_each=tick.update)
        for key, picture in pictures:
            figs.thumbs[key] = picture_uri(picture)
            tick.update()
        resize = str(result.preprocessing.get("resize", "stretch"))
        for key, cam in overlays:
            file = key.split(":", 2)[2]
            figs.thumbs[key] = overlay_thumbnail(root / file, cam, resize)
            tick.update()
        blends = sections.shortcuts.blends if sections.shortcuts is not None else {}
        for key, (picture, cam) in sorted(blends.items()):
            figs.thumbs[key] = blend_uri(picture, cam)
        if explorer is not None:
            paths = [root / f for f in explorer.files]
            figs.sprites = sprite_sheets(paths, sprite_side(len(paths)), on_each=tick.update)
    return figs


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass


def _charts(result: AuditResult, tick: Any) -> Figures:
    """The plots: confusion, balance, layer curves, t-SNE animation and grid."""
    figs = Figures()
    if result.metrics is not None:
        figs.images["confusion"] = plots.confusion_figure(result.metrics.confusion, result.classes)
    tick.update()
    figs.images["balance"] = plots.balance_figure(
        result.classes, result.balance.true_counts, result.balance.predicted_counts
    )
    tick.update()
    sections = result.sections
    if any(layer.knn_accuracy is not None or layer.tsne_trustworthiness is not None for layer in result.layers):
        series = {
            "kNN accuracy (leave-one-out)": [layer.knn_accuracy for layer in result.layers],
            "neighbour label agreement": [layer.knn_agreement for layer in result.layers],
            # Where a layer keeps a grid, what its global mean alone would score.
            "kNN accuracy, maps averaged to one vector": [
                layer.knn_accuracy if layer.knn_accuracy_global_mean is None else layer.knn_accuracy_global_mean
                for layer in result.layers
            ]
            if any(layer.knn_accuracy_global_mean is not None for layer in result.layers)
            else [None] * len(result.layers),
            "t-SNE trustworthiness": [layer.tsne_trustworthiness for layer in result.layers],
        }
        series = {k: v for k, v in series.items() if any(x is not None for x in v)}
        figs.images["layer_curve"] = plots.layer_curve_figure([layer.name for layer in result.layers], series, "score")
    tick.update()
    tsne = sections.tsne
    if tsne is not None:
        r = tsne.result
        embeddings = [r.embeddings.get(name) for name in r.layers]
        shape = {layer.name: layer for layer in result.layers}
        subtitles = []
        for name in r.layers:
            t = r.trustworthiness.get(name)
            dims = "x".join(str(v) for v in shape[name].shape) if name in shape else ""
            subtitles.append(
                f"{dims}" + (f" · trustworthiness {t:.3f}" if t is not None else f" · {r.notes.get(name, '')}")
            )
        k = len(tsne.class_names)
        gif, keys = plots.tsne_animation(r.layers, embeddings, subtitles, tsne.labels, tsne.misclassified, k)
        figs.images["tsne_gif"] = gif
        tick.update()
        figs.images["tsne_grid"] = plots.tsne_grid(r.layers, embeddings, subtitles, tsne.labels, tsne.misclassified, k)
        figs.meta["tsne_key_frames"] = keys
        tick.update()
    return figs


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
