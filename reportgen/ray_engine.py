"""Extraction on a Ray cluster (``--engine ray``) into the same features cache.

The head (the process running ``reportgen audit``) cuts the image list into shards of
consecutive records, each a multiple of the batch size long, so a shard's batches are the
very batches of the local pass (:func:`extract.run_batches`).  A pool of Ray actors -- one
per GPU where the cluster has GPUs, CPU actors otherwise -- each load the model once and
run shards through reportgen's own decoding and the same adapter, so every value is the
local route's; each worker runs two shards at once, one decoding while the other's batch
is in the model.  A shard's arrays come back through Ray's object store and the head
writes them under ``.<cache>.shards/<start>-<end>/`` (into a ``.tmp`` folder renamed
when complete, ``shard.json`` last), then copies every shard that continues the ones
already copied into the cache directory the local route writes (:class:`Assembly`:
through :class:`extract.FeatureStore`, in record order, batch by batch where a float16
layer might widen, so it widens where the local pass would).  The shards go once the
cache has its name.

Resuming: an interrupted or failed run leaves its finished shards; the next run with the
same cache key (model, extraction options, image listing) and batch size extracts only
the others.  A worker process that dies is restarted by Ray and its shards run again, up
to :data:`MAX_RESTARTS` times.

What the workers need: the model file and the images at the same paths as on the head (a
shared file system; each worker checks the model's SHA-256 against the head's), and
Python with reportgen and its runtime.  Nothing is written on the workers: the shards and
the cache live on the head's disk.

Ray is an optional dependency (``pip install 'reportgen[ray]'``), imported only here.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import socket
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reportgen import __version__, interrupts
from reportgen.data import ImageDataset, ImageRecord, Preprocess, Skipped, decode_pool
from reportgen.errors import UserError, one_line
from reportgen.extract import (
    Features,
    FeatureStore,
    beyond_float16,
    feature_dtype,
    open_rows,
    run_batches,
    tap_plan,
)
from reportgen.image_stats import PROPERTIES
from reportgen.models import LOGITS_LAYER, LayerInfo, ModelAdapter, load_model
from reportgen.progress import progress
from reportgen.util import file_sha256

SHARD_FORMAT = 1
SHARD_IMAGES = 2048  # images per shard by default (rounded up to whole batches)
CPUS_PER_WORKER = 4  # a CPU worker's share of cores when --ray-workers is not given
IN_FLIGHT = 2  # shards queued per worker: the next is ready when one returns
MAX_RESTARTS = 3  # a worker process that dies is restarted (and its shards rerun) this often

_ROOT_MARK = "shards.json"
_SHARD_MARK = "shard.json"
_ROOT_NAMES = re.compile(r"shards\.json|\d+-\d+|\.\d+-\d+\.tmp")
_SHARD_NAMES = re.compile(
    r"shard\.json|rows\.npy|sha256\.npy|outputs\.npy|logits\.npy|image_stats\.npy|batches\.npy|layer_\d+\.npy"
)
_MARK_BYTES = 1 << 20  # a marker larger than this is none of ours
_RANGE = re.compile(r"(\d+)-(\d+)")


@dataclass
class EngineRun:
    """How a Ray extraction went: the report's "Extraction engine" line and the JSON's ``engine``."""

    engine: str
    address: str  # the cluster's address, as Ray gives it
    nodes: int
    workers: int
    worker_kind: str  # "GPU" or "CPU"
    cpus_per_worker: int
    shards: int
    shards_reused: int
    shard_images: int
    workers_restarted: int  # worker processes that died and were replaced
    seconds: dict[str, float] = field(default_factory=dict)  # connect, shards, assemble; worker time summed

    def as_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


def shards_folder(cache: Path) -> Path:
    """Where the shards of the cache at ``cache`` are kept until it is complete."""
    return cache.with_name(f".{cache.name}.shards")


def shard_ranges(total: int, shard_images: int, batch_size: int) -> list[tuple[int, int]]:
    """Consecutive record ranges of ``shard_images`` rounded up to whole batches."""
    size = -(-max(1, shard_images) // batch_size) * batch_size
    return [(s, min(total, s + size)) for s in range(0, total, size)]


# ------------------------------------------------------------------ the worker


class _OneAtATime:
    """An adapter whose forward passes run one at a time.  A worker runs two shards at
    once (``max_concurrency``), so one decodes while the other's batch is in the model:
    without it, every shard would start with the model waiting for its first batch."""

    def __init__(self, adapter: ModelAdapter) -> None:
        self._adapter = adapter
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._adapter, name)

    def extract(self, *args: Any) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        with self._lock:
            return self._adapter.extract(*args)


class ShardWorker:
    """A Ray actor: the model loaded once, run over the shards the head sends."""

    def __init__(
        self,
        model: str,
        options: dict[str, Any],
        size: tuple[int, int],
        model_sha256: str,
        layers: list[LayerInfo],
        pre: Preprocess,
        root: str,
        max_bytes: int,
        batch_size: int,
    ) -> None:
        # A refusal is kept for the first shard to raise: Ray hands a task's own error
        # back to the head, where an actor that fails to start is a wall of traceback.
        self.refused: UserError | None = None
        try:
            if not os.path.isfile(model):
                raise UserError(f"the model file {model} is not on Ray worker {socket.gethostname()}")
            if file_sha256(Path(model)) != model_sha256:
                raise UserError(f"the model file {model} on Ray worker {socket.gethostname()} differs from the head's")
            adapter = load_model(model, **options)
            adapter.prepare(size)
            self.plan = tap_plan(adapter, layers)
            self.adapter = _OneAtATime(adapter)
        except UserError as exc:
            self.refused = exc
        # Decoding processes for the cores Ray gave this worker, started once for every
        # shard (small pictures decode under the GIL: threads would leave cores idle).
        cores = int(_assigned_cpus())
        self.pool = (decode_pool(cores, processes=True), cores) if cores > 1 else None
        self.pre = pre
        self.root = Path(root)
        self.max_bytes = max_bytes
        self.batch_size = batch_size

    def run(self, start: int, records: list[ImageRecord]) -> dict[str, Any]:
        """Decode and run ``records`` (positions ``start`` onwards); every array of the shard."""
        if self.refused is not None:
            raise self.refused
        began = time.perf_counter()
        part = ImageDataset(self.root, False, [], records, max_bytes=self.max_bytes)
        rows: list[int] = []
        digests: list[str] = []
        failures: list[tuple[int, str]] = []
        batches: list[int] = []
        outputs: list[np.ndarray] = []
        logits: list[np.ndarray] = []
        stats: list[np.ndarray] = []
        layers: dict[str, list[np.ndarray]] = {name: [] for name in self.plan.dims}
        for done in run_batches(part, self.adapter, self.plan, self.pre, batch_size=self.batch_size, pool=self.pool):
            batch = done.batch
            failures += [(start + i, reason) for i, reason in batch.failures]
            batches.append(len(batch.indices))
            if not batch.indices:
                continue
            rows += [start + i for i in batch.indices]
            digests += batch.sha256
            outputs.append(np.asarray(done.outputs, np.float32))
            stats.append(batch.stats)
            if done.logits is not None:
                logits.append(np.asarray(done.logits, np.float32))
            for name, values in done.layers.items():
                layers[name].append(np.asarray(values, np.float32))
        k = self.adapter.num_outputs

        def joined(parts: list[np.ndarray], width: int) -> np.ndarray:
            return np.concatenate(parts) if parts else np.empty((0, width), np.float32)

        return {
            "rows": np.array(rows, np.int64),
            "sha256": digests,
            "failures": failures,
            "batches": np.array(batches, np.int64),
            "outputs": joined(outputs, k),
            "logits": joined(logits, k) if self.plan.score else None,
            "image_stats": joined(stats, len(PROPERTIES)),
            "layers": {name: joined(parts, self.plan.dims[name]) for name, parts in layers.items()},
            "pid": os.getpid(),
            "node": socket.gethostname(),
            "seconds": time.perf_counter() - began,
        }


def _assigned_cpus() -> float:
    """The CPUs Ray reserved for the calling worker (1 outside Ray)."""
    import ray

    if not ray.is_initialized():
        return 1.0
    return float(ray.get_runtime_context().get_assigned_resources().get("CPU", 1.0))


# ------------------------------------------------------------------ shards on the head's disk


def _owned_names(path: Path, names: re.Pattern[str]) -> list[str] | None:
    """The entries of directory ``path`` when every one matches ``names`` (else None)."""
    try:
        entries = os.listdir(path)
    except OSError:
        return None
    return entries if all(names.fullmatch(n) for n in entries) else None


def _read_mark(path: Path) -> dict[str, Any] | None:
    try:
        if path.stat().st_size > _MARK_BYTES:
            return None
        mark = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return None
    return mark if isinstance(mark, dict) and isinstance(mark.get("format"), int) else None


def is_shards_folder(path: Path) -> bool:
    """Whether ``path`` is a shards folder reportgen wrote (so it may delete it): its own
    marker, and nothing in it but shard folders of the shard's own file names."""
    entries = _owned_names(path, _ROOT_NAMES) if path.is_dir() and not path.is_symlink() else None
    if entries is None or _ROOT_MARK not in entries or _read_mark(path / _ROOT_MARK) is None:
        return False
    for name in entries:
        sub = path / name
        if name != _ROOT_MARK and (sub.is_symlink() or not sub.is_dir() or _owned_names(sub, _SHARD_NAMES) is None):
            return False
    return True


def open_shards_folder(root: Path, what: str) -> None:
    """Make ``root`` the shards folder, or check that the one there is reportgen's."""
    if os.path.lexists(root):
        if not is_shards_folder(root):
            raise UserError(
                f"{root} (where {what}'s shards go) exists and is not a shard folder reportgen wrote; "
                "move it away or choose another path"
            )
        return
    try:
        root.mkdir(parents=True)
        (root / _ROOT_MARK).write_text(json.dumps({"format": SHARD_FORMAT, "tool_version": __version__}))
    except OSError as exc:
        raise UserError(f"cannot write the shards at {root}: {exc.strerror or exc}") from None


def remove_shards_folder(root: Path) -> None:
    """Delete the shards once the cache is complete (only a folder that is provably ours)."""
    if is_shards_folder(root):
        shutil.rmtree(root, ignore_errors=True)


def finished_shards(
    root: Path, digest: str, ranges: list[tuple[int, int]], files: dict[str, str], dims: dict[str, int]
) -> set[tuple[int, int]]:
    """The shards of this run already on disk and whole; everything else in ``root`` (a
    partial write, another key's or another size's shard, one whose files do not hold
    what its ``shard.json`` says) is removed, to be extracted again."""
    wanted = set(ranges)
    done: set[tuple[int, int]] = set()
    for name in sorted(os.listdir(root)):
        if name == _ROOT_MARK:
            continue
        match = _RANGE.fullmatch(name)
        span = (int(match[1]), int(match[2])) if match else None
        mark = _read_mark(root / name / _SHARD_MARK) if span in wanted else None
        if (
            span is not None
            and mark is not None
            and mark.get("key") == digest
            and _whole(root / name, span, mark, files, dims)
        ):
            done.add(span)
        else:
            shutil.rmtree(root / name, ignore_errors=True)
    return done


def _whole(
    shard: Path, span: tuple[int, int], mark: dict[str, Any], files: dict[str, str], dims: dict[str, int]
) -> bool:
    """Whether a shard's files hold what its ``shard.json`` says (shapes and positions,
    from the arrays' headers): the head reads nothing it did not check."""
    try:
        n = mark["n"]
        failures = mark["failures"]
        if not isinstance(n, int) or not isinstance(failures, list):
            return False
        if not all(
            isinstance(f, list) and len(f) == 2 and isinstance(f[0], int) and isinstance(f[1], str) for f in failures
        ):
            return False
        rows = np.load(shard / "rows.npy", allow_pickle=False)
        inside = [i for i in rows.tolist() + [f[0] for f in failures] if span[0] <= i < span[1]]
        if rows.shape != (n,) or len(inside) != n + len(failures):
            return False
        shapes = {name: (n, dim) for name, dim in dims.items()}
        for name, shape in shapes.items():
            array = np.load(shard / files[name], mmap_mode="r", allow_pickle=False)
            if array.shape != shape or array.dtype != np.float32:
                return False
        heads = [np.load(shard / f, mmap_mode="r", allow_pickle=False) for f in ("outputs.npy", "image_stats.npy")]
        if any(len(h) != n for h in heads) or len(np.load(shard / "sha256.npy", allow_pickle=False)) != n:
            return False
    except (OSError, ValueError, KeyError, TypeError):
        return False
    return True


def _save_shard(root: Path, span: tuple[int, int], result: dict[str, Any], digest: str, files: dict[str, str]) -> None:
    """Write one shard: arrays, then ``shard.json``, then the folder takes its name."""
    name = f"{span[0]}-{span[1]}"
    tmp = root / f".{name}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for key in ("rows", "batches", "outputs", "image_stats"):
        np.save(tmp / f"{key}.npy", result[key])
    np.save(tmp / "sha256.npy", np.array(result["sha256"], dtype=str))
    if result["logits"] is not None:
        np.save(tmp / "logits.npy", result["logits"])
    for layer, values in result["layers"].items():
        np.save(tmp / files[layer], values)
    mark = {
        "format": SHARD_FORMAT,
        "tool_version": __version__,
        "key": digest,
        "n": len(result["rows"]),
        "failures": [[int(i), reason] for i, reason in result["failures"]],
        "worker": {"node": result["node"], "pid": result["pid"]},
        "seconds": result["seconds"],
    }
    (tmp / _SHARD_MARK).write_text(json.dumps(mark))
    os.replace(tmp, root / name)


# ------------------------------------------------------------------ the head


def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise UserError("--engine ray needs Ray: pip install 'reportgen[ray]'") from None
    return ray


def _connect(ray: Any, address: str | None) -> bool:
    """Join the cluster at ``address`` (or RAY_ADDRESS's, or start one on this machine);
    True when this call started Ray in this process (so it shuts it down)."""
    if ray.is_initialized():
        return False
    address = address or os.environ.get("RAY_ADDRESS") or None
    if address and (why := _unreachable(address)):
        # Ray itself retries an unreachable address for minutes, printing as it goes.
        raise UserError(f"cannot reach the Ray cluster at {address}: {why}")
    try:
        ray.init(address=address, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise UserError(f"cannot reach the Ray cluster at {address or 'RAY_ADDRESS'}: {one_line(exc, 200)}") from None
    return True


def _unreachable(address: str, timeout: float = 5.0) -> str | None:
    """Why nothing answers at ``address`` (``host:port`` or ``ray://host:port``); None
    when something does, or for Ray's own words (``auto``, ``local``)."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return None if address in ("auto", "local") else "expected HOST:PORT (the head's, e.g. 10.0.0.1:6379)"
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as exc:
        return exc.strerror or str(exc) or type(exc).__name__
    return None


def _worker_error(ray: Any, exc: BaseException) -> UserError:
    """A worker's failure in one line: its own error, without Ray's wrapping."""
    cause = getattr(exc, "cause", None)
    if isinstance(cause, UserError):
        return UserError(str(cause))
    if isinstance(exc, ray.exceptions.RayActorError):
        # Ray's message ends with the worker's own last words (its exception's line).
        last = next((line.strip() for line in reversed(str(exc).splitlines()) if line.strip()), "")
        return UserError(f"a Ray worker died {MAX_RESTARTS + 1} times or could not start: {one_line(last, 300)}")
    why = f"{type(cause).__name__}: {one_line(cause, 200)}" if isinstance(cause, BaseException) else one_line(exc, 300)
    return UserError(f"a Ray worker failed: {why}")


def _worker_resources(ray: Any, workers: int | None, use_gpus: bool) -> tuple[int, str, dict[str, float]]:
    """How many workers, of which kind, each asking for what."""
    total = ray.cluster_resources()
    gpus = int(total.get("GPU", 0)) if use_gpus else 0
    cpus = max(1, int(total.get("CPU", 1)))
    node_cpus = max([int(n.get("Resources", {}).get("CPU", 0)) for n in ray.nodes() if n.get("Alive")] or [1])
    if gpus:
        count = workers or gpus
        ask = {"num_gpus": min(1.0, gpus / count), "num_cpus": max(1, min(node_cpus, cpus // count))}
        return count, "GPU", ask
    count = workers or max(1, cpus // min(CPUS_PER_WORKER, cpus))
    return count, "CPU", {"num_cpus": max(1, min(node_cpus, cpus // count))}


def extract_on_ray(
    dataset: ImageDataset,
    model: Path,
    model_options: dict[str, Any],
    model_sha256: str,
    layers: list[LayerInfo],
    pre: Preprocess,
    folder: Path,
    shards: Path,
    key: dict[str, Any],
    *,
    batch_size: int = 32,
    precision: str = "auto",
    address: str | None = None,
    workers: int | None = None,
    shard_images: int = SHARD_IMAGES,
    show_progress: bool = True,
    what: str = "--features",
) -> Features:
    """What :func:`extract.extract` returns, computed by Ray workers shard by shard.

    ``folder`` is the empty directory the features are assembled in (as for the local
    route); ``shards`` the folder that keeps finished shards between runs (see
    :func:`shards_folder`; ``what`` names its cache in messages).  ``model_options`` are
    ``load_model``'s (device, arch, trust_pickle).  The returned features carry the run's
    :class:`EngineRun` as ``engine``."""
    began = time.perf_counter()
    ray = _import_ray()
    records = dataset.records
    ranges = shard_ranges(len(records), shard_images, batch_size)
    dims = {layer.name: layer.dim for layer in layers if layer.name != LOGITS_LAYER}
    files = {name: f"layer_{i}.npy" for i, name in enumerate(dims)}
    digest = _digest(key, batch_size, layers)
    if os.path.lexists(shards) and not is_shards_folder(shards):
        open_shards_folder(shards, what)  # says why, before a cluster is joined for nothing
    started = _connect(ray, address)
    seconds = {"connect": time.perf_counter() - began}
    pids: set[int] = set()
    actors: list[Any] = []
    try:
        open_shards_folder(shards, what)
        done = finished_shards(shards, digest, ranges, files, dims)
        todo = deque(span for span in ranges if span not in done)
        assembly = Assembly(dataset, shards, ranges, layers, files, folder, precision)
        assembly.advance(done)
        count, kind, ask = _worker_resources(ray, workers, model_options.get("device") != "cpu")
        if kind == "CPU" and model_options.get("device") == "cuda":
            raise UserError("--device cuda: the Ray cluster has no GPU (ray status lists its resources)")
        count = max(1, min(count, len(todo)))
        run = EngineRun(
            engine="ray",
            address=str(ray.get_runtime_context().gcs_address),
            nodes=sum(1 for n in ray.nodes() if n.get("Alive")),
            workers=count if todo else 0,
            worker_kind=kind,
            cpus_per_worker=int(ask["num_cpus"]),
            shards=len(ranges),
            shards_reused=len(done),
            shard_images=ranges[0][1] - ranges[0][0] if ranges else 0,
            workers_restarted=0,
        )
        mark = time.perf_counter()
        if todo:
            options = {**model_options, "device": "cpu" if kind == "CPU" else model_options.get("device", "auto")}
            remote = ray.remote(ShardWorker).options(
                max_restarts=MAX_RESTARTS, max_task_retries=MAX_RESTARTS, max_concurrency=IN_FLIGHT, **ask
            )
            actors = [
                remote.remote(
                    str(model.resolve()),
                    options,
                    tuple(pre.size),
                    model_sha256,
                    layers,
                    pre,
                    str(dataset.root.absolute()),  # the workers' working folder is not the head's
                    dataset.max_bytes,
                    batch_size,
                )
                for _ in range(count)
            ]
            worker_seconds = _run_shards(ray, actors, todo, records, digest, files, pids, assembly, done, show_progress)
            seconds["worker compute"] = worker_seconds
        seconds["shards"] = time.perf_counter() - mark
    except ray.exceptions.RayError as exc:
        raise _worker_error(ray, exc) from None
    finally:
        for actor in actors:
            ray.kill(actor)
        if started:
            ray.shutdown()
    run.workers_restarted = max(0, len(pids) - run.workers)
    mark = time.perf_counter()
    features = assembly.finish()
    seconds["assemble"] = assembly.seconds + time.perf_counter() - mark
    run.seconds = {k: round(v, 3) for k, v in seconds.items()}
    features.seconds = time.perf_counter() - began
    features.engine = run.as_dict()
    return features


def _run_shards(
    ray: Any,
    actors: list[Any],
    todo: deque[tuple[int, int]],
    records: list[ImageRecord],
    digest: str,
    files: dict[str, str],
    pids: set[int],
    assembly: Assembly,
    finished: set[tuple[int, int]],
    show_progress: bool,
) -> float:
    """Keep every worker :data:`IN_FLIGHT` shards deep until all are written, each copied
    into the cache as soon as the ones before it are; the seconds the workers spent."""
    pending: dict[Any, tuple[Any, tuple[int, int]]] = {}
    worker_seconds = 0.0
    bar = progress(total=sum(e - s for s, e in todo), desc="extract (ray)", unit="img", enabled=show_progress)

    def submit(actor: Any) -> None:
        if todo:
            span = todo.popleft()
            pending[actor.run.remote(span[0], records[span[0] : span[1]])] = (actor, span)

    try:
        for _ in range(IN_FLIGHT):
            for actor in actors:
                submit(actor)
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1)
            actor, span = pending.pop(ready[0])
            result = ray.get(ready[0])
            try:
                _save_shard(assembly.root, span, result, digest, files)
            except OSError as exc:
                raise UserError(f"cannot write a shard under {assembly.root}: {exc.strerror or exc}") from None
            finished.add(span)
            assembly.advance(finished)
            pids.add(result["pid"])
            worker_seconds += result["seconds"]
            bar.update(span[1] - span[0])
            interrupts.check()
            submit(actor)
    finally:
        bar.close()
    return worker_seconds


def _digest(key: dict[str, Any], batch_size: int, layers: list[LayerInfo]) -> str:
    """What a finished shard must have been made with to be reused."""
    made = {
        "format": SHARD_FORMAT,
        "key": key,
        "batch_size": batch_size,
        "layers": [[layer.name, layer.dim, list(layer.cells) if layer.cells else None] for layer in layers],
    }
    return hashlib.sha256(json.dumps(made, sort_keys=True).encode()).hexdigest()


class Assembly:
    """The cache's files, filled from the finished shards in record order as they become
    available (a shard waits on disk for the ones before it): the local pass's writes,
    in the local pass's order, so the files come out the same, a float16 layer widening
    where the local pass would widen it."""

    def __init__(
        self,
        dataset: ImageDataset,
        root: Path,
        ranges: list[tuple[int, int]],
        layers: list[LayerInfo],
        files: dict[str, str],
        folder: Path,
        precision: str,
    ) -> None:
        self.records = dataset.records
        self.root = root
        self.ranges = ranges
        self.layers = layers
        self.files = files
        self.folder = folder
        total = len(self.records)
        self.dims = {layer.name: layer.dim for layer in layers if layer.name != LOGITS_LAYER}
        self.store = FeatureStore(folder, total, self.dims, feature_dtype(precision, total, sum(self.dims.values())))
        self.next = 0  # the first range not yet copied
        self.filled = 0
        self.rows: list[np.ndarray] = []
        self.digests: list[str] = []
        self.outputs: list[np.ndarray] = []
        self.logits: list[np.ndarray] = []
        self.stats: list[np.ndarray] = []
        self.skipped: list[Skipped] = []
        self.seconds = 0.0  # spent copying

    def advance(self, finished: set[tuple[int, int]]) -> None:
        """Copy every finished shard that continues the ones already copied."""
        began = time.perf_counter()
        while self.next < len(self.ranges) and self.ranges[self.next] in finished:
            self._copy(self.root / "{}-{}".format(*self.ranges[self.next]))
            self.next += 1
        self.seconds += time.perf_counter() - began

    def _copy(self, shard: Path) -> None:
        mark = _read_mark(shard / _SHARD_MARK) or {}
        n = int(mark.get("n", -1))
        rows = np.load(shard / "rows.npy", allow_pickle=False)
        if len(rows) != n:
            raise UserError(f"the shard {shard} holds {len(rows)} rows, its shard.json says {n}; delete it and rerun")
        self.rows.append(rows)
        self.digests += [str(d) for d in np.load(shard / "sha256.npy", allow_pickle=False)]
        self.outputs.append(np.load(shard / "outputs.npy", allow_pickle=False))
        self.stats.append(np.load(shard / "image_stats.npy", allow_pickle=False))
        if (shard / "logits.npy").is_file():
            self.logits.append(np.load(shard / "logits.npy", allow_pickle=False))
        self.skipped += [Skipped(self.records[int(i)].file, str(reason)) for i, reason in mark["failures"]]
        batches = np.load(shard / "batches.npy", allow_pickle=False)
        for name in self.dims:
            values = open_rows(shard / self.files[name])
            if self.store.arrays[name].dtype == np.float16 and beyond_float16(values):
                # Batch by batch, as the local pass wrote it: the layer widens at the
                # first batch that leaves float16's range, not at the shard's start.
                at = 0
                for size in batches:
                    self.store.write(name, self.filled + at, values[at : at + size])
                    at += int(size)
            else:
                self.store.write(name, self.filled, values)
        self.filled += n

    def finish(self) -> Features:
        """The features, once every shard is copied."""
        if self.next != len(self.ranges):
            raise ValueError(f"{len(self.ranges) - self.next} shards are not copied yet")
        arrays = self.store.finish(self.filled)
        order = np.concatenate(self.rows) if self.rows else np.empty(0, np.int64)
        k = next((o.shape[1] for o in self.outputs), 0)
        outputs = np.concatenate(self.outputs) if self.outputs else np.empty((0, k), np.float32)
        if LOGITS_LAYER in {layer.name for layer in self.layers}:
            arrays[LOGITS_LAYER] = outputs
        return Features(
            files=[self.records[i].file for i in order],
            labels=np.array([self.records[i].folder_class for i in order], np.int64),
            sha256=self.digests,
            outputs=outputs,
            layers=self.layers,
            arrays=arrays,
            logits=np.concatenate(self.logits) if self.logits else None,
            skipped=sorted(self.skipped, key=lambda s: s.file),
            folder=self.folder,
            image_stats=np.concatenate(self.stats) if self.stats else np.empty((0, len(PROPERTIES)), np.float32),
        )
