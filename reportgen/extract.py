"""One streamed pass over the images: outputs and pooled features of every layer.

Decoding runs on a pool of threads or worker processes (see :func:`extract`), ahead of
the model where that pays; each batch's features are written straight into ``.npy``
files on disk (:class:`FeatureStore`) and read back memory-mapped, so memory stays flat
whatever the number of images: the analyses read the layers a block or a sample at a
time and the operating system keeps in memory only the pages in use.

The cache (``--features PATH``, default ``<report>.features`` beside the report) is a
directory of uncompressed ``.npy`` files, read with ``allow_pickle=False``:

==============  ==========================================================
``meta.json``   format version, cache key, layers, model info, preprocessing,
                folder classes, skipped files, feature precision
``files.npy``   relative paths of the decoded images (unicode array)
``sha256.npy``  SHA-256 of each decoded file
``labels.npy``  folder-class index per image, -1 when unlabeled (int64)
``outputs.npy`` raw model outputs, (N, K) float32
``logits.npy``  the class scores before the model's final softmax, (N, K)
                float32; only for models whose output is a softmax
``image_stats.npy`` each picture's measured properties, (N, P) float32, columns
                ``image_stats.PROPERTIES`` (absent from a cache written before
                they were measured: error slices are then described without them)
``layer_<i>.npy`` pooled features of layer i of ``meta.layers``, (N, D_i) float32
                or float16 (see :func:`feature_dtype`): the layer's grid of channel
                means (its ``cells``, channel-major) or its global mean (see
                ``models.base.pooling``)
==============  ==========================================================

Format 3 caches (one ``.npz`` file) are not read: they are named as such and the
features are extracted again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import tempfile
import time
import zipfile
from collections.abc import Iterator
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reportgen import __version__, interrupts
from reportgen.data import PROCESS_DECODE_MIN, Batch, ImageDataset, Preprocess, Skipped, iter_batches
from reportgen.errors import UserError, one_line
from reportgen.image_stats import PROPERTIES
from reportgen.models import INPUT_LAYER, LOGITS_LAYER, LayerInfo, ModelAdapter, downsample_pixels
from reportgen.outputs import check_replaceable
from reportgen.progress import progress
from reportgen.util import ROW_BLOCK

CACHE_FORMAT = 4  # 2: softmax models' logits; 3: grid pooling; 4: a directory of .npy files
# auto stores float16 when the layers' float32 features would pass this size: about
# 100,000 images at 5,000 values each.  float16 keeps 11 significant bits (a relative
# rounding of at most 2^-11 = 0.05% per value); below the size, float32 costs little.
FLOAT16_ABOVE = 2 << 30
FLOAT16_MAX = float(np.finfo(np.float16).max)

# With the model on an accelerator: decoding processes from this many images (starting
# them costs under a second, what one core decodes of these in about two), and at most
# this many of them.
GPU_PROCESS_DECODE_MIN = 500
MAX_DECODE_PROCESSES = 32


def feature_dtype(precision: str, n_images: int, dims: int) -> np.dtype:
    """The dtype the layer features are stored in: ``precision`` (auto, float32 or
    float16; ``options.PRECISIONS``) resolved for ``n_images`` rows of ``dims`` values in all."""
    if precision == "auto":
        precision = "float16" if 4 * n_images * dims > FLOAT16_ABOVE else "float32"
    return np.dtype(np.float16 if precision == "float16" else np.float32)


def beyond_float16(values: np.ndarray) -> bool:
    """Whether a finite value is too large for float16 (infinities and NaN are kept as they are)."""
    if not values.size:
        return False
    largest = np.abs(values).max()  # NaN when any value is: then look closer
    if largest <= FLOAT16_MAX:
        return False
    return bool(np.any(np.abs(values[np.isfinite(values)]) > FLOAT16_MAX))


class FeatureStore:
    """Preallocated ``.npy`` files that extraction writes batch by batch (memory-mapped).

    A layer stored as float16 whose values leave float16's range (beyond 65,504) is
    moved to float32 on the spot rather than saturated.
    """

    def __init__(self, folder: Path, total: int, dims: dict[str, int], dtype: np.dtype) -> None:
        self.folder = folder
        self.total = total
        self.files: dict[str, str] = {}
        self.arrays: dict[str, np.ndarray] = {}
        for i, (name, dim) in enumerate(dims.items()):
            self.files[name] = f"layer_{i}.npy"
            self.arrays[name] = self._open(self.files[name], (total, dim), dtype)

    def _open(self, file: str, shape: tuple[int, int], dtype: np.dtype) -> np.ndarray:
        return np.lib.format.open_memmap(self.folder / file, mode="w+", dtype=dtype, shape=shape)

    def write(self, name: str, start: int, values: np.ndarray) -> None:
        target = self.arrays[name]
        if target.dtype == np.float16 and beyond_float16(values):
            wide = self._open(self.files[name] + ".wide", target.shape, np.dtype(np.float32))
            wide[:start] = target[:start]
            os.replace(self.folder / (self.files[name] + ".wide"), self.folder / self.files[name])
            self.arrays[name] = target = wide
        target[start : start + len(values)] = values

    def finish(self, filled: int) -> dict[str, np.ndarray]:
        """The layers' first ``filled`` rows, flushed and reopened read-only."""
        out = {}
        for name, array in self.arrays.items():
            path = self.folder / self.files[name]
            if filled < self.total:  # some images failed to decode: the files shrink to the rows written
                short = self._open(self.files[name] + ".short", (filled, array.shape[1]), array.dtype)
                for s in range(0, filled, ROW_BLOCK):
                    short[s : s + ROW_BLOCK] = array[s : min(filled, s + ROW_BLOCK)]
                short.flush()
                del short
                os.replace(self.folder / (self.files[name] + ".short"), path)
            else:
                array.flush()
            del array
            out[name] = open_rows(path)
        self.arrays = {}
        return out


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
    folder: Path | None = None  # where the layer arrays live on disk (memory-mapped)
    image_stats: np.ndarray | None = None  # (N, len(image_stats.PROPERTIES)) float32; None from an older cache
    engine: dict[str, Any] | None = None  # how a distributed extraction went (``ray_engine.EngineRun``)

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
            image_stats=None if self.image_stats is None else self.image_stats[idx],
        )


@dataclass(frozen=True)
class TapPlan:
    """What one forward pass taps and where each result goes (see :func:`tap_plan`)."""

    tapped: list[str]  # audited layers tapped inside the runtime
    taps: list[str]  # those, plus the logits tap of a softmax-ended model
    cells: dict[str, tuple[int, int]]  # the grid each spatial layer is pooled to
    dims: dict[str, int]  # stored layers (the pixel layer included) -> values per image
    score: str | None  # the tap before the output's softmax, if the model has one


def tap_plan(adapter: ModelAdapter, layers: list[LayerInfo]) -> TapPlan:
    """The taps that compute ``layers`` (pseudo-layers included) in one pass of ``adapter``."""
    tapped = [layer.name for layer in layers if layer.name not in (INPUT_LAYER, LOGITS_LAYER)]
    score = adapter.score_layer
    # The logits of a softmax-ended model ride along as one more tap.
    taps = [*tapped, score] if score and score not in tapped else tapped
    cells = {layer.name: layer.cells for layer in layers if layer.cells is not None and layer.name in tapped}
    dims = {layer.name: layer.dim for layer in layers if layer.name != LOGITS_LAYER}
    return TapPlan(tapped, taps, cells, dims, score)


@dataclass
class BatchFeatures:
    """One decoded batch through the model: the rows :func:`extract` stores."""

    batch: Batch  # the decoded images (their record positions, digests, properties, failures)
    outputs: np.ndarray  # (n, K) raw outputs
    logits: np.ndarray | None  # (n, K) scores before the output's softmax, if it has one
    layers: dict[str, np.ndarray]  # every stored layer of the plan, (n, D) float32


def run_batches(
    dataset: ImageDataset,
    adapter: ModelAdapter,
    plan: TapPlan,
    pre: Preprocess,
    *,
    batch_size: int,
    indices: range | None = None,
    decode_processes: bool = False,
    pool: tuple[Executor, int] | None = None,
) -> Iterator[BatchFeatures]:
    """Decode ``dataset`` (the records at ``indices``, default all) in order, in batches of
    ``batch_size``, and run each decoded batch through ``adapter``.  Batches follow the
    record positions, so a range that starts at a multiple of ``batch_size`` is cut into
    the very batches a pass over all records makes (a shard of ``ray_engine`` computes
    what the local pass computes, value for value).

    With ``decode_processes``, a set of at least :data:`~reportgen.data.PROCESS_DECODE_MIN`
    images (:data:`GPU_PROCESS_DECODE_MIN` when the model runs on an accelerator, then on
    every core) is decoded in worker processes (the caller's main module must be guarded).
    A ``pool`` (a process pool of ``data.decode_pool`` and its width) is used for every
    set, whatever its size, and left open: a caller decoding many sets starts it once."""
    total = len(dataset.records) if indices is None else len(indices)
    # On the CPU, threads decoding between forward passes beat threads decoding beside
    # them (the runtime's threads already use every core), while worker processes one
    # batch ahead beat both (2 cores, batches of 256: 50,000 digit PNGs through their
    # CNN in 10.5 s against 12.6-14.9 s decoded between passes; 6,000 JPEGs through
    # ResNet-18 at 112 px, 31.4 s against 34.3 s).  A GPU leaves the CPU free to work ahead.
    # With the model on a GPU, decoding is the CPU's whole job and the pace of the run:
    # every core decodes, in processes from a few hundred images on (on an H200
    # machine 2,000 JPEGs went through 8 decoding threads at 445 img/s, 1.5x one
    # thread: Pillow's Python and the per-image numpy hold the GIL).
    cores = os.cpu_count() or 1
    on_accelerator = adapter.info.device != "cpu"
    enough = total >= (GPU_PROCESS_DECODE_MIN if on_accelerator else PROCESS_DECODE_MIN)
    processes = decode_processes and enough and cores > 1
    workers = min(cores, MAX_DECODE_PROCESSES) if processes and on_accelerator else None
    ahead = 2 if on_accelerator else 1 if processes else 0
    if pool is not None:
        processes, workers, ahead = True, pool[1], 2 if on_accelerator else 1
    batches = iter_batches(
        dataset, pre, batch_size, workers, indices, prefetch=ahead, processes=processes, pool=pool[0] if pool else None
    )
    for batch in batches:
        if not batch.indices:
            yield BatchFeatures(batch, np.empty((0, adapter.num_outputs), np.float32), None, {})
            continue
        scores, feats = adapter.extract(batch.pixels, plan.taps, plan.cells)
        layers = {name: feats[name] for name in plan.tapped}
        if INPUT_LAYER in plan.dims:
            layers[INPUT_LAYER] = downsample_pixels(batch.pixels, pre.channels_last)
        yield BatchFeatures(batch, scores, feats[plan.score] if plan.score else None, layers)


def extract(
    dataset: ImageDataset,
    adapter: ModelAdapter,
    layers: list[LayerInfo],
    pre: Preprocess,
    folder: Path,
    *,
    batch_size: int = 32,
    precision: str = "auto",
    show_progress: bool = True,
    decode_processes: bool = False,
) -> Features:
    """Run the model over every image of ``dataset`` once, writing the layer features
    into ``folder`` (an empty directory; see :class:`FeatureStore`).

    ``layers`` may include the pseudo-layers :data:`INPUT_LAYER` and
    :data:`LOGITS_LAYER`; every other name is tapped inside the runtime.  Decoding runs
    as :func:`run_batches` says (``decode_processes``)."""
    records = dataset.records
    total = len(records)
    plan = tap_plan(adapter, layers)
    store = FeatureStore(folder, total, plan.dims, feature_dtype(precision, total, sum(plan.dims.values())))
    outputs = np.empty((total, adapter.num_outputs), np.float32)
    logits = np.empty((total, adapter.num_outputs), np.float32) if plan.score else None
    stats = np.empty((total, len(PROPERTIES)), np.float32)
    rows: list[int] = []
    digests: list[str] = []
    skipped: list[Skipped] = []
    filled = 0
    start = time.perf_counter()
    bar = progress(total=total, desc="extract", unit="img", enabled=show_progress)
    try:
        for done in run_batches(dataset, adapter, plan, pre, batch_size=batch_size, decode_processes=decode_processes):
            batch = done.batch
            for i, reason in batch.failures:
                skipped.append(Skipped(records[i].file, reason))
            n = len(batch.indices)
            if n:
                end = filled + n
                outputs[filled:end] = done.outputs
                stats[filled:end] = batch.stats
                if logits is not None:
                    logits[filled:end] = done.logits
                for name, values in done.layers.items():
                    store.write(name, filled, values)
                filled = end
                rows.extend(batch.indices)
                digests.extend(batch.sha256)
            bar.update(n + len(batch.failures))
    finally:
        bar.close()
    arrays = store.finish(filled)
    seconds = time.perf_counter() - start
    outputs = outputs[:filled]
    logits = None if logits is None else logits[:filled]
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
        folder=folder,
        image_stats=stats[:filled],
    )


def open_rows(path: Path) -> np.ndarray:
    """A stored array, memory-mapped read-only (an empty one in memory: nothing to map)."""
    array = np.load(path, mmap_mode="r", allow_pickle=False)
    return np.asarray(array) if array.size == 0 else array


# ------------------------------------------------------------------ cache


def cache_key(model_sha256: str, options: dict[str, Any], dataset: ImageDataset) -> dict[str, Any]:
    """What must match for a cached extraction to be reused: the model's bytes, the
    options that change features, the listing (name, size, mtime) of the images and,
    for a manifest, its digest (the labels it gives)."""
    listing = hashlib.sha256(json.dumps(dataset.listing_key()).encode()).hexdigest()
    key = {
        "model_sha256": model_sha256,
        "options": options,
        "listing_sha256": listing,
        "root": str(dataset.root.resolve()),
    }
    if dataset.source is not None:
        # The labels come from the listing file, and are cached with the features.
        key["labels"] = dataset.labels_key()
    return key


@dataclass
class CachedRun:
    """A cache file's content: the features and what produced them."""

    features: Features
    meta: dict[str, Any]


def scratch_folder(beside: Path) -> Path:
    """An empty directory next to ``beside`` (same file system, so finishing a cache is
    a rename) for one extraction to write into."""
    folder = None
    try:
        beside.parent.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix=f".{beside.name}.", suffix=".tmp", dir=beside.parent))
        mask = os.umask(0o022)  # mkdtemp's 0700 would hide a shared cache: the umask decides, as for files
        os.umask(mask)
        os.chmod(folder, 0o777 & ~mask)
        return folder
    except BaseException as exc:
        discard(folder)  # an interrupt between making and handing it over leaves nothing
        if isinstance(exc, OSError):
            raise UserError(f"cannot write the features next to {beside}: {exc.strerror or exc}") from None
        raise


def discard(folder: Path | None) -> None:
    """Remove an extraction's scratch directory.  Its arrays stay readable where they
    are memory-mapped (POSIX keeps unlinked files until they are unmapped)."""
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


def save_cache(
    path: Path, features: Features, key: dict[str, Any], extra: dict[str, Any], *, what: str = "--features"
) -> None:
    """Finish ``features.folder`` (written by :func:`extract`) as the cache at ``path``:
    the small arrays and ``meta.json`` are added, then the directory takes the path's
    name.  An older cache there (a directory or a format 3 file) is replaced; anything
    else is refused (``what`` names the path in the message, see
    ``outputs.check_replaceable``)."""
    folder = features.folder
    if folder is None:
        raise ValueError("features without a folder cannot be cached")
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
                "file": None if layer.name == LOGITS_LAYER else f"layer_{i}.npy",
            }
            for i, layer in enumerate(features.layers)
        ],
        "skipped": [{"file": s.file, "reason": s.reason} for s in features.skipped],
        "seconds": features.seconds,
        **extra,
    }
    np.save(folder / "files.npy", np.array(features.files, dtype=str))
    np.save(folder / "sha256.npy", np.array(features.sha256, dtype=str))
    np.save(folder / "labels.npy", features.labels.astype(np.int64))
    np.save(folder / "outputs.npy", features.outputs.astype(np.float32))
    if features.logits is not None:
        np.save(folder / "logits.npy", features.logits.astype(np.float32))
    if features.image_stats is not None:
        np.save(folder / "image_stats.npy", features.image_stats.astype(np.float32))
    (folder / "meta.json").write_text(json.dumps(meta))  # written last: its presence means complete
    for file in folder.iterdir():
        with open(file, "rb") as fh:
            os.fsync(fh.fileno())
    check_replaceable(path, is_features_cache, what, folder=True)
    old = path.with_name(f".{path.name}.{os.getpid()}.old")
    had_old = False
    try:
        with interrupts.deferred():  # the old cache is set aside and the new one named in one step
            if os.path.lexists(path):
                os.replace(path, old)
                had_old = True
            os.replace(folder, path)
            features.folder = path
    finally:
        if had_old:
            if old.is_dir():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink()


# A cache directory holds these names only (the last two suffixes: a layer being widened
# or shortened during extraction).
_CACHE_NAMES = re.compile(
    r"(meta\.json|files\.npy|sha256\.npy|labels\.npy|outputs\.npy|logits\.npy|image_stats\.npy|layer_\d+\.npy(\.wide|\.short)?)"
)
_META_BYTES = 256 << 20  # a meta.json larger than this is no cache of ours (1M skipped files are ~100 MB)


def is_features_cache(path: Path) -> bool:
    """Whether ``path`` is a features cache reportgen wrote, so a run may replace it: a
    directory of the cache's own file names whose ``meta.json`` carries a format number
    and the tool's version (any format), or a single-file cache of format 3 and before."""
    try:
        if path.is_dir():
            names = os.listdir(path)
            if "meta.json" not in names or not all(_CACHE_NAMES.fullmatch(n) for n in names):
                return False
            if (path / "meta.json").stat().st_size > _META_BYTES:
                return False
            meta = json.loads((path / "meta.json").read_text(encoding="utf-8"))
        elif path.is_file() and zipfile.is_zipfile(path):
            with np.load(path, allow_pickle=False) as npz:
                meta = json.loads(str(npz["meta"]))
        else:
            return False
    except (OSError, ValueError, KeyError, UnicodeDecodeError, zipfile.BadZipFile):
        return False
    return isinstance(meta, dict) and isinstance(meta.get("format"), int) and isinstance(meta.get("tool_version"), str)


@dataclass
class CacheMiss:
    """Why a cache that exists was not used."""

    reason: str  # one line
    broken: bool  # unreadable (not merely out of date or from another version)


def load_cache(path: Path, key: dict[str, Any] | None) -> CachedRun | CacheMiss | None:
    """The cached run at ``path`` if it exists and matches ``key`` (any key when None,
    for reading back a finished audit's features); why not, when something is there but
    cannot be used; None when there is nothing."""
    if path.is_file():
        return _old_file(path)
    if not path.is_dir():
        return None
    try:
        meta = json.loads((path / "meta.json").read_text())
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

        def small(name: str) -> np.ndarray:
            return np.load(path / name, allow_pickle=False)

        outputs = small("outputs.npy")
        n = len(outputs)
        arrays = {}
        for d, layer in zip(meta["layers"], layers, strict=True):
            if layer.name == LOGITS_LAYER:
                arrays[layer.name] = outputs
                continue
            if not isinstance(d.get("file"), str) or "/" in d["file"] or d["file"].startswith("."):
                raise ValueError(f"layer {layer.name!r} names no file")
            array = open_rows(path / d["file"])
            if array.shape != (n, layer.dim):
                raise ValueError(f"{d['file']} holds {array.shape}, expected {(n, layer.dim)}")
            arrays[layer.name] = array
        features = Features(
            files=[str(f) for f in small("files.npy")],
            labels=small("labels.npy").astype(np.int64),
            sha256=[str(s) for s in small("sha256.npy")],
            outputs=outputs,
            layers=layers,
            arrays=arrays,
            logits=small("logits.npy") if (path / "logits.npy").is_file() else None,
            skipped=[Skipped(s["file"], s["reason"]) for s in meta["skipped"]],
            seconds=float(meta.get("seconds", 0.0)),
            from_cache=True,
            folder=path,
        )
        if not (len(features.files) == len(features.labels) == len(features.sha256) == n):
            raise ValueError("files, labels and outputs differ in length")
        if (path / "image_stats.npy").is_file():
            stats = small("image_stats.npy")
            if stats.shape != (n, len(PROPERTIES)) or stats.dtype != np.float32:
                raise ValueError(f"image_stats.npy holds {stats.shape} {stats.dtype}, expected {(n, len(PROPERTIES))}")
            features.image_stats = stats
    except Exception as exc:  # noqa: BLE001 - whatever is wrong with it, the features are extracted again
        return CacheMiss(f"unreadable ({type(exc).__name__}: {one_line(exc, 160)})", broken=True)
    return CachedRun(features, meta)


def _old_file(path: Path) -> CacheMiss:
    """Why a file where the cache directory should be is not read."""
    with contextlib.suppress(Exception):
        with np.load(path, allow_pickle=False) as npz:
            meta = json.loads(str(npz["meta"]))
        return CacheMiss(
            f"a single-file cache (format {meta.get('format')!r}, reportgen {meta.get('tool_version', '?')}); "
            f"this version keeps a directory of .npy files (format {CACHE_FORMAT}) and will replace it",
            broken=False,
        )
    return CacheMiss("unreadable (a file, not a cache directory); it will be replaced", broken=True)


_KEY_WORDS = {
    "model_sha256": "the model file",
    "options": "the extraction options",
    "listing_sha256": "the image files",
    "root": "the image folder",
}


def default_cache_path(report: Path) -> Path:
    return report.with_name(report.stem + ".features")
