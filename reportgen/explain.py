"""``reportgen cam``: the activation map of one image, for any model format."""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from reportgen.analyses.cam import compute_cam
from reportgen.config import AuditConfig
from reportgen.data import DecodeError, load_one, open_image
from reportgen.errors import UserError
from reportgen.labels import read_labels_file
from reportgen.map_model import open_for_maps
from reportgen.models import ModelAdapter, ModelHandle
from reportgen.outputs import is_map_npy, is_reportgen_png, tag_png, write_file
from reportgen.overlay import overlay

VIEWABLE = 512  # the overlay PNG's longer side, at least


@dataclass
class Explanation:
    map: np.ndarray  # (H, W) float32 in [0, 1] at the model's input resolution
    layer: str
    method: str
    target: int
    target_name: str
    score: float  # the explained score at the target: the logit, or the output where no logit exists
    score_kind: str = "logit"
    resize: str = "stretch"  # how the image became the model's input (the overlay follows it)


def resolve_target(text: str | None, names: list[str] | None, num_outputs: int) -> int | None:
    """A class given by name (from --labels or the model's metadata) or by output index."""
    if text is None:
        return None
    if names and text in names:
        return names.index(text)
    try:
        index = int(text)
    except ValueError:
        known = f"; known names: {', '.join(names[:10])}{' ...' if names and len(names) > 10 else ''}" if names else ""
        raise UserError(f"--target {text!r} is neither a class name nor an output index{known}") from None
    if not 0 <= index < num_outputs:
        raise UserError(f"--target {index} is out of range: the model has {num_outputs} outputs")
    return index


def explain_image(
    cfg: AuditConfig, image: Path, *, layer: str | None, target: str | None, method: str
) -> tuple[Explanation, ModelAdapter]:
    """Compute the map of ``method`` for one image file."""
    handle = ModelHandle(cfg.model, device=cfg.device, arch=cfg.arch, trust_pickle=cfg.trust_pickle)
    model = open_for_maps(
        handle, size=cfg.size, mean=cfg.mean, std=cfg.std, resize=cfg.resize, layer=layer, strict=True
    )
    adapter, pre = model.adapter, model.pre
    assert model.split is not None and model.layer is not None  # strict: refused otherwise
    names = read_labels_file(cfg.labels) if cfg.labels else adapter.info.embedded.classes
    index = resolve_target(target, names, adapter.num_outputs)
    try:
        pixels, _ = load_one(image, pre)
    except DecodeError as exc:
        raise UserError(f"cannot use {image}: {exc}") from None
    result = compute_cam(
        method,
        model.split,
        pixels[None],
        None if index is None else np.array([index]),
        pre.size,
        run_model=lambda x: adapter.extract(x, [])[0],
        batch_size=cfg.batch_size,
        channels_last=pre.channels_last,
    )
    t = int(result.targets[0])
    name = names[t] if names and t < len(names) else str(t)
    kind = "logit" if adapter.score_layer else "output"
    return (
        Explanation(result.maps[0], model.layer, method, t, name, float(result.scores[0]), kind, pre.resize),
        adapter,
    )


def write_explanation(exp: Explanation, image: Path, out: Path) -> None:
    """``.npy``: the map (H x W float32); ``.png``: the overlay on the image as shown."""
    suffix = out.suffix.lower()
    buf = io.BytesIO()
    if suffix == ".npy":
        np.save(buf, exp.map.astype(np.float32))
        write_file(out, buf.getvalue(), is_map_npy, "-o")
    elif suffix == ".png":
        try:
            img, _ = open_image(image)
        except DecodeError as exc:
            raise UserError(f"cannot use {image}: {exc}") from None
        if max(img.size) < VIEWABLE:
            # A small image (a 64 px dataset) is enlarged first: the overlay is for people.
            factor = -(-VIEWABLE // max(img.size))
            img = img.resize((img.width * factor, img.height * factor), Image.Resampling.BICUBIC)
        overlay(img, exp.map, exp.resize).save(buf, format="PNG")
        write_file(out, tag_png(buf.getvalue()), is_reportgen_png, "-o")
    else:
        raise UserError(f"-o must end in .npy (the map) or .png (the overlay), got {out.name!r}")
