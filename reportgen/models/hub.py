"""Hints from the files a model hub leaves beside an exported model.

Hugging Face ``transformers`` (and ``optimum``'s ONNX export) write ``config.json`` with
``id2label`` and ``preprocessor_config.json`` with ``image_mean``, ``image_std``,
``size``, ``crop_size``, ``do_center_crop``; timm's hub files hold ``config.json`` with
``label_names`` and ``pretrained_cfg`` (``input_size``, ``mean``, ``std``, ``crop_pct``).
reportgen reads them as it reads a model's embedded hints: untrusted, size-capped, every
value type-checked and dropped when wrong, and below the command line's options and the
model file's own hints.  Only files in the model file's own folder are read.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from reportgen.models.base import EmbeddedMetadata, ModelInfo

HUB_FILES = ("config.json", "preprocessor_config.json")
MAX_BYTES = 8 << 20  # a hub config is a few KB; a label list of 100,000 names fits
CROP_FRACTION = 0.875  # what reportgen's --resize crop keeps (data.CROP_FRACTION)


@dataclass
class HubHints:
    """What the hub files beside a model say, and which files said it."""

    hints: EmbeddedMetadata = field(default_factory=EmbeddedMetadata)
    resize: str | None = None  # "crop" where the hub's preprocessing centre-crops, "stretch" where it resizes
    crop_fraction: float | None = None  # the share of the shorter side the hub's crop keeps
    files: list[str] = field(default_factory=list)  # the files read
    digest: str = ""  # SHA-256 over their contents (part of the features cache key)

    @property
    def notes(self) -> list[str]:
        """What the report says about the hints that it cannot follow exactly."""
        if self.crop_fraction is not None and abs(self.crop_fraction - CROP_FRACTION) > 1e-3:
            return [
                f"the model's preprocessing ({', '.join(self.files)}) crops {self.crop_fraction:g} of the shorter "
                f"side; reportgen's centre crop keeps {CROP_FRACTION:g}"
            ]
        return []


def _read(path: Path) -> dict[str, Any] | None:
    """A JSON object from a regular file of at most :data:`MAX_BYTES`, else None."""
    try:
        st = os.stat(path)
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_BYTES:
            return None
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError, RecursionError):
        return None
    return value if isinstance(value, dict) else None


def _numbers(value: Any, count: tuple[int, ...] = (1, 3)) -> tuple[float, ...] | None:
    if not isinstance(value, list) or len(value) not in count:
        return None
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value):
        return None
    return tuple(float(v) for v in value)


def _side(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and 0 < value <= 8192 else None


def _classes(config: dict[str, Any]) -> list[str] | None:
    """``id2label`` (transformers: {"0": "cat", ...}, every index from 0 present) or
    ``label_names`` (timm)."""
    id2label = config.get("id2label")
    if isinstance(id2label, dict) and id2label:
        try:
            pairs = {int(k): v for k, v in id2label.items()}
        except (TypeError, ValueError):
            return None
        if sorted(pairs) == list(range(len(pairs))) and all(isinstance(v, str) for v in pairs.values()):
            return [pairs[i][:200] for i in range(len(pairs))]
        return None
    names = config.get("label_names")
    if isinstance(names, list) and names and all(isinstance(v, str) for v in names):
        return [v[:200] for v in names]
    return None


def hub_hints(model_path: Path) -> HubHints:
    """The hints of the hub files beside ``model_path`` (nothing when there are none)."""
    out = HubHints()
    digest = hashlib.sha256()
    for name in HUB_FILES:
        path = model_path.parent / name
        data = _read(path)
        if data is None:
            continue
        out.files.append(name)
        digest.update(name.encode() + b"\0" + json.dumps(data, sort_keys=True).encode() + b"\0")
        hints = out.hints
        if name == "config.json":
            hints.classes = hints.classes or _classes(data)
            cfg = data.get("pretrained_cfg")
            if isinstance(cfg, dict):  # timm
                size = cfg.get("input_size")
                if isinstance(size, list) and len(size) == 3 and all(_side(v) for v in size[1:]):
                    hints.input_size = hints.input_size or (size[1], size[2])
                hints.mean = hints.mean or _numbers(cfg.get("mean"))
                hints.std = hints.std or _numbers(cfg.get("std"))
                crop = cfg.get("crop_pct")
                if isinstance(crop, (int, float)) and not isinstance(crop, bool) and 0.2 <= crop <= 1.0:
                    out.crop_fraction = float(crop)
                    out.resize = "crop" if crop < 1.0 else "stretch"
        else:  # transformers' image processor
            hints.mean = hints.mean or _numbers(data.get("image_mean"))
            hints.std = hints.std or _numbers(data.get("image_std"))
            size = data.get("crop_size") if data.get("do_center_crop") else data.get("size")
            if isinstance(size, dict) and _side(size.get("height")) and _side(size.get("width")):
                hints.input_size = hints.input_size or (size["height"], size["width"])
            elif isinstance(size, int) and _side(size):
                hints.input_size = hints.input_size or (size, size)
            if data.get("do_center_crop") is True:
                out.resize = "crop"
                crop = data.get("crop_pct")
                if isinstance(crop, (int, float)) and not isinstance(crop, bool) and 0.2 <= crop <= 1.0:
                    out.crop_fraction = float(crop)
            elif data.get("do_resize") is True and isinstance(data.get("size"), dict) and "height" in data["size"]:
                out.resize = "stretch"
    if out.hints.std is not None and any(v <= 0 for v in out.hints.std):
        out.hints.std = None
    out.digest = digest.hexdigest() if out.files else ""
    return out


def apply_hub_hints(info: ModelInfo, hub: HubHints) -> None:
    """Complete ``info``'s hints with the hub files' where the model file has none, and
    say where they came from."""
    if not hub.files:
        return
    own, theirs = info.embedded, hub.hints
    files = ", ".join(hub.files)
    info.embedded = EmbeddedMetadata(
        classes=own.classes or theirs.classes,
        input_size=own.input_size or theirs.input_size,
        mean=own.mean or theirs.mean,
        std=own.std or theirs.std,
        classes_from=own.classes_from if own.classes else f"{files} beside the model",
    )
    if info.input_size_hint is None:
        info.input_size_hint = info.embedded.input_size
    info.resize_hint = hub.resize
    info.properties["hints from"] = f"{files} beside the model (untrusted; options win)"
    info.notes.extend(hub.notes)
