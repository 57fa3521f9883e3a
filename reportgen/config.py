"""The options of an audit in one dataclass, checked once (with the command line's own
checks, ``options.py``)."""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from reportgen.data import MAX_IMAGE_BYTES
from reportgen.errors import UserError
from reportgen.models import POOL_VALUES
from reportgen.options import AUDIT_OPTIONS
from reportgen.ray_engine import SHARD_IMAGES


def source_date_epoch() -> int | None:
    """``SOURCE_DATE_EPOCH`` (reproducible builds): when set, timestamps come from it and
    timings are left out of the report."""
    value = os.environ.get("SOURCE_DATE_EPOCH")
    if value is None or not value.strip():
        return None
    try:
        return int(value)
    except ValueError:
        raise UserError(f"SOURCE_DATE_EPOCH must be an integer, got {value!r}") from None


def timestamp(epoch: int | None) -> str:
    """ISO 8601 UTC time to the second: ``epoch`` (from ``source_date_epoch``) or now."""
    moment = datetime.fromtimestamp(epoch, UTC) if epoch is not None else datetime.now(UTC)
    return moment.replace(microsecond=0).isoformat().replace("+00:00", "Z")


@dataclass
class AuditConfig:
    """Everything ``reportgen audit`` accepts (see ``reportgen audit --help``)."""

    model: Path
    images: Path
    output: Path = Path("report.html")
    follow_links: bool = False  # follow symbolic links out of the image folders
    max_image_mb: int = MAX_IMAGE_BYTES >> 20  # larger image files are skipped, unread
    size: tuple[int, int] | None = None
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    resize: str | None = None  # None: the model's hub files decide, else stretch
    layers: list[str] | None = None
    pool_values: int = POOL_VALUES  # per spatial layer and image: channels x grid cells (0: global mean)
    labels: Path | None = None
    labels_file: Path | None = None  # file -> label for a flat folder (see ``reportgen.manifest``)
    path_column: str | None = None  # of a manifest or --labels-file (default: the first of manifest.PATH_COLUMNS)
    label_column: str | None = None  # (default: the first of manifest.LABEL_COLUMNS)
    group_by: str | None = None  # metadata column whose groups must not share near-duplicates
    split: str | None = None  # of a saved Hugging Face DatasetDict (default: its only split)
    multi_label: bool = False  # several labels per image (see ``analyses.multilabel``); also found from the labels
    label_separator: str = "|"  # between the labels of one text cell
    threshold: float = 0.5  # a multi-label model predicts a label at p >= threshold
    thresholds: Path | None = None  # per-label thresholds (see ``labels.read_thresholds``)
    arch: str | None = None
    trust_pickle: bool = False
    device: str = "auto"
    batch_size: int = 32
    seed: int = 0
    features: Path | None = None  # default: <output stem>.features beside the report
    feature_precision: str = "auto"  # float16 when float32 features would pass extract.FLOAT16_ABOVE
    use_cache: bool = True
    quiet: bool = False
    # Decode large sets in worker processes (data.PROCESS_DECODE_MIN).  The CLI turns it on;
    # a script that calls the pipeline must then guard its main module, as every program
    # that starts Python worker processes must (``if __name__ == "__main__":``).
    decode_processes: bool = False
    # where extraction runs (``ray_engine``): how, not what; the same features either way
    engine: str = "local"
    ray_address: str | None = None
    ray_workers: int | None = None
    shard_images: int = SHARD_IMAGES
    # kNN and t-SNE
    k: int = 10
    metric: str = "euclidean"
    knn_search: str = "auto"  # exact up to ann.EXACT_WORK, then an index with measured recall
    reference: Path | None = None
    queries_per_class: int = 3
    max_queries: int = 60
    tsne_max_points: int = 10000
    tsne: bool = True
    explorer: bool = True  # the interactive map (needs the t-SNE)
    shortcut_images: int = 24  # per class, for the possible-shortcuts test (0: off)
    robustness_images: int = 128  # stratified sample run under every corruption (0: off)
    faithfulness_images: int = 32  # images the maps are checked on (0: off)
    # Grad-CAM and galleries
    cam: str = "gradcam"
    cam_layer: str | None = None
    gallery_size: int = 6
    channels: int = 8
    channel_images: int = 5
    # feature visualisation (off by default: it costs optimisation steps per unit)
    units: int = 0
    unit_steps: int = 200
    # gates
    fail_under: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # The command line's own checks (``options.py``), for a configuration made in Python too.
        for option in AUDIT_OPTIONS:
            option.validate(getattr(self, option.dest))
        if self.channel_images < 1:
            raise UserError("channel_images must be at least 1")
        self._check_outputs_apart()

    def _check_outputs_apart(self) -> None:
        """The report, its JSON and the features cache must be three different files."""
        html, json = self.output.resolve(), self.json_path.resolve()
        if html == json:
            raise UserError(
                f"-o {self.output}: the JSON sidecar would be the report itself; give the report an .html name"
            )
        if self.use_cache and self.cache_path.resolve() in (html, json):
            raise UserError(f"--features {self.cache_path} would overwrite the report or its JSON; choose another path")

    @property
    def max_image_bytes(self) -> int:
        return self.max_image_mb << 20

    @property
    def json_path(self) -> Path:
        return self.output.with_suffix(".json")

    @property
    def dataset_path(self) -> Path:
        """Where a saved Hugging Face dataset's pictures are written (see ``hf_dataset``)."""
        return self.output.with_name(self.output.stem + ".dataset")

    @property
    def cache_path(self) -> Path:
        if self.features is not None:
            return self.features
        return self.output.with_name(self.output.stem + ".features")

    def extraction_options(self) -> dict[str, Any]:
        """The options that change extracted features (part of the cache key)."""
        return {
            "size": list(self.size) if self.size else None,
            "mean": list(self.mean) if self.mean else None,
            "std": list(self.std) if self.std else None,
            "resize": self.resize,
            "layers": self.layers,
            "pool_values": self.pool_values,
            "feature_precision": self.feature_precision,
            "arch": self.arch,
        }

    def recorded(self) -> dict[str, Any]:
        """The configuration as recorded in the report (paths as given)."""
        out: dict[str, Any] = {}
        for key, value in asdict(self).items():
            if isinstance(value, Path):
                value = str(value)
            elif isinstance(value, tuple):
                value = list(value)
            out[key] = value
        # How the run went about it, not what it computed: the same report either way.
        out.pop("quiet", None)
        for how in ("decode_processes", "engine", "ray_address", "ray_workers", "shard_images"):
            out.pop(how, None)
        return out
