"""``reportgen compare OLD NEW``: what changed between two audits of the same images.

Inputs are two JSON sidecars (or their HTML reports); their features caches are used
when present.  Everything is computed on the images both audits used:

* accuracy of each model and of their difference, with paired bootstrap 95% intervals;
* per-class precision / recall / F1 and their deltas;
* every changed prediction, in four groups: right before and wrong now (regressions), the
  reverse (fixes), wrong before and differently wrong now, and changes on images without
  a known class; with both predictions, both scores and, when the user names the two
  model files, both Grad-CAM maps;
* the confusion-matrix difference;
* per-layer representation similarity (linear CKA, kNN overlap@10) for the layers the two
  audits share by position, when both features caches exist;
* files added, removed or changed between the two runs.
"""

from __future__ import annotations

import csv
import gzip
import json
import math
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from reportgen import __version__
from reportgen.analyses.calibration import expected_calibration_error
from reportgen.analyses.metadata import column_breakdown
from reportgen.analyses.metrics import classification_metrics
from reportgen.analyses.similarity import PairedAccuracy, knn_overlap, linear_cka, paired_bootstrap
from reportgen.config import source_date_epoch, timestamp
from reportgen.data import MAX_IMAGE_BYTES, UNTOLD_SIDE, Preprocess, contained, is_plain_relative
from reportgen.errors import UserError, one_line, printable
from reportgen.extract import CachedRun, default_cache_path, load_cache
from reportgen.options import MAX_SIDE
from reportgen.outputs import PREDICTION_COLUMNS
from reportgen.report import JSON_SCHEMA_VERSION
from reportgen.util import file_sha256, round_floats

COMPARE_GATES = (
    "accuracy_drop",
    "class_recall_drop",
    "macro_f1_drop",
    "regressions",
    "negative_flip_rate",
    "ece_increase",
    "slice_accuracy_drop",
    "robustness_drop",
)
MAX_SLICES = 100  # slices read from one audit JSON (an audit writes at most analyses.slices.SHOWN_SLICES)
MAX_METADATA_COLUMNS = 50  # metadata columns a comparison breaks changes down by
SHOWN_FLIPS = 60


# The most predictions an audit JSON (or its CSV) may hold unless --max-images says
# more: a million-image audit fits with room; a crafted file cannot make compare spend
# minutes and gigabytes on rows it will refuse anyway.
MAX_IMAGES = 2_000_000
JSON_BYTES_PER_IMAGE = 512  # an audit JSON may be this large per allowed image (a real one: ~200)
_CSV_FIELD = 4096  # characters in one CSV field (a path, a class name, a hash)


@dataclass
class Audit:
    """One audit as read back from disk (its JSON checked, see :func:`load_audit`)."""

    json_path: Path
    data: dict[str, Any]
    cache: Path | None  # its features cache, when one exists that holds this audit's images
    cached: CachedRun | None = None  # that cache, opened (arrays memory-mapped)
    csv_path: Path | None = None  # the predictions CSV it was read from, above 200,000 images

    @property
    def label(self) -> str:
        return f"{self.data['model']['path']} ({self.data['model']['format']})"


def load_audit(path: Path, *, max_images: int = MAX_IMAGES) -> Audit:
    """Read an audit's JSON sidecar (given, or beside the given HTML) and check every part
    ``compare`` reads: an audit JSON is untrusted input (see the README), so a malformed
    one is refused in one line, and no size it states may cost more than ``max_images``
    allows."""
    json_path = path.with_suffix(".json") if path.suffix.lower() in (".html", ".htm") else path
    limit = JSON_BYTES_PER_IMAGE * max_images
    try:
        st = os.stat(json_path)
        if not stat.S_ISREG(st.st_mode):
            raise UserError(f"{json_path} is not a regular file")
        if st.st_size > limit:
            raise UserError(
                f"{json_path} is {st.st_size / (1 << 20):,.0f} MB, more than an audit of {max_images:,} images "
                "needs (--max-images raises the cap)"
            )
        data = json.loads(json_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"audit not found: {json_path}") from None
    except RecursionError:
        raise UserError(f"cannot read {json_path} as a reportgen JSON sidecar: nested too deeply") from None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {json_path} as a reportgen JSON sidecar: {one_line(exc, 160)}") from None
    if not isinstance(data, dict) or "predictions" not in data or "schema_version" not in data:
        raise UserError(f"{json_path} is not a reportgen audit (no schema_version / predictions)")
    version = data["schema_version"]
    if not isinstance(version, int) or isinstance(version, bool) or version > JSON_SCHEMA_VERSION:
        raise UserError(
            f"{json_path} was written by reportgen {printable(str(data.get('tool_version', '?')))} with JSON schema "
            f"{printable(str(version))}; this reportgen ({__version__}) reads schema {JSON_SCHEMA_VERSION} and older: "
            "upgrade reportgen"
        )
    csv_path = None
    if data["predictions"] is None:
        data["predictions"], csv_path = _predictions_from_csv(data, json_path, max_images)
    _check_audit(data, json_path, max_images)
    cached = _own_cache(data, json_path)
    return Audit(json_path, data, cached.features.folder if cached else None, cached, csv_path)


class _Shape:
    """Checks of one audit JSON's structure, each failure one line that says where."""

    def __init__(self, json_path: Path):
        self.json_path = json_path

    def fail(self, where: str, what: str) -> NoReturn:
        raise UserError(f"{self.json_path}: {where} {what}; this is not an audit JSON reportgen wrote")

    def obj(self, value: Any, where: str, *, optional: bool = False) -> dict[str, Any]:
        if value is None and optional:
            return {}
        if not isinstance(value, dict):
            self.fail(where, "is not an object")
        return value

    def text(self, value: Any, where: str, *, optional: bool = False) -> str | None:
        if value is None and optional:
            return None
        if not isinstance(value, str):
            self.fail(where, "is not a string")
        return value

    def number(self, value: Any, where: str, *, optional: bool = False) -> float | None:
        if value is None and optional:
            return None
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            self.fail(where, "is not a finite number")
        return float(value)

    def items(self, value: Any, where: str, limit: int) -> list[Any]:
        if not isinstance(value, list):
            self.fail(where, "is not a list")
        if len(value) > limit:
            raise UserError(
                f"{self.json_path}: {where} has {len(value):,} entries, more than {limit:,} "
                "(--max-images raises the cap)"
            )
        return value


def _check_audit(data: dict[str, Any], json_path: Path, max_images: int) -> None:
    """Refuse an audit JSON whose parts ``compare`` reads have the wrong types, whose
    predictions name classes the audit does not list, whose files repeat, or whose image
    entries could name files outside its image folder (every entry must be a relative
    POSIX path with no ``..``, as ``audit`` writes them)."""
    shape = _Shape(json_path)
    model = shape.obj(data.get("model"), "model")
    for key in ("path", "format", "sha256"):
        shape.text(model.get(key), f"model.{key}")
    dataset = shape.obj(data.get("dataset"), "dataset")
    shape.text(dataset.get("root"), "dataset.root")
    shape.text(dataset.get("root_resolved"), "dataset.root_resolved", optional=True)
    shape.number(dataset.get("n_images"), "dataset.n_images")
    for key in ("tool_version", "generated_at"):
        shape.text(data.get(key), key, optional=True)
        data.setdefault(key, None)
    shape.number(data.get("accuracy"), "accuracy", optional=True)
    classes = shape.items(data.get("classes"), "classes", max_images)
    for i, name in enumerate(classes):
        shape.text(name, f"classes[{i}]")
    if len(set(classes)) != len(classes):
        shape.fail("classes", "repeats a name")
    known = set(classes)
    multi = dataset.get("multi_label") is True
    seen: set[str] = set()
    for i, entry in enumerate(shape.items(data["predictions"], "predictions", max_images)):
        where = f"predictions[{i}]"
        entry = shape.obj(entry, where)
        file = entry.get("file")
        if not is_plain_relative(file):
            raise UserError(
                f"{json_path}: the image entry {printable(repr(file))} is not a relative path inside the image folder; "
                "refusing this audit JSON"
            )
        if file in seen:
            shape.fail(where, f"repeats the file {printable(repr(file))}")
        seen.add(file)
        shape.text(entry.get("label"), f"{where}.label", optional=True)
        if multi:
            for key in ("labels", "predicted"):
                names = entry.get(key)
                if names is None and key == "labels":
                    continue
                if (
                    not isinstance(names, list)
                    or len(names) > len(classes)
                    or not all(isinstance(n, str) and n in known for n in names)
                ):
                    shape.fail(f"{where}.{key}", "is not a list of the audit's classes")
        elif entry.get("pred") not in known:
            shape.fail(f"{where}.pred", "is not one of the audit's classes")
        shape.number(entry.get("score"), f"{where}.score")
        shape.text(entry.get("sha256"), f"{where}.sha256", optional=True)
    for i, entry in enumerate(shape.items(data.get("skipped") or [], "skipped", max_images)):
        entry = shape.obj(entry, f"skipped[{i}]")
        if not is_plain_relative(entry.get("file")):
            raise UserError(
                f"{json_path}: the image entry {printable(repr(entry.get('file')))} is not a relative path inside "
                "the image folder; refusing this audit JSON"
            )
    data["skipped"] = data.get("skipped") or []
    options = shape.obj(data.get("options"), "options", optional=True)
    shape.text(options.get("arch"), "options.arch", optional=True)
    shape.text(options.get("features"), "options.features", optional=True)
    if data.get("slices") is not None:
        for i, entry in enumerate(shape.items(data["slices"], "slices", MAX_SLICES)):
            entry = shape.obj(entry, f"slices[{i}]")
            shape.number(entry.get("id"), f"slices[{i}].id")
            shape.text(entry.get("description"), f"slices[{i}].description", optional=True)
            for j, file in enumerate(shape.items(entry.get("files"), f"slices[{i}].files", max_images)):
                shape.text(file, f"slices[{i}].files[{j}]")
    if data.get("robustness") is not None:
        robustness = shape.obj(data["robustness"], "robustness")
        shape.number(robustness.get("images"), "robustness.images")
        for i, entry in enumerate(shape.items(robustness.get("corruptions"), "robustness.corruptions", MAX_SLICES)):
            entry = shape.obj(entry, f"robustness.corruptions[{i}]")
            shape.text(entry.get("name"), f"robustness.corruptions[{i}].name")
            shape.number(entry.get("severity"), f"robustness.corruptions[{i}].severity")
            shape.number(entry.get("accuracy"), f"robustness.corruptions[{i}].accuracy")
    cam = shape.obj(data.get("cam"), "cam", optional=True)
    shape.text(cam.get("layer"), "cam.layer", optional=True)
    shape.obj(data.get("preprocessing"), "preprocessing")


def preprocessing_of(audit: Audit) -> Preprocess:
    """The preprocessing an audit recorded, checked (it decides how pictures are decoded
    again for the flips' maps: an untrusted size could ask for any amount of memory)."""
    p = audit.data["preprocessing"]
    try:
        pre = Preprocess.from_fingerprint(p)
        sides_ok = len(pre.size) == 2 and all(isinstance(v, int) and 0 < v <= MAX_SIDE for v in pre.size)
        values_ok = len(pre.mean) == len(pre.std) == pre.channels and all(v > 0 for v in pre.std)
        if not (sides_ok and values_ok and pre.channels in (1, 3) and pre.resize in ("stretch", "crop")):
            raise ValueError(p)
    except (KeyError, TypeError, ValueError):
        raise UserError(
            f"{audit.json_path}: its preprocessing ({printable(one_line(ValueError(p), 120))}) is not one reportgen "
            f"writes (sides up to {MAX_SIDE})"
        ) from None
    return pre


def _predictions_from_csv(data: dict[str, Any], json_path: Path, max_images: int) -> tuple[list[dict[str, Any]], Path]:
    """A large audit's per-image predictions, from the gzipped CSV its JSON names (read
    as a stream, and at most ``max_images`` rows of fields of sane length)."""
    entry = data.get("predictions_file")
    name = entry.get("name") if isinstance(entry, dict) else None
    if not isinstance(name, str) or "/" in name or "\\" in name or name.startswith("."):
        raise UserError(f"{json_path} has no predictions and names no predictions file beside it")
    path = json_path.with_name(name)
    if not path.is_file():
        raise UserError(f"cannot read {path}, the predictions of {json_path}: not a regular file")
    rows: list[dict[str, Any]] = []
    multi = isinstance(data.get("dataset"), dict) and data["dataset"].get("multi_label") is True
    try:
        with gzip.open(path, "rt", encoding="utf-8", newline="") as fh:
            reader = csv.reader(_capped_lines(fh, path, _CSV_FIELD * 8, JSON_BYTES_PER_IMAGE * max_images))
            names: dict[str, str] = {}  # one string per class name, not one per row
            header = next(reader, None)
            if header != list(PREDICTION_COLUMNS):
                raise UserError(
                    f"{path} is not a reportgen predictions file (its header is not {','.join(PREDICTION_COLUMNS)})"
                )
            for row in reader:
                if len(rows) >= max_images:
                    raise UserError(f"{path} holds more than {max_images:,} predictions (--max-images raises the cap)")
                if len(row) != len(PREDICTION_COLUMNS):
                    raise UserError(f"{path}: row {len(rows) + 2} has {len(row)} fields, not {len(PREDICTION_COLUMNS)}")
                file, label, pred, score, digest = row
                if multi:
                    # A multi-label audit's cells are JSON lists of its given and predicted labels.
                    given, predicted = (json.loads(label) if label else None), json.loads(pred)
                    rows.append(
                        {"file": file, "label": None, "pred": None, "score": float(score), "sha256": digest,
                         "labels": given, "predicted": predicted}
                    )  # fmt: skip
                    continue
                label = names.setdefault(label, label) or None
                rows.append(
                    {
                        "file": file,
                        "label": label,
                        "pred": names.setdefault(pred, pred),
                        "score": float(score),
                        "sha256": digest,
                    }
                )
    except UserError:
        raise
    except (OSError, EOFError, UnicodeDecodeError, csv.Error, ValueError, RecursionError) as exc:
        raise UserError(f"cannot read {path}, the predictions of {json_path}: {one_line(exc, 160)}") from None
    return rows, path


def _capped_lines(fh: Any, path: Path, limit: int, total: int) -> Iterator[str]:
    """The lines of ``fh``, refusing one longer than ``limit`` characters (a CSV row of
    an audit is a path, two names, a score and a hash) or more than ``total`` in all."""
    seen = 0
    while True:
        line = fh.readline(limit + 1)
        if not line:
            return
        if len(line) > limit:
            raise ValueError(f"a line longer than {limit} characters")
        seen += len(line)
        if seen > total:
            raise UserError(
                f"{path} is larger than the predictions of {total // JSON_BYTES_PER_IMAGE:,} images need "
                "(--max-images raises the cap)"
            )
        yield line


def _own_cache(data: dict[str, Any], json_path: Path) -> CachedRun | None:
    """The features cache of this audit: the one its options name, or the one beside its
    JSON, whichever holds features of this model for exactly this audit's images (an
    options entry in an untrusted JSON must not point compare at another audit's cache)."""
    options = data.get("options") or {}
    if options.get("use_cache") is False:
        return None
    candidates = [Path(options["features"])] if options.get("features") else []
    candidates.append(default_cache_path(json_path))
    files = {p["file"] for p in data["predictions"]}
    for path in candidates:
        if not path.is_dir():
            continue
        cached = load_cache(path, None)
        if not isinstance(cached, CachedRun):
            continue
        key = cached.meta.get("key") or {}
        if key.get("model_sha256") == data["model"]["sha256"] and set(cached.features.files) == files:
            return cached
    return None


def _check_same_folder(old: Audit, new: Audit) -> list[str]:
    a, b = old.data["dataset"], new.data["dataset"]
    files_a = {p["file"] for p in old.data["predictions"]} | {s["file"] for s in old.data["skipped"]}
    files_b = {p["file"] for p in new.data["predictions"]} | {s["file"] for s in new.data["skipped"]}
    overlap = len(files_a & files_b) / max(1, min(len(files_a), len(files_b)))
    same_root = str(a.get("root_resolved", a["root"])) == str(b.get("root_resolved", b["root"]))
    if overlap < 0.5:
        raise UserError(
            f"the two audits are of different image folders ({a['root']} vs {b['root']}: "
            f"{100 * overlap:.0f}% of files in common); compare audits of the same folder"
        )
    return (
        []
        if same_root
        else [f"the image folder moved ({a['root']} -> {b['root']}); files are matched by relative path"]
    )


@dataclass
class Flip:
    file: str
    label: str | None
    old_pred: str
    old_score: float
    new_pred: str
    new_score: float
    thumb: str
    old_overlay: str | None = None
    new_overlay: str | None = None


@dataclass
class ClassDelta:
    name: str
    support: int
    precision: tuple[float, float]
    recall: tuple[float, float]
    f1: tuple[float, float]

    @property
    def f1_delta(self) -> float:
        return self.f1[1] - self.f1[0]

    @property
    def recall_delta(self) -> float:
        return self.recall[1] - self.recall[0]

    @property
    def precision_delta(self) -> float:
        return self.precision[1] - self.precision[0]


@dataclass
class LayerSimilarity:
    position: int
    old_layer: str
    new_layer: str
    cka: float
    knn_overlap: float


@dataclass
class SliceChange:
    """An error slice one of the audits found, graded under both models on its members
    among the labeled images both audits used."""

    found_by: str  # "old" or "new": the audit whose search found it
    id: int
    description: str
    size: int
    old_accuracy: float
    new_accuracy: float

    @property
    def drop(self) -> float:
        return self.old_accuracy - self.new_accuracy


@dataclass
class MetadataChange:
    """One metadata group (a manifest column's value, or a range of it) graded under both
    models on the labeled images both audits used."""

    column: str
    value: str
    size: int
    old_accuracy: float
    new_accuracy: float

    @property
    def drop(self) -> float:
        return self.old_accuracy - self.new_accuracy


@dataclass
class CompareResult:
    tool_version: str
    generated_at: str | None
    old: Audit
    new: Audit
    classes: list[str]
    common: int  # images both audits used
    labeled: int  # of which labeled with a class both models know
    accuracy: PairedAccuracy | None
    macro_f1: tuple[float, float] | None
    per_class: list[ClassDelta]
    regressions: list[Flip]  # right -> wrong
    ece: tuple[float, float] | None  # (old, new) on the labeled common images, from each prediction's score
    fixes: list[Flip]  # wrong -> right
    still_wrong: list[Flip]  # wrong -> differently wrong
    unlabeled_changes: list[Flip]  # changed on an image without a known class
    changed: int  # images whose predicted class changed: the sum of the four lists
    confusion_old: np.ndarray | None
    confusion_new: np.ndarray | None
    similarity: list[LayerSimilarity]
    similarity_note: str
    added: list[str]
    removed: list[str]
    modified: list[str]
    image_root: Path  # where the pictures of the flips are read: --images, else the new audit's folder
    warnings: list[str] = field(default_factory=list)
    pictures: dict[str, Path] = field(default_factory=dict)  # shown flips' files that may be read (see picture_paths)
    pictures_note: str = ""  # why some or all of the flips have no picture
    cam_note: str = ""
    blank_maps: int = 0  # flips' maps that came out zero everywhere, left out of the page
    overlays: dict[str, np.ndarray] = field(default_factory=dict)  # key -> map, for the figures
    slices: list[SliceChange] = field(default_factory=list)
    slices_searched: bool = False  # both audits searched for slices (an older audit did not)
    # (corruption, severity) -> (old, new) accuracy, where both audits measured it
    robustness: dict[tuple[str, int], tuple[float, float]] = field(default_factory=dict)
    metadata: list[MetadataChange] = field(default_factory=list)  # largest drop first
    # Multi-label audits: an image is right when its predicted label set is its given one
    # (``accuracy`` is then the exact-set accuracy), and each audit's own mAP.
    multi_label: bool = False
    mean_ap: tuple[float | None, float | None] | None = None

    @property
    def criterion(self) -> str:
        """What "right" means in this comparison, for the page's headings."""
        return "exact-set accuracy" if self.multi_label else "accuracy"

    @property
    def robustness_drop(self) -> float | None:
        """Old minus new mean accuracy over the corruptions both audits measured."""
        if not self.robustness:
            return None
        return float(np.mean([o - n for o, n in self.robustness.values()]))

    @property
    def negative_flip_rate(self) -> float | None:
        """The share of the labeled common images right before and wrong now."""
        return len(self.regressions) / self.labeled if self.labeled else None

    def shown_flips(self) -> list[Flip]:
        """The flips the page shows as pictures: the first ``SHOWN_FLIPS`` of each group."""
        groups = (self.regressions, self.fixes, self.still_wrong, self.unlabeled_changes)
        return [flip for group in groups for flip in group[:SHOWN_FLIPS]]


def _metrics_pair(truth: np.ndarray, old_pred: np.ndarray, new_pred: np.ndarray, classes: list[str]):
    k = len(classes)
    one_hot_old = np.eye(k, dtype=np.float32)[old_pred]
    one_hot_new = np.eye(k, dtype=np.float32)[new_pred]
    return classification_metrics(truth, one_hot_old, classes), classification_metrics(truth, one_hot_new, classes)


def _features(audit: Audit) -> tuple[list[str], list[str], dict[str, np.ndarray]] | None:
    """(files, layer names, arrays) from the audit's cache, or None."""
    if audit.cached is None:
        return None
    f = audit.cached.features
    return f.files, [layer.name for layer in f.layers], f.arrays


def _audited_root(audit: Audit) -> Path:
    dataset = audit.data["dataset"]
    return Path(dataset.get("root_resolved") or dataset["root"])


def compare(old: Audit, new: Audit, *, seed: int = 0, images: Path | None = None) -> CompareResult:
    """Everything but the CAM overlays (see :func:`add_cam_overlays`)."""
    warnings = _check_same_folder(old, new)
    if old.data["model"]["sha256"] == new.data["model"]["sha256"]:
        warnings.append("both audits ran the same model file (identical SHA-256)")
    classes = list(dict.fromkeys([*old.data["classes"], *new.data["classes"]]))
    index = {c: i for i, c in enumerate(classes)}
    old_by_file = {p["file"]: p for p in old.data["predictions"]}
    new_by_file = {p["file"]: p for p in new.data["predictions"]}
    common = sorted(set(old_by_file) & set(new_by_file))
    multi = _multi_label(old, new)
    if multi:
        sets = _label_sets(old_by_file, new_by_file, common, index)
        # Coded so that "right" is pred == truth everywhere below: truth 0 where the
        # labels are known, a prediction 0 when its set is the given set, else 1.
        truth = np.where(sets.known, 0, -1)
        old_pred = np.where(sets.right(sets.old), 0, 1)
        new_pred = np.where(sets.right(sets.new), 0, 1)
        labels = [_set_name(sets.truth[i], classes) if sets.known[i] else None for i in range(len(common))]
        old_names = [_set_name(row, classes) for row in sets.old]
        new_names = [_set_name(row, classes) for row in sets.new]
        changed_rows = np.any(sets.old != sets.new, axis=1)
    else:
        old_pred = np.array([index[old_by_file[f]["pred"]] for f in common], np.int64)
        new_pred = np.array([index[new_by_file[f]["pred"]] for f in common], np.int64)
        labels = [new_by_file[f]["label"] for f in common]
        truth = np.array([index.get(lab, -1) if lab is not None else -1 for lab in labels], np.int64)
        old_names = [classes[i] for i in old_pred]
        new_names = [classes[i] for i in new_pred]
        changed_rows = old_pred != new_pred
    known = truth >= 0

    accuracy = None
    macro = None
    per_class: list[ClassDelta] = []
    confusion_old = confusion_new = None
    if multi and known.any():
        accuracy = paired_bootstrap(old_pred[known] == 0, new_pred[known] == 0, seed=seed)
        per_class, macro = _label_deltas(sets, classes)
    elif known.any():
        accuracy = paired_bootstrap(old_pred[known] == truth[known], new_pred[known] == truth[known], seed=seed)
        m_old, m_new = _metrics_pair(truth, old_pred, new_pred, classes)
        assert m_old is not None and m_new is not None
        macro = (m_old.macro_f1, m_new.macro_f1)
        confusion_old, confusion_new = m_old.confusion, m_new.confusion
        for a, b in zip(m_old.per_class, m_new.per_class, strict=True):
            if a.support or a.predicted or b.predicted:
                per_class.append(
                    ClassDelta(a.name, a.support, (a.precision, b.precision), (a.recall, b.recall), (a.f1, b.f1))
                )
        per_class.sort(key=lambda d: (-abs(d.f1_delta), -abs(d.recall_delta), d.name))

    ece = None
    if known.any() and not multi:
        # Top-label ECE from each audit's scores (the probability of its prediction), on the
        # same images: comparable even where the two audits saw different folders.
        labeled_files = [f for f, k in zip(common, known, strict=True) if k]

        def ece_of(by_file: dict[str, dict[str, Any]], pred: np.ndarray) -> float:
            scores = np.array([float(by_file[f]["score"]) for f in labeled_files])
            return expected_calibration_error(scores, pred[known] == truth[known])

        ece = (ece_of(old_by_file, old_pred), ece_of(new_by_file, new_pred))

    slices = _slice_changes(old, new, common, truth, old_pred, new_pred)

    regressions: list[Flip] = []
    fixes: list[Flip] = []
    still_wrong: list[Flip] = []
    unlabeled_changes: list[Flip] = []
    for i, f in enumerate(common):
        if not changed_rows[i]:
            continue
        flip = Flip(
            f,
            labels[i],
            old_names[i],
            float(old_by_file[f]["score"]),
            new_names[i],
            float(new_by_file[f]["score"]),
            "a:" + f,
        )
        if truth[i] < 0:
            unlabeled_changes.append(flip)
        elif old_pred[i] == truth[i]:
            regressions.append(flip)
        elif new_pred[i] == truth[i]:
            fixes.append(flip)
        else:
            still_wrong.append(flip)
    # Most confident new prediction first (the new mistakes a user meets most surely).
    for group in (regressions, fixes, still_wrong, unlabeled_changes):
        group.sort(key=lambda fl: (-fl.new_score, fl.file))

    similarity, note = _similarity(old, new, common)
    old_files = set(old_by_file) | {s["file"] for s in old.data["skipped"]}
    new_files = set(new_by_file) | {s["file"] for s in new.data["skipped"]}
    modified = sorted(
        f
        for f in common
        if old_by_file[f].get("sha256")
        and new_by_file[f].get("sha256")
        and old_by_file[f]["sha256"] != new_by_file[f]["sha256"]
    )
    result = CompareResult(
        tool_version=__version__,
        generated_at=timestamp(source_date_epoch()),
        old=old,
        new=new,
        classes=classes,
        common=len(common),
        labeled=int(known.sum()),
        accuracy=accuracy,
        macro_f1=macro,
        per_class=per_class,
        regressions=regressions,
        ece=ece,
        fixes=fixes,
        still_wrong=still_wrong,
        unlabeled_changes=unlabeled_changes,
        changed=int(changed_rows.sum()),
        confusion_old=confusion_old,
        confusion_new=confusion_new,
        similarity=similarity,
        similarity_note=note,
        added=sorted(new_files - old_files),
        removed=sorted(old_files - new_files),
        modified=modified,
        image_root=images if images is not None else _audited_root(new),
        warnings=warnings,
        slices=slices,
        slices_searched=old.data.get("slices") is not None and new.data.get("slices") is not None,
        robustness=_robustness_pairs(old, new),
        metadata=_metadata_changes(old_by_file, new_by_file, common, truth, old_pred, new_pred),
        multi_label=multi,
        mean_ap=_mean_ap(old, new) if multi else None,
    )
    result.pictures, result.pictures_note = picture_paths(result, verify=images is None)
    return result


def _multi_label(old: Audit, new: Audit) -> bool:
    """Whether the two audits are multi-label; one of each is refused (an image is right
    by a different rule on each side)."""
    kinds = [bool(a.data["dataset"].get("multi_label")) for a in (old, new)]
    if kinds[0] != kinds[1]:
        which = "old" if kinds[0] else "new"
        raise UserError(f"the {which} audit is multi-label and the other is not: their predictions cannot be compared")
    return kinds[0]


def _set_name(row: np.ndarray, classes: list[str]) -> str:
    return ", ".join(classes[j] for j in np.flatnonzero(row)) or "no label"


@dataclass
class _LabelSets:
    truth: np.ndarray  # (N, K) bool given labels (rows not known are all False)
    known: np.ndarray  # (N,) the image's labels are known
    old: np.ndarray  # (N, K) bool labels the old model predicts
    new: np.ndarray

    def right(self, predicted: np.ndarray) -> np.ndarray:
        return self.known & np.all(predicted == self.truth, axis=1)


def _label_sets(
    old_by_file: dict[str, dict[str, Any]], new_by_file: dict[str, dict[str, Any]], common: list[str], index: dict
) -> _LabelSets:
    """The given and predicted label sets of the common images of two multi-label audits
    (the new audit's labels are the truth, as for one class per image)."""
    n, k = len(common), len(index)
    out = _LabelSets(np.zeros((n, k), bool), np.zeros(n, bool), np.zeros((n, k), bool), np.zeros((n, k), bool))
    for i, f in enumerate(common):
        given = new_by_file[f].get("labels")
        if given is not None:
            out.known[i] = True
            out.truth[i, [index[name] for name in given]] = True
        out.old[i, [index[name] for name in old_by_file[f]["predicted"]]] = True
        out.new[i, [index[name] for name in new_by_file[f]["predicted"]]] = True
    return out


def _label_deltas(sets: _LabelSets, classes: list[str]) -> tuple[list[ClassDelta], tuple[float, float]]:
    """Per-label precision, recall and F1 of both models on the labelled common images
    (scikit-learn's zero_division=0), largest F1 change first, and the macro F1 pair
    (over labels some image carries)."""
    y = sets.truth[sets.known]
    support = y.sum(axis=0)
    scores = []
    for predicted in (sets.old[sets.known], sets.new[sets.known]):
        tp = (y & predicted).sum(axis=0).astype(np.float64)
        given = predicted.sum(axis=0)
        precision = np.divide(tp, given, out=np.zeros(len(classes)), where=given > 0)
        recall = np.divide(tp, support, out=np.zeros(len(classes)), where=support > 0)
        f1 = np.divide(
            2 * precision * recall, precision + recall, out=np.zeros(len(classes)), where=precision + recall > 0
        )
        scores.append((precision, recall, f1, given))
    (p0, r0, f0, g0), (p1, r1, f1, g1) = scores
    deltas = [
        ClassDelta(classes[j], int(support[j]), (p0[j], p1[j]), (r0[j], r1[j]), (f0[j], f1[j]))
        for j in range(len(classes))
        if support[j] or g0[j] or g1[j]
    ]
    deltas.sort(key=lambda d: (-abs(d.f1_delta), -abs(d.recall_delta), d.name))
    has = support > 0
    macro = (float(f0[has].mean()), float(f1[has].mean())) if has.any() else (0.0, 0.0)
    return deltas, macro


def _mean_ap(old: Audit, new: Audit) -> tuple[float | None, float | None]:
    """Each audit's own mAP (over its own images and its probabilities, which the
    predictions do not carry)."""

    def one(audit: Audit) -> float | None:
        value = (audit.data.get("multilabel") or {}).get("mean_average_precision")
        return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None

    return one(old), one(new)


def _slice_changes(
    old: Audit, new: Audit, common: list[str], truth: np.ndarray, old_pred: np.ndarray, new_pred: np.ndarray
) -> list[SliceChange]:
    """Every slice of either audit, graded under both models on the same images: "fixed
    the dark images, broke the small ones" shows as one slice up and another down."""
    position = {f: i for i, f in enumerate(common)}
    out = []
    for found_by, audit in (("old", old), ("new", new)):
        for s in audit.data.get("slices") or []:
            rows = np.array([position[f] for f in s["files"] if f in position and truth[position[f]] >= 0], np.int64)
            if not len(rows):
                continue
            out.append(
                SliceChange(
                    found_by,
                    int(s["id"]),
                    s.get("description") or "",
                    len(rows),
                    float((old_pred[rows] == truth[rows]).mean()),
                    float((new_pred[rows] == truth[rows]).mean()),
                )
            )
    return out


def _metadata_changes(
    old_by_file: dict[str, dict[str, Any]],
    new_by_file: dict[str, dict[str, Any]],
    common: list[str],
    truth: np.ndarray,
    old_pred: np.ndarray,
    new_pred: np.ndarray,
) -> list[MetadataChange]:
    """Accuracy by every metadata column the audits' predictions carry (a manifest's),
    grouped as the audit groups them (``analyses.metadata``), under both models on the
    same labeled images; the largest drops first."""
    known = np.flatnonzero(truth >= 0)
    rows = [new_by_file[common[i]].get("metadata") or old_by_file[common[i]].get("metadata") for i in known]
    if not any(isinstance(r, dict) for r in rows):
        return []
    columns = list(dict.fromkeys(k for r in rows if isinstance(r, dict) for k in r))[:MAX_METADATA_COLUMNS]
    right_old, right_new = old_pred[known] == truth[known], new_pred[known] == truth[known]
    out = []
    for column in columns:
        values = [r.get(column) if isinstance(r, dict) else None for r in rows]
        values = [v if isinstance(v, str | int | float) and not isinstance(v, bool) else None for v in values]
        before, after = column_breakdown(column, values, right_old), column_breakdown(column, values, right_new)
        for a, b in zip(before.groups, after.groups, strict=True):
            out.append(MetadataChange(column, a.value, a.n, a.accuracy, b.accuracy))
    out.sort(key=lambda c: (-c.drop, c.column, c.value))
    return out


def _robustness_pairs(old: Audit, new: Audit) -> dict[tuple[str, int], tuple[float, float]]:
    """Accuracy under each corruption both audits measured (each on its own stratified
    sample of the same folder: with the same seed and images, the same sample)."""

    def table(audit: Audit) -> dict[tuple[str, int], float]:
        r = audit.data.get("robustness") or {}
        return {(c["name"], int(c["severity"])): float(c["accuracy"]) for c in r.get("corruptions", [])}

    before, after = table(old), table(new)
    return {k: (before[k], after[k]) for k in before if k in after}


def picture_paths(result: CompareResult, *, verify: bool) -> tuple[dict[str, Path], str]:
    """The shown flips' files that may be read, and why others may not.

    A file is read only from ``result.image_root``, by a relative path that stays inside
    it (links resolved), and only when it is a regular file of at most
    ``data.MAX_IMAGE_BYTES``.  Without ``--images`` the folder is the one the new audit's
    JSON names -- untrusted -- so each file must also have the SHA-256 that audit (or the
    old one) recorded for it: the JSON can make compare show only the images it audited,
    never some other file of the machine."""
    root = result.image_root
    flips = result.shown_flips()
    if not flips:
        return {}, ""
    if not root.is_dir():
        return {}, f"the image folder {root} is not here: no pictures of the flips (--images names where it is)"
    recorded: dict[str, set[str]] = {}
    for audit in (result.old, result.new):
        for p in audit.data["predictions"]:
            if p.get("sha256"):
                recorded.setdefault(p["file"], set()).add(p["sha256"])
    out: dict[str, Path] = {}
    refused = 0
    for flip in flips:
        path = contained(root, flip.file)
        if path is None:
            continue
        try:
            st = os.stat(path)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode) or st.st_size > MAX_IMAGE_BYTES:
            refused += 1
            continue
        if verify:
            try:
                digest = file_sha256(path)
            except OSError:
                continue
            if digest not in recorded.get(flip.file, ()):
                refused += 1
                continue
        out[flip.file] = path
    note = ""
    if refused:
        why = "differ from what the audits recorded" if verify else "are no regular image files within the size cap"
        note = f"{refused} of the flips' files under {root} {why}: shown as grey squares"
    return out, note


def _similarity(old: Audit, new: Audit, common: list[str]) -> tuple[list[LayerSimilarity], str]:
    a, b = _features(old), _features(new)
    if a is None or b is None:
        missing = " and ".join(x.json_path.name for x, f in ((old, a), (new, b)) if f is None)
        return [], f"no features cache for {missing}: representation similarity needs both (audit without --no-cache)"
    files_a, names_a, arrays_a = a
    files_b, names_b, arrays_b = b
    pos_a = {f: i for i, f in enumerate(files_a)}
    pos_b = {f: i for i, f in enumerate(files_b)}
    shared = [f for f in common if f in pos_a and f in pos_b]
    if len(shared) < 3:
        return [], "too few images in both caches to compare representations"
    rows_a = np.array([pos_a[f] for f in shared])
    rows_b = np.array([pos_b[f] for f in shared])
    out = []
    for position, (la, lb) in enumerate(zip(names_a, names_b, strict=False)):
        xa = arrays_a[la][rows_a]
        xb = arrays_b[lb][rows_b]
        out.append(LayerSimilarity(position, la, lb, linear_cka(xa, xb), knn_overlap(xa, xb, 10)))
    note = ""
    if len(names_a) != len(names_b):
        note = f"the audits have {len(names_a)} and {len(names_b)} layers; the first {len(out)} are paired by position"
    return out, note


def add_cam_overlays(
    result: CompareResult,
    models: tuple[Path | None, Path | None],
    *,
    device: str,
    trust_pickle: bool,
    batch_size: int,
    show_progress: bool = True,
) -> None:
    """Both models' Grad-CAM maps of the shown flips, each for its own prediction.

    ``models`` are the (old, new) model files the user named: a model is never loaded
    because an audit JSON names it (the JSON is untrusted).  Each must be the file its
    audit ran (same SHA-256); otherwise the maps are left out with a note.
    """
    from reportgen.progress import progress

    for side, audit, model in (("old", result.old, models[0]), ("new", result.new, models[1])):
        # Checked even when nothing flipped: a wrong file given is worth saying at once.
        if model is not None and file_sha256(model) != audit.data["model"]["sha256"]:
            result.cam_note = (
                f"--{side}-model {model.name} is not the model the {side} audit ran (its SHA-256 differs): "
                "no activation maps"
            )
            return
    flips = result.shown_flips()
    if not flips:
        return
    if None in models:
        result.cam_note = (
            "the flips' activation maps need both model files: give --old-model and --new-model "
            "(compare never loads a model named only in an audit JSON)"
        )
        return
    with progress(total=2 * len(flips), desc="gradcam", unit="map", enabled=show_progress) as bar:
        for side, audit, model in (("old", result.old, models[0]), ("new", result.new, models[1])):
            assert model is not None
            if not _side_overlays(result, side, audit, model, flips, device, trust_pickle, batch_size, bar):
                return


def _side_overlays(
    result: CompareResult,
    side: str,
    audit: Audit,
    model: Path,
    flips: list[Flip],
    device: str,
    trust_pickle: bool,
    batch_size: int,
    bar: Any,
) -> bool:
    """One model's maps of the flips, for its own predictions (see ``add_cam_overlays``);
    false, with a note, when the model has no tensor to explain."""
    from reportgen.analyses.cam import compute_cam
    from reportgen.data import DecodeError, load_one
    from reportgen.map_model import open_for_maps
    from reportgen.models import ModelHandle

    pre = preprocessing_of(audit)
    if max(pre.size) > UNTOLD_SIDE:
        result.cam_note = (
            f"the {side} audit's input size {pre.size[0]}x{pre.size[1]} is larger than compare decodes pictures at "
            f"({UNTOLD_SIDE} a side): no activation maps"
        )
        return False
    handle = ModelHandle(
        model, device=device, arch=(audit.data.get("options") or {}).get("arch"), trust_pickle=trust_pickle
    )
    opened = open_for_maps(handle, pre=pre, layer=(audit.data.get("cam") or {}).get("layer"), strict=False)
    if opened.split is None:
        result.cam_note = f"the {side} model: {opened.note}"
        return False
    split = opened.split
    classes = audit.data["classes"]
    todo = []
    for flip in flips:
        pred = flip.old_pred if side == "old" else flip.new_pred
        if pred in classes and flip.file in result.pictures:
            todo.append((flip, classes.index(pred)))
    for start in range(0, len(todo), batch_size):
        chunk = []  # decoded a batch at a time: memory holds one batch of pictures
        for flip, target in todo[start : start + batch_size]:
            try:
                chunk.append((flip, target, load_one(result.pictures[flip.file], pre)[0]))
            except DecodeError:
                continue
        if not chunk:
            continue
        cams = compute_cam(
            "gradcam", split, np.stack([x for _, _, x in chunk]), np.array([t for _, t, _ in chunk]), pre.size
        )
        for (flip, _, _), cam in zip(chunk, cams.maps, strict=True):
            if not cam.any():  # zero everywhere: no picture of where evidence lies
                result.blank_maps += 1
                continue
            key = f"{side}:{flip.file}"
            result.overlays[key] = cam
            if side == "old":
                flip.old_overlay = key
            else:
                flip.new_overlay = key
        bar.update(len(chunk))
    return True


def _interval(i: Any) -> dict[str, float]:
    return {"value": i.value, "low": i.low, "high": i.high}


def compare_json(r: CompareResult, gates: dict[str, Any]) -> dict[str, Any]:
    def side(a: Audit) -> dict[str, Any]:
        d = a.data
        return {
            "json": str(a.json_path),
            "model": {k: d["model"][k] for k in ("path", "format", "sha256")},
            "tool_version": d.get("tool_version"),
            "accuracy": d.get("accuracy"),
            "n_images": d["dataset"]["n_images"],
            "features_cache": str(a.cache) if a.cache else None,
        }

    def flips(items: list[Flip]) -> list[dict[str, Any]]:
        return [
            {
                "file": f.file,
                "label": f.label,
                "old_pred": f.old_pred,
                "old_score": f.old_score,
                "new_pred": f.new_pred,
                "new_score": f.new_score,
            }
            for f in items
        ]

    out = {
        "schema_version": JSON_SCHEMA_VERSION,
        "tool_version": r.tool_version,
        "generated_at": r.generated_at,
        "old": side(r.old),
        "new": side(r.new),
        "classes": r.classes,
        "common_images": r.common,
        "labeled_images": r.labeled,
        "accuracy": None
        if r.accuracy is None
        else {
            "old": _interval(r.accuracy.old),
            "new": _interval(r.accuracy.new),
            "delta": _interval(r.accuracy.delta),
            "level": 0.95,
            "resamples": 2000,
        },
        "macro_f1": None
        if r.macro_f1 is None
        else {"old": r.macro_f1[0], "new": r.macro_f1[1], "delta": r.macro_f1[1] - r.macro_f1[0]},
        "per_class": [
            {
                "class": d.name,
                "support": d.support,
                "precision": {"old": d.precision[0], "new": d.precision[1], "delta": d.precision_delta},
                "recall": {"old": d.recall[0], "new": d.recall[1], "delta": d.recall_delta},
                "f1": {"old": d.f1[0], "new": d.f1[1], "delta": d.f1_delta},
            }
            for d in r.per_class
        ],
        "flips": {
            "regressions": flips(r.regressions),
            "fixes": flips(r.fixes),
            "still_wrong": flips(r.still_wrong),
            "unlabeled_changes": flips(r.unlabeled_changes),
        },
        "multi_label": r.multi_label,
        "mean_average_precision": None
        if r.mean_ap is None
        else {
            "old": r.mean_ap[0],
            "new": r.mean_ap[1],
            "delta": None if None in r.mean_ap else r.mean_ap[1] - r.mean_ap[0],  # type: ignore[operator]
        },
        "changed_predictions": r.changed,
        "negative_flip_rate": r.negative_flip_rate,
        "calibration": None
        if r.ece is None
        else {"ece": {"old": r.ece[0], "new": r.ece[1], "delta": r.ece[1] - r.ece[0]}},
        "slices": [
            {
                "found_by": c.found_by,
                "id": c.id,
                "description": c.description,
                "size": c.size,
                "old_accuracy": c.old_accuracy,
                "new_accuracy": c.new_accuracy,
                "delta": -c.drop,
            }
            for c in r.slices
        ],
        "metadata": [
            {
                "column": c.column,
                "value": c.value,
                "size": c.size,
                "old_accuracy": c.old_accuracy,
                "new_accuracy": c.new_accuracy,
                "delta": -c.drop,
            }
            for c in r.metadata
        ],
        "robustness": None
        if not r.robustness
        else {
            "corruptions": [
                {"name": name, "severity": severity, "old": o, "new": n, "delta": n - o}
                for (name, severity), (o, n) in r.robustness.items()
            ],
            "mean_drop": r.robustness_drop,
        },
        "confusion_difference": None if r.confusion_old is None else (r.confusion_new - r.confusion_old).tolist(),
        "layers_similarity": [
            {
                "position": s.position,
                "old_layer": s.old_layer,
                "new_layer": s.new_layer,
                "cka": s.cka,
                "knn_overlap": s.knn_overlap,
            }
            for s in r.similarity
        ],
        "similarity_note": r.similarity_note or None,
        "folder_changes": {"added": r.added, "removed": r.removed, "modified": r.modified},
        "gates": gates,
        "warnings": r.warnings,
    }
    return round_floats(out)


def evaluate_gates(r: CompareResult, gates: dict[str, float]) -> tuple[dict[str, Any], list[str]]:
    """Each gate's measured value, threshold and verdict, and the failures as text."""
    values: dict[str, float | None] = {
        "accuracy_drop": None if r.accuracy is None else -(r.accuracy.delta.value),
        "class_recall_drop": max((-d.recall_delta for d in r.per_class if d.support), default=None),
        "macro_f1_drop": None if r.macro_f1 is None else r.macro_f1[0] - r.macro_f1[1],
        "regressions": float(len(r.regressions)),
        "negative_flip_rate": r.negative_flip_rate,
        "ece_increase": None if r.ece is None else r.ece[1] - r.ece[0],
        # No slice in either audit is no drop; audits that never searched cannot say.
        "slice_accuracy_drop": max((c.drop for c in r.slices), default=0.0 if r.slices_searched else None),
        "robustness_drop": r.robustness_drop,
    }
    report: dict[str, Any] = {}
    failures = []
    for name, threshold in gates.items():
        value = values[name]
        failed = value is None or value > threshold
        report[name] = {"value": value, "threshold": threshold, "passed": not failed}
        if value is None:
            why = {
                "slice_accuracy_drop": "the audits hold no error slices (written before slices were searched, or unlabeled)",
                "robustness_drop": "the audits share no robustness measurement (--robustness-images 0, or unlabeled)",
            }.get(name, "no labeled images in common")
            failures.append(f"{name} cannot be measured ({why})")
        elif failed:
            worst = ""
            if name == "class_recall_drop":
                d = max((d for d in r.per_class if d.support), key=lambda d: -d.recall_delta)
                worst = f" (class {d.name}: {d.recall[0]:.3f} -> {d.recall[1]:.3f})"
            if name == "slice_accuracy_drop":
                c = max(r.slices, key=lambda c: c.drop)
                worst = f" ({c.found_by} audit's slice {c.id}: {c.old_accuracy:.3f} -> {c.new_accuracy:.3f})"
            failures.append(f"{name} {value:.4g} > {threshold}{worst}")
    return report, failures
