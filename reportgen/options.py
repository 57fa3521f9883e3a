"""Every command-line option, declared once: its flags, help, default, the values it
accepts and the check its value must pass.  The subcommands add the options they take
from here (``cli.py``), and :class:`~reportgen.config.AuditConfig` applies the same
checks to a configuration built in Python, so the command line and the API refuse the
same values with the same words."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from reportgen.analyses.cam import CAM_METHODS
from reportgen.data import MAX_IMAGE_BYTES
from reportgen.errors import UserError
from reportgen.models import POOL_VALUES
from reportgen.ray_engine import SHARD_IMAGES

MAX_SIDE = 8192  # the largest input side --size accepts
DEVICES = ("auto", "cpu", "cuda")
RESIZES = ("stretch", "crop")
KNN_METRICS = ("euclidean", "cosine")
KNN_SEARCH = ("auto", "exact", "approximate")
PRECISIONS = ("auto", "float32", "float16")  # of the stored layer features (extract.feature_dtype)
ENGINES = ("local", "ray")  # where extraction runs (ray: ``ray_engine``)


def parse_size(text: str) -> tuple[int, int]:
    """``224`` -> (224, 224); ``224x192`` -> (224, 192) as (height, width)."""
    parts = text.lower().replace("×", "x").split("x")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise UserError(f"--size expects N or HxW (e.g. 224 or 224x192), got {text!r}") from None
    if len(values) == 1:
        values = values * 2
    if len(values) != 2 or not all(0 < v <= MAX_SIDE for v in values):
        raise UserError(f"--size expects N or HxW with sides from 1 to {MAX_SIDE}, got {text!r}")
    return values[0], values[1]


def parse_floats(text: str, option: str) -> tuple[float, ...]:
    try:
        values = tuple(float(v) for v in text.split(",") if v.strip())
    except ValueError:
        raise UserError(f"{option} expects a comma list of numbers, got {text!r}") from None
    if len(values) not in (1, 3):
        raise UserError(f"{option} expects 1 or 3 numbers, got {len(values)}")
    return values


def parse_gates(text: str, option: str, known: tuple[str, ...]) -> dict[str, float]:
    """``accuracy=0.9,macro_f1=0.8`` -> {"accuracy": 0.9, "macro_f1": 0.8}."""
    gates: dict[str, float] = {}
    for part in text.split(","):
        if not part.strip():
            continue
        name, sep, value = part.partition("=")
        name = name.strip()
        if not sep or name not in known:
            raise UserError(f"{option} expects NAME=VALUE with NAME one of {', '.join(known)}; got {part.strip()!r}")
        try:
            gates[name] = float(value)
        except ValueError:
            raise UserError(f"{option}: {name} needs a number, got {value.strip()!r}") from None
    return gates


def _names(text: str) -> list[str]:
    return [x.strip() for x in text.split(",") if x.strip()]


@dataclass(frozen=True)
class Option:
    """One option: argparse's settings, plus the check its value must pass (``check``
    returns True for a good value; ``must`` completes "``flag`` must ..." otherwise)."""

    flags: tuple[str, ...]
    dest: str
    help: str
    default: Any = None
    type: Callable[[str], Any] | None = None
    choices: tuple[str, ...] | None = None
    metavar: str | None = None
    action: str | None = None
    check: Callable[[Any], bool] | None = None
    must: str = ""

    def add_to(self, parser: argparse.ArgumentParser | argparse._ArgumentGroup) -> None:
        kwargs: dict[str, Any] = {"dest": self.dest, "help": self.help, "default": self.default}
        if self.action is not None:
            kwargs["action"] = self.action
        else:
            for key in ("type", "choices", "metavar"):
                if getattr(self, key) is not None:
                    kwargs[key] = getattr(self, key)
        parser.add_argument(*self.flags, **kwargs)

    def validate(self, value: Any) -> None:
        """Refuse ``value`` as the command line would (for configurations built in Python)."""
        if self.choices is not None and value is not None and value not in self.choices:
            raise UserError(f"{self.flags[0]} must be one of {', '.join(self.choices)}, got {value!r}")
        if self.check is not None and value is not None and not self.check(value):
            raise UserError(f"{self.flags[0]} must {self.must}, got {value!r}")

    def but(self, **changes: Any) -> Option:
        """The same option with other settings (another help text, say)."""
        return replace(self, **changes)


def _positive(value: int) -> bool:
    return value >= 1


def _not_negative(value: int) -> bool:
    return value >= 0


# ------------------------------------------------------------------ shared by several commands

SIZE = Option(("--size",), "size", "input side (default: read from the model where it is fixed)", type=parse_size,
              metavar="N|HxW")  # fmt: skip
MEAN = Option(("--mean",), "mean", "normalisation mean (default: ImageNet 0.485,0.456,0.406, or the model's own)",
              type=lambda s: parse_floats(s, "--mean"), metavar="R,G,B")  # fmt: skip
STD = Option(("--std",), "std", "normalisation std (default: ImageNet 0.229,0.224,0.225, or the model's own)",
             type=lambda s: parse_floats(s, "--std"), metavar="R,G,B", check=lambda v: all(x > 0 for x in v),
             must="be positive")  # fmt: skip
RESIZE = Option(("--resize",), "resize",
                "stretch: whole image to the input size; crop: shorter side to size/0.875, centre crop (default: "
                "crop where the model's hub files say it centre-crops, else stretch)", choices=RESIZES)  # fmt: skip
ARCH = Option(("--arch",), "arch", "torchvision architecture of a state_dict file (e.g. resnet18)", metavar="NAME")
TRUST_PICKLE = Option(("--trust-pickle",), "trust_pickle",
                      "allow loading pickled Python objects (runs code from the file; only for files you trust)",
                      default=False, action="store_true")  # fmt: skip
DEVICE = Option(("--device",), "device", "where to run the model (default: auto, CUDA when present)", default="auto",
                choices=DEVICES)  # fmt: skip
BATCH_SIZE = Option(("--batch-size",), "batch_size", "images per forward pass (default: 32)", default=32, type=int,
                    metavar="N", check=_positive, must="be at least 1")  # fmt: skip
QUIET = Option(("-q", "--quiet"), "quiet", "no progress bars or status lines", default=False, action="store_true")
SEED = Option(("--seed",), "seed", "seed for every random choice (default: 0)", default=0, type=int)
LABELS = Option(("--labels",), "labels", "class names in output order, one per line", type=Path, metavar="FILE")
CAM = Option(("--cam",), "cam", "activation-map method (default: gradcam)", default="gradcam", choices=CAM_METHODS)

# The model file and how its input is made: every command that runs a model takes these.
MODEL_OPTIONS = [SIZE, MEAN, STD, RESIZE, ARCH, TRUST_PICKLE, DEVICE, BATCH_SIZE]

# ------------------------------------------------------------------ audit

AUDIT_GATES = ("accuracy", "top5_accuracy", "balanced_accuracy", "macro_f1", "mean_average_precision", "micro_f1")

AUDIT_GROUPS: list[tuple[str, list[Option]]] = [
    ("model and preprocessing", MODEL_OPTIONS),
    (
        "what to audit",
        [
            Option(("--layers",), "layers",
                   "layers to audit, by module path or tensor name (default: input, end of each stage or block, "
                   "penultimate, logits; see `reportgen layers`)", type=_names, metavar="A,B,..."),
            Option(("--pool-values",), "pool_values",
                   f"values each spatial layer keeps per image for kNN and t-SNE: the means of the largest grid "
                   f"(up to 8x8) with channels x cells <= N; 0 keeps only the global mean (default: {POOL_VALUES})",
                   default=POOL_VALUES, type=int, metavar="N", check=_not_negative,
                   must="be 0 (the global mean) or more"),
            LABELS,
            Option(("--labels-file",), "labels_file",
                   "the label of each image of a flat IMAGES folder: a CSV, TSV, JSON Lines or Parquet table of "
                   "path and label (other columns are metadata), or a .txt of one label per line for the images "
                   "in sorted file order (ImageNet's validation ground truth)", type=Path, metavar="FILE"),
            Option(("--path-column",), "path_column",
                   "the path column of a manifest or --labels-file (default: the first of path, file, filename, "
                   "file_name, filepath, image, image_path)", metavar="NAME"),
            Option(("--label-column",), "label_column",
                   "the label column, names or output indices (default: the first of label, labels, class, target, "
                   "category; none: unlabelled)", metavar="NAME"),
            Option(("--split",), "split",
                   "the split of a saved Hugging Face dataset (a DatasetDict folder) to audit (default: its only one)",
                   metavar="NAME"),
            Option(("--multi-label",), "multi_label",
                   "several labels per image: a label cell of a manifest or --labels-file is a set (a list, or "
                   "names split on --label-separator; rows of one file add up), the model's outputs are independent "
                   "(a final sigmoid, or logits it is applied to); found alone when a label cell holds a list",
                   default=False, action="store_true"),
            Option(("--label-separator",), "label_separator",
                   "what separates the labels of one text cell with --multi-label (default: |)", default="|",
                   metavar="TEXT", check=lambda v: v != "", must="not be empty"),
            Option(("--threshold",), "threshold",
                   "a multi-label model predicts a label when its probability is at least this (default: 0.5)",
                   default=0.5, type=float, metavar="P", check=lambda v: 0.0 < v < 1.0, must="be between 0 and 1"),
            Option(("--thresholds",), "thresholds",
                   "per-label thresholds of a multi-label model: a CSV/TSV of label,threshold or a JSON object "
                   "{label: threshold}; labels it leaves out keep --threshold", type=Path, metavar="FILE"),
            Option(("--group-by",), "group_by",
                   "a metadata column of the manifest (a split, a patient, a site): near-duplicate pairs across its "
                   "values are marked and counted as leakage", metavar="COLUMN"),
            Option(("--follow-links",), "follow_links",
                   "follow symbolic links that lead out of the image folders (default: list them under Skipped)",
                   default=False, action="store_true"),
            Option(("--max-image-mb",), "max_image_mb",
                   f"image files larger than N MB are skipped unread, listed under Skipped "
                   f"(default: {MAX_IMAGE_BYTES >> 20})", default=MAX_IMAGE_BYTES >> 20, type=int, metavar="N",
                   check=_positive, must="be at least 1"),
            SEED,
            Option(("--features",), "features",
                   "features cache, a directory of .npy files (default: <report>.features beside the report)",
                   type=Path, metavar="DIR"),
            Option(("--no-cache",), "use_cache", "neither read nor write the features cache", default=True,
                   action="store_false"),
            Option(("--feature-precision",), "feature_precision",
                   "how the layer features are stored: float16 halves disk and memory at a relative rounding of "
                   "at most 0.05%% per value; auto (default) uses it once float32 features would pass 2 GiB "
                   "(about 100,000 images at 5,000 values each)", default="auto", choices=PRECISIONS),
        ],
    ),
    (
        "extraction engine",
        [
            Option(("--engine",), "engine",
                   "local (default): extract on this machine; ray: on a Ray cluster, shard by shard, into the same "
                   "features cache (resumable; needs pip install 'reportgen[ray]')", default="local",
                   choices=ENGINES),
            Option(("--ray-address",), "ray_address",
                   "the Ray cluster to join, e.g. 10.0.0.1:6379 (default: RAY_ADDRESS, else the Ray running on "
                   "this machine, else one started for the run)", metavar="ADDR"),
            Option(("--ray-workers",), "ray_workers",
                   "model workers on the cluster (default: one per GPU, else one per 4 CPUs)", type=int,
                   metavar="N", check=_positive, must="be at least 1"),
            Option(("--shard-images",), "shard_images",
                   f"images per shard, rounded up to whole batches: the unit a worker runs, retries and a rerun "
                   f"reuses (default: {SHARD_IMAGES})", default=SHARD_IMAGES, type=int, metavar="N",
                   check=_positive, must="be at least 1"),
        ],
    ),
    (
        "nearest neighbours and t-SNE",
        [
            Option(("-k",), "k", "neighbours per query (default: 10)", default=10, type=int, check=_positive,
                   must="be at least 1"),
            Option(("--metric",), "metric", "feature-space distance (default: euclidean)", default="euclidean",
                   choices=KNN_METRICS),
            Option(("--knn-search",), "knn_search",
                   "auto (default): exact neighbours unless images x images x dims of a layer exceeds 4e11, "
                   "counting 256 per pair for the selection (about 17,000 images at 1,024 dims), then an approximate "
                   "index whose recall the report states; exact: always exact; approximate: always the index",
                   default="auto", choices=KNN_SEARCH),
            Option(("--reference",), "reference",
                   "labeled folder the neighbours come from (e.g. the training set); default: the audited folder, "
                   "leaving the query out", type=Path, metavar="DIR"),
            Option(("--queries-per-class",), "queries_per_class",
                   "kNN queries per class (default: 3), plus misclassified images", default=3, type=int,
                   metavar="N", check=_not_negative, must="not be negative"),
            Option(("--max-queries",), "max_queries", "cap on kNN queries shown (default: 60)", default=60,
                   type=int, metavar="N", check=_not_negative, must="not be negative"),
            Option(("--tsne-max-points",), "tsne_max_points",
                   "above this many images t-SNE embeds a stratified sample (default: 10000)", default=10000,
                   type=int, metavar="N", check=lambda v: v >= 10, must="be at least 10"),
            Option(("--no-tsne",), "tsne", "skip the t-SNE section (and the explorer, which draws on it)",
                   default=True, action="store_false"),
            Option(("--no-explorer",), "explorer",
                   "leave out the interactive explorer (its thumbnails and neighbour lists are the largest part "
                   "of a big report)", default=True, action="store_false"),
        ],
    ),
    (
        "Grad-CAM and galleries",
        [
            CAM,
            Option(("--cam-layer",), "cam_layer",
                   "module or tensor the CAM explains (default: per family: a CNN's last stage, a ViT's last "
                   "attention input)", metavar="NAME"),
            Option(("--gallery-size",), "gallery_size", "images per gallery (default: 6; 0 turns galleries off)",
                   default=6, type=int, metavar="N", check=_not_negative, must="not be negative"),
            Option(("--channels",), "channels", "channels in the channel view (default: 8; 0 turns it off)",
                   default=8, type=int, metavar="N", check=_not_negative, must="not be negative"),
            Option(("--shortcut-images",), "shortcut_images",
                   "images per class whose maps are read to find possible shortcuts (default: 24; 0 turns it off)",
                   default=24, type=int, metavar="N", check=_not_negative, must="not be negative"),
            Option(("--robustness-images",), "robustness_images",
                   "labelled images, stratified by class, run under six corruptions at three severities "
                   "(default: 128; 0 turns it off)",
                   default=128, type=int, metavar="N", check=_not_negative, must="not be negative"),
            Option(("--faithfulness-images",), "faithfulness_images",
                   "images, stratified by predicted class, on which the maps are checked: deletion and insertion "
                   "curves, randomised weights, top class against runner-up (default: 32; 0 turns it off)",
                   default=32, type=int, metavar="N", check=_not_negative, must="not be negative"),
        ],
    ),
    (
        "feature visualisation",
        [
            Option(("--units",), "units",
                   "synthesise what N channels of each of the last two spatial layers, and every class (up to 20), "
                   "respond to (default: 0, off; it costs optimisation steps per unit)", default=0, type=int,
                   metavar="N", check=_not_negative, must="not be negative"),
            Option(("--unit-steps",), "unit_steps", "optimisation steps per synthesised image (default: 200)",
                   default=200, type=int, metavar="N", check=_positive, must="be at least 1"),
        ],
    ),
    (
        "gates and output",
        [
            Option(("--fail-under",), "fail_under",
                   f"exit with status 3 after writing the report when a metric is below V "
                   f"({', '.join(AUDIT_GATES)})", default={},
                   type=lambda s: parse_gates(s, "--fail-under", AUDIT_GATES), metavar="NAME=V,..."),
            QUIET,
        ],
    ),
]  # fmt: skip

AUDIT_OPTIONS = [option for _, group in AUDIT_GROUPS for option in group]
