"""Heat-map overlays: a class activation map laid over the image it explains.

The map covers the model's input, which is the whole image stretched (``--resize
stretch``) or its centre crop (``crop``); it is mapped back onto the image as shown, so
the overlay lines up with the plain thumbnail beside it.
"""

from __future__ import annotations

from pathlib import Path

import matplotlib
import numpy as np
from PIL import Image

from reportgen.analyses.cam import resize_bilinear
from reportgen.data import crop_geometry
from reportgen.thumbs import THUMB, jpeg_uri, open_fitted

_JET = (matplotlib.colormaps["jet"](np.linspace(0, 1, 256))[:, :3] * 255).astype(np.uint8)


def map_onto_image(cam: np.ndarray, width: int, height: int, resize: str) -> np.ndarray:
    """The (H, W) input-resolution map as a (height, width) map over the displayed image;
    NaN where the model did not look (outside a centre crop)."""
    if resize != "crop":
        return resize_bilinear(cam[None], (height, width))[0]
    in_h, in_w = cam.shape
    new_w, new_h, left, top = crop_geometry(width, height, (in_h, in_w))
    x0, y0 = left * width / new_w, top * height / new_h
    box_w, box_h = in_w * width / new_w, in_h * height / new_h
    out = np.full((height, width), np.nan, np.float32)
    xa, ya = round(x0), round(y0)
    bw, bh = max(1, round(box_w)), max(1, round(box_h))
    patch = resize_bilinear(cam[None], (bh, bw))[0]
    out[ya : ya + bh, xa : xa + bw] = patch[: max(0, height - ya), : max(0, width - xa)]
    return out


def overlay(img: Image.Image, cam: np.ndarray, resize: str, image_weight: float = 0.5) -> Image.Image:
    """``image_weight`` x image + (1 - image_weight) x jet(map), as pytorch-grad-cam's
    ``show_cam_on_image``; outside the model's view the image is dimmed instead."""
    rgb = np.asarray(img.convert("RGB"), np.float32)
    m = map_onto_image(cam, img.width, img.height, resize)
    outside = np.isnan(m)
    heat = _JET[np.clip(np.nan_to_num(m) * 255, 0, 255).astype(np.uint8)].astype(np.float32)
    out = image_weight * rgb + (1 - image_weight) * heat
    out[outside] = rgb[outside] * 0.35
    return Image.fromarray(np.clip(out, 0, 255).astype(np.uint8), "RGB")


def overlay_thumbnail(path: Path, cam: np.ndarray, resize: str, side: int = THUMB) -> str:
    """Data URI of the overlay of ``cam`` on the image at ``path``, fitted in ``side``."""
    # Drawn at twice the size and then shrunk, so the heat map's edges stay smooth.
    pic = overlay(open_fitted(path, 2 * side), cam, resize)
    pic.thumbnail((side, side), Image.Resampling.BILINEAR)
    return jpeg_uri(pic)


def blend_uri(picture: np.ndarray, cam: np.ndarray, side: int = 160) -> str:
    """Data URI of ``cam`` laid over a [0, 1] (H, W, C) model-input picture, enlarged to
    about ``side`` px (the picture and the map cover the same input, so nothing is resized
    relative to the other)."""
    arr = np.clip(np.rint(picture * 255), 0, 255).astype(np.uint8)
    img = Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).convert("RGB")
    factor = max(1, side // max(img.size))
    img = img.resize((img.width * factor, img.height * factor), Image.Resampling.BILINEAR)
    return jpeg_uri(overlay(img, cam, "stretch"))
