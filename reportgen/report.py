"""The audit's result: one object that both the HTML and the JSON are rendered from.

:class:`AuditResult` is filled by ``pipeline.audit``; :func:`to_json` turns it into the
documented JSON sidecar.  Pictures (plots, thumbnails) are kept apart in
:class:`Figures`, since the JSON holds numbers only.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from reportgen.analyses.knn import SearchReport
from reportgen.analyses.metrics import ClassBalance, ClassificationMetrics
from reportgen.contents import Sections
from reportgen.data import Skipped
from reportgen.outputs import Proof, is_predictions_csv, is_report_html, is_report_json
from reportgen.util import round_floats

if TYPE_CHECKING:
    from reportgen.thumbs import SpriteSheets

JSON_SCHEMA_VERSION = 2  # 2: above 200,000 images, predictions null and in predictions_file


@dataclass
class ModelSummary:
    path: str
    format: str
    sha256: str
    input_size: tuple[int, int]
    channels: int
    runtime: str
    device: str
    output_kind: str  # "logits" or "probabilities"
    num_outputs: int
    properties: dict[str, str]


@dataclass
class DatasetSummary:
    root: str
    root_resolved: str
    labeled: bool
    n_images: int  # decoded and audited
    n_candidates: int  # image files found, decoded or not
    folder_classes: list[str]
    sha256: str


@dataclass
class LayerSummary:
    name: str
    shape: tuple[int, ...]
    dim: int
    op: str
    layout: str = ""  # chw, hwc, tokens, vector, or "" (see models/layouts.py)
    pooling: str = ""  # how the tensor became one vector per image (base.pooling)
    module: str = ""  # module path, where known
    knn_accuracy: float | None = None
    knn_agreement: float | None = None
    # For a layer pooled to a grid: the kNN accuracy of its global mean (what a grid keeps
    # that the classic average does not).
    knn_accuracy_global_mean: float | None = None
    knn_search: SearchReport | None = None  # how its neighbours were found (exact, or with a measured recall)
    tsne_trustworthiness: float | None = None
    note: str = ""


@dataclass
class Prediction:
    file: str
    label: str | None  # folder class name
    truth: int  # output index of the true class, -1 unknown
    pred: int
    score: float  # probability of the predicted class
    sha256: str = ""  # of the file's bytes

    @property
    def correct(self) -> bool | None:
        return None if self.truth < 0 else self.truth == self.pred


@dataclass
class AuditResult:
    """Everything the report says, as numbers and names."""

    tool_version: str
    generated_at: str | None
    options: dict[str, Any]
    model: ModelSummary
    dataset: DatasetSummary
    classes: list[str]
    class_source: str
    preprocessing: dict[str, Any]
    layers: list[LayerSummary]
    predictions: list[Prediction]
    metrics: ClassificationMetrics | None
    balance: ClassBalance
    skipped: list[Skipped]
    warnings: list[str]
    timings: dict[str, float] | None
    throughput: dict[str, float] | None
    features_from_cache: bool | None = False  # None when SOURCE_DATE_EPOCH asks for reproducible output
    sections: Sections = field(default_factory=Sections)  # kNN, t-SNE, suspects, galleries, ...

    @property
    def accuracy(self) -> float | None:
        return None if self.metrics is None else self.metrics.accuracy


@dataclass
class Figures:
    """PNG/GIF bytes and thumbnails for the HTML only."""

    images: dict[str, bytes] = field(default_factory=dict)  # name -> PNG or GIF bytes
    thumbs: dict[str, str] = field(default_factory=dict)  # thumbnail key -> data URI
    meta: dict[str, Any] = field(default_factory=dict)  # e.g. the GIF's key frame indices
    sprites: SpriteSheets | None = None  # the explorer's thumbnails, one tile per point


def _metrics_json(result: AuditResult) -> dict[str, Any]:
    m = result.metrics
    if m is None:
        return {"accuracy": None, "top5_accuracy": None, "confusion_matrix": None, "per_class": None}
    return {
        "accuracy": m.accuracy,
        "top5_accuracy": m.top5_accuracy,
        "balanced_accuracy": m.balanced_accuracy,
        "macro_f1": m.macro_f1,
        "n_evaluated": m.n,
        "confusion_matrix": m.confusion.tolist(),
        "per_class": [
            {
                "class": c.name,
                "precision": c.precision,
                "recall": c.recall,
                "f1": c.f1,
                "support": c.support,
                "predicted": c.predicted,
            }
            for c in m.per_class
        ],
    }


PREDICTIONS_INLINE = 200_000  # per-image predictions beyond this go to a gzipped CSV beside the JSON
HTML_PREDICTION_ROWS = 2_000  # rows the HTML's predictions table holds; every row is in the JSON or CSV


def predictions_csv_path(json_path: Path) -> Path:
    """Where the per-image predictions go when there are too many for the JSON."""
    return json_path.with_name(json_path.stem + ".predictions.csv.gz")


def report_outputs(html_path: Path, json_path: Path) -> list[tuple[Path, Proof, str]]:
    """The files a report is written as, each with the proof that an existing one is
    reportgen's and its role for messages: the predictions CSV, the JSON, the HTML."""
    csv_path = predictions_csv_path(json_path)
    return [
        (csv_path, is_predictions_csv, "the predictions file"),
        (json_path, is_report_json, "the JSON sidecar"),
        (html_path, is_report_html, "-o"),
    ]


def prediction_rows(result: AuditResult) -> list[dict[str, Any]]:
    """One entry per audited image, the keys of ``outputs.PREDICTION_COLUMNS``."""
    classes = result.classes
    return [
        {"file": p.file, "label": p.label, "pred": classes[p.pred], "score": p.score, "sha256": p.sha256}
        for p in result.predictions
    ]


def shown_predictions(result: AuditResult, limit: int = HTML_PREDICTION_ROWS) -> list[Prediction]:
    """The predictions the HTML lists: all of them up to ``limit``; beyond it, the
    misclassified images, most confident first, then the least confident of the rest."""
    preds = result.predictions
    if len(preds) <= limit:
        return preds
    wrong = sorted((p for p in preds if p.correct is False), key=lambda p: (-p.score, p.file))
    rest = sorted((p for p in preds if p.correct is not False), key=lambda p: (p.score, p.file))
    return (wrong + rest)[:limit]


def to_json(result: AuditResult, *, inline_predictions: bool = True) -> dict[str, Any]:
    """The JSON sidecar (see the README's "JSON sidecar" section for every key); without
    ``inline_predictions``, ``predictions`` is null and the rows go to the CSV sidecar."""
    classes = result.classes
    out: dict[str, Any] = {
        "schema_version": JSON_SCHEMA_VERSION,
        "tool_version": result.tool_version,
        "generated_at": result.generated_at,
        "options": result.options,
        "model": {
            "path": result.model.path,
            "format": result.model.format,
            "sha256": result.model.sha256,
            "input_size": list(result.model.input_size),
            "channels": result.model.channels,
            "runtime": result.model.runtime,
            "device": result.model.device,
            "output_kind": result.model.output_kind,
            "num_outputs": result.model.num_outputs,
            "properties": result.model.properties,
        },
        "dataset": {
            "root": result.dataset.root,
            "root_resolved": result.dataset.root_resolved,
            "labeled": result.dataset.labeled,
            "n_images": result.dataset.n_images,
            "n_candidates": result.dataset.n_candidates,
            "classes": result.dataset.folder_classes,
            "sha256": result.dataset.sha256,
        },
        "classes": classes,
        "class_source": result.class_source,
        "preprocessing": result.preprocessing,
        **_metrics_json(result),
        "class_balance": {
            "true_counts": result.balance.true_counts,
            "predicted_counts": result.balance.predicted_counts,
            "imbalance_ratio": result.balance.imbalance_ratio,
        },
        "predictions": prediction_rows(result) if inline_predictions else None,
        "skipped": [{"file": s.file, "reason": s.reason} for s in result.skipped],
        "layers": [
            {
                "name": layer.name,
                "shape": list(layer.shape),
                "dim": layer.dim,
                "op": layer.op,
                "layout": layer.layout or None,
                "pooling": layer.pooling,
                "module": layer.module or None,
                "knn_accuracy": layer.knn_accuracy,
                "knn_agreement": layer.knn_agreement,
                "knn_accuracy_global_mean": layer.knn_accuracy_global_mean,
                "knn_search": None
                if layer.knn_search is None
                else {
                    "method": layer.knn_search.method,
                    "recall_at_k": layer.knn_search.recall,
                    "recall_queries": layer.knn_search.recall_queries,
                    "detail": layer.knn_search.detail or None,
                },
                "tsne_trustworthiness": layer.tsne_trustworthiness,
                "note": layer.note or None,
            }
            for layer in result.layers
        ],
        "warnings": result.warnings,
        "features_from_cache": result.features_from_cache,
        "timings": result.timings,
        "throughput": result.throughput,
    }
    for section in result.sections.present():
        out.update(section.json_items())
    return round_floats(out)
