"""One streamed pass over the images: outputs and pooled features of every layer.

Decoding runs on a thread pool a couple of batches ahead of the model; features are
written into arrays allocated once, so memory grows with the pooled features only.

The cache (``--features PATH``) is an ``.npz`` file, read with ``allow_pickle=False``:

==============  ==========================================================
``meta``        JSON text: format version, cache key, layers, model info,
                preprocessing, folder classes, skipped files
``files``       relative paths of the decoded images (unicode array)
``sha256``      SHA-256 of each decoded file
``labels``      folder-class index per image, -1 when unlabeled (int64)
``outputs``     raw model outputs, (N, K) float32
``logits``      the class scores before the model's final softmax, (N, K)
                float32; only for models whose output is a softmax
``layer_<i>``   pooled features of layer i of ``meta.layers``, (N, D_i) float32:
                the layer's grid of channel means (its ``cells``, channel-major)
                or its global mean (see ``models.base.pooling``)
==============  ==========================================================
"""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reportgen import __version__
from reportgen.data import ImageDataset, Preprocess, Skipped, iter_batches
from reportgen.errors import one_line
from reportgen.models.base import INPUT_LAYER, LOGITS_LAYER, LayerInfo, ModelAdapter, downsample_pixels
from reportgen.progress import progress
from reportgen.util import atomic_write

CACHE_FORMAT = 3  # 2: logits of softmax-ended models; 3: spatial layers pooled to grids


@dataclass
class Features:
    """Everything the analyses need from the model, one row per decoded image.

    ``layers`` lists the audited layers in order; the pseudo-layers ``input`` (pixels)
    and ``logits`` (the outputs) are included, so ``arrays[name]`` exists for each.
    """

    files: list[str]
    labels: np.ndarray  # folder-class index, -1 unlabeled
    sha256: list[str]
    outputs: np.ndarray  # (N, K) raw outputs
    layers: list[LayerInfo]
    arrays: dict[str, np.ndarray]
    logits: np.ndarray | None = None  # (N, K) scores before the output's softmax, if it has one
    skipped: list[Skipped] = field(default_factory=list)  # decode failures met here
    seconds: float = 0.0
    from_cache: bool = False

    @property
    def n(self) -> int:
        return len(self.files)

    def subset(self, keep: np.ndarray) -> Features:
        """The rows where ``keep`` is true (a boolean mask)."""
        idx = np.flatnonzero(keep)
        return Features(
            files=[self.files[i] for i in idx],
            labels=self.labels[idx],
            sha256=[self.sha256[i] for i in idx],
            outputs=self.outputs[idx],
            layers=self.layers,
            arrays={k: v[idx] for k, v in self.arrays.items()},
            logits=None if self.logits is None else self.logits[idx],
            skipped=self.skipped,
            seconds=self.seconds,
            from_cache=self.from_cache,
        )


def extract(
    dataset: ImageDataset,
    adapter: ModelAdapter,
    layers: list[LayerInfo],
    pre: Preprocess,
    *,
    batch_size: int = 32,
    show_progress: bool = True,
) -> Features:
    """Run the model over every image of ``dataset`` once.

    ``layers`` may include the pseudo-layers :data:`INPUT_LAYER` and
    :data:`LOGITS_LAYER`; every other name is tapped inside the runtime.
    """
    records = dataset.records
    total = len(records)
    tapped = [layer.name for layer in layers if layer.name not in (INPUT_LAYER, LOGITS_LAYER)]
    score = adapter.score_layer
    # The logits of a softmax-ended model ride along as one more tap.
    taps = [*tapped, score] if score and score not in tapped else tapped
    cells = {layer.name: layer.cells for layer in layers if layer.cells is not None and layer.name in tapped}
    arrays = {layer.name: np.empty((total, layer.dim), np.float32) for layer in layers if layer.name != LOGITS_LAYER}
    outputs = np.empty((total, adapter.num_outputs), np.float32)
    logits = np.empty((total, adapter.num_outputs), np.float32) if score else None
    rows: list[int] = []
    digests: list[str] = []
    skipped: list[Skipped] = []
    filled = 0
    start = time.perf_counter()
    bar = progress(total=total, desc="extract", unit="img", enabled=show_progress)
    try:
        # On the CPU, decoding between forward passes beats decoding beside them (the
        # runtime's threads already use every core); a GPU leaves the CPU free to work ahead.
        ahead = 0 if adapter.info.device == "cpu" else 2
        for batch in iter_batches(dataset, pre, batch_size, prefetch=ahead):
            for i, reason in batch.failures:
                skipped.append(Skipped(records[i].file, reason))
            n = len(batch.indices)
            if n:
                scores, feats = adapter.extract(batch.pixels, taps, cells)
                end = filled + n
                outputs[filled:end] = scores
                if logits is not None:
                    logits[filled:end] = feats[score]
                for name in tapped:
                    arrays[name][filled:end] = feats[name]
                if INPUT_LAYER in arrays:
                    arrays[INPUT_LAYER][filled:end] = downsample_pixels(batch.pixels, pre.channels_last)
                filled = end
                rows.extend(batch.indices)
                digests.extend(batch.sha256)
            bar.update(n + len(batch.failures))
    finally:
        bar.close()
    seconds = time.perf_counter() - start
    outputs = outputs[:filled]
    logits = None if logits is None else logits[:filled]
    arrays = {k: v[:filled] for k, v in arrays.items()}
    if LOGITS_LAYER in {layer.name for layer in layers}:
        arrays[LOGITS_LAYER] = outputs
    skipped.sort(key=lambda s: s.file)
    return Features(
        files=[records[i].file for i in rows],
        labels=np.array([records[i].folder_class for i in rows], np.int64),
        sha256=digests,
        outputs=outputs,
        layers=layers,
        arrays=arrays,
        logits=logits,
        skipped=skipped,
        seconds=seconds,
    )


# ------------------------------------------------------------------ cache


def cache_key(model_sha256: str, options: dict[str, Any], dataset: ImageDataset) -> dict[str, Any]:
    """What must match for a cached extraction to be reused: the model's bytes, the
    options that change features, and the listing (name, size, mtime) of the images."""
    listing = hashlib.sha256(json.dumps(dataset.listing_key()).encode()).hexdigest()
    return {
        "model_sha256": model_sha256,
        "options": options,
        "listing_sha256": listing,
        "root": str(dataset.root.resolve()),
    }


@dataclass
class CachedRun:
    """A cache file's content: the features and what produced them."""

    features: Features
    meta: dict[str, Any]


def save_cache(path: Path, features: Features, key: dict[str, Any], extra: dict[str, Any]) -> None:
    """Write the cache atomically (a crash leaves the previous cache intact)."""
    meta = {
        "format": CACHE_FORMAT,
        "tool_version": __version__,
        "key": key,
        "layers": [
            {
                "name": layer.name,
                "shape": list(layer.shape),
                "op": layer.op,
                "layout": layer.layout,
                "prefix": layer.prefix,
                "grid": list(layer.grid) if layer.grid else None,
                "module": layer.module,
                "role": layer.role,
                "cells": list(layer.cells) if layer.cells else None,
            }
            for layer in features.layers
        ],
        "skipped": [{"file": s.file, "reason": s.reason} for s in features.skipped],
        "seconds": features.seconds,
        **extra,
    }
    payload: dict[str, np.ndarray] = {
        "meta": np.array(json.dumps(meta)),
        "files": np.array(features.files, dtype=str),
        "sha256": np.array(features.sha256, dtype=str),
        "labels": features.labels.astype(np.int64),
        "outputs": features.outputs.astype(np.float32),
    }
    if features.logits is not None:
        payload["logits"] = features.logits.astype(np.float32)
    for i, layer in enumerate(features.layers):
        if layer.name != LOGITS_LAYER:
            payload[f"layer_{i}"] = features.arrays[layer.name]

    def write(fh: Any) -> None:
        np.savez(fh, **payload)

    atomic_write(path, write)


@dataclass
class CacheMiss:
    """Why a cache file that exists was not used."""

    reason: str  # one line
    broken: bool  # unreadable (not merely out of date or from another version)


def load_cache(path: Path, key: dict[str, Any] | None) -> CachedRun | CacheMiss | None:
    """The cached run at ``path`` if it exists and matches ``key`` (any key when None,
    for reading back a finished audit's features); why not, when the file exists but
    cannot be used; None when there is no file."""
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(str(npz["meta"]))
            if meta.get("format") != CACHE_FORMAT:
                return CacheMiss(
                    f"written in cache format {meta.get('format')!r} by reportgen {meta.get('tool_version', '?')}; "
                    f"this version reads format {CACHE_FORMAT}",
                    broken=False,
                )
            if key is not None and meta.get("key") != key:
                changed = [
                    part
                    for part in ("model_sha256", "options", "listing_sha256", "root")
                    if meta["key"].get(part) != key[part]
                ]
                what = f" ({', '.join(_KEY_WORDS[c] for c in changed)} changed)" if changed else ""
                return CacheMiss(f"out of date{what}", broken=False)
            layers = [
                LayerInfo(
                    d["name"],
                    tuple(d["shape"]),
                    d.get("op", ""),
                    d.get("layout", ""),
                    int(d.get("prefix", 0)),
                    tuple(d["grid"]) if d.get("grid") else None,
                    d.get("module", ""),
                    d.get("role", ""),
                    tuple(d["cells"]) if d.get("cells") else None,
                )
                for d in meta["layers"]
            ]
            outputs = npz["outputs"]
            arrays = {}
            for i, layer in enumerate(layers):
                arrays[layer.name] = outputs if layer.name == LOGITS_LAYER else npz[f"layer_{i}"]
            features = Features(
                files=[str(f) for f in npz["files"]],
                labels=npz["labels"].astype(np.int64),
                sha256=[str(s) for s in npz["sha256"]],
                outputs=outputs,
                layers=layers,
                arrays=arrays,
                logits=npz["logits"] if "logits" in npz.files else None,
                skipped=[Skipped(s["file"], s["reason"]) for s in meta["skipped"]],
                seconds=float(meta.get("seconds", 0.0)),
                from_cache=True,
            )
    except Exception as exc:  # noqa: BLE001 - whatever is wrong with it, the features are extracted again
        return CacheMiss(f"unreadable ({type(exc).__name__}: {one_line(exc, 160)})", broken=True)
    return CachedRun(features, meta)


_KEY_WORDS = {
    "model_sha256": "the model file",
    "options": "the extraction options",
    "listing_sha256": "the image files",
    "root": "the image folder",
}


def default_cache_path(report: Path) -> Path:
    return report.with_name(report.stem + ".features.npz")
