"""The parts of a multi-label report (several labels per image, see
``analyses.multilabel``): per-label metrics at the thresholds, label cardinality and
co-occurrence, and labels the neighbours and the model say are missing or extra.  The
single-label parts that read one class per image (confusion, per-class metrics,
calibration, slices, mislabels) are not made for such a run."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from scipy import sparse

from reportgen import figures
from reportgen.analyses.multilabel import LabelSuspicions, MultiLabelMetrics, cooccurrence, label_suspects
from reportgen.report import PictureRequest, Section
from reportgen.sections.base import MultiLabelRun, Shared, thumb_key
from reportgen.sections.neighbours import deep_layers, neighbourhood

SHOWN_LABELS = 40  # labels in the co-occurrence picture: the most frequent (the JSON holds all)
SHOWN_LABEL_SUSPECTS = 60  # on the page; the JSON holds up to ``analyses.multilabel.MAX_LABEL_SUSPECTS``
MATRIX_LABELS = 256  # above this many labels the JSON leaves out the K x K matrices (64k cells each)


@dataclass
class LabelMetricsView:
    metrics: MultiLabelMetrics | None  # None: no image's labels are known (predictions only)
    thresholds_from: str  # "--threshold 0.5" or "--thresholds FILE"
    predicted_counts: list[int]  # per label, images given it (labelled or not)
    classes: list[str]


def _thresholds_from(shared: Shared) -> str:
    cfg = shared.cfg
    if cfg.thresholds is not None:
        return f"--thresholds {cfg.thresholds} (--threshold {cfg.threshold:g} for the labels it leaves out)"
    return f"--threshold {cfg.threshold:g}"


class LabelMetricsSection(Section):
    id = "labels"
    title = "Per-label metrics"

    def build(self, shared: Shared) -> LabelMetricsView | None:
        multi = shared.multilabel
        if multi is None:
            return None
        counts = [int(c) for c in multi.predicted.sum(axis=0)]
        return LabelMetricsView(multi.metrics, _thresholds_from(shared), counts, shared.class_map.classes)

    def json_items(self, content: LabelMetricsView | None) -> dict[str, Any]:
        if content is None:
            return {}
        m = content.metrics
        out: dict[str, Any] = {"thresholds_from": content.thresholds_from, "predicted_counts": content.predicted_counts}
        if m is not None:
            out.update(
                {
                    "n_evaluated": m.n,
                    "mean_average_precision": m.mean_average_precision,
                    "micro_average_precision": m.micro_average_precision,
                    "micro_precision": m.micro_precision,
                    "micro_recall": m.micro_recall,
                    "micro_f1": m.micro_f1,
                    "macro_f1": m.macro_f1,
                    "samples_f1": m.samples_f1,
                    "subset_accuracy": m.subset_accuracy,
                    "hamming_loss": m.hamming_loss,
                    "per_label": [
                        {
                            "label": s.name,
                            "threshold": s.threshold,
                            "precision": s.precision,
                            "recall": s.recall,
                            "f1": s.f1,
                            "support": s.support,
                            "predicted": s.predicted,
                            "average_precision": s.average_precision,
                            "best_f1": s.best_f1,
                            "best_threshold": s.best_threshold,
                        }
                        for s in m.per_label
                    ],
                }
            )
        return {"multilabel": out}


@dataclass
class CooccurrenceView:
    true_cardinality: float | None
    predicted_cardinality: float
    true_counts: list[int] | None  # images with 0, 1, 2, ... labels
    predicted_counts: list[int]
    labels: list[str]  # every label
    cooccurrence: sparse.csr_matrix | None  # (K, K) images carrying both
    predicted_cooccurrence: sparse.csr_matrix  # (K, K) images given both
    shown: list[int] = field(default_factory=list)  # labels the picture shows, most frequent first
    pairs: list[tuple[str, str, int, int]] = field(default_factory=list)  # (a, b, given, predicted), commonest


class CooccurrenceSection(Section):
    id = "cooccurrence"
    title = "Label co-occurrence"

    def build(self, shared: Shared) -> CooccurrenceView | None:
        multi = shared.multilabel
        if multi is None:
            return None
        m = multi.metrics
        per_image = multi.predicted.sum(axis=1)  # every audited image, labelled or not
        predicted_co = cooccurrence(multi.predicted)
        given = m.cooccurrence if m is not None else None
        base = given if given is not None else predicted_co
        support = base.diagonal()
        order = np.lexsort((np.arange(len(support)), -support))
        shown = [int(i) for i in order[:SHOWN_LABELS] if support[i] > 0]
        classes = shared.class_map.classes
        # The pairs that occur (a sparse matrix keeps no others), commonest first.
        upper = sparse.triu(base, 1).tocoo()
        top = np.lexsort((upper.col, upper.row, -upper.data))[:20]
        pairs = [
            (classes[upper.row[t]], classes[upper.col[t]],
             int(given[upper.row[t], upper.col[t]]) if given is not None else -1,
             int(predicted_co[upper.row[t], upper.col[t]]))
            for t in top if upper.data[t] > 0
        ]  # fmt: skip
        counts = np.bincount(per_image, minlength=1)
        return CooccurrenceView(
            m.true_cardinality if m is not None else None,
            float(per_image.mean()),
            m.true_counts if m is not None else None,
            [int(c) for c in counts],
            classes,
            given,
            predicted_co,
            shown,
            pairs,
        )

    def json_items(self, content: CooccurrenceView | None) -> dict[str, Any]:
        if content is None:
            return {}
        small = len(content.labels) <= MATRIX_LABELS
        return {
            "label_cooccurrence": {
                "true_cardinality": content.true_cardinality,
                "predicted_cardinality": content.predicted_cardinality,
                "true_counts": content.true_counts,
                "predicted_counts": content.predicted_counts,
                "cooccurrence": (
                    content.cooccurrence.toarray().tolist() if small and content.cooccurrence is not None else None
                ),
                "predicted_cooccurrence": content.predicted_cooccurrence.toarray().tolist() if small else None,
                "pairs": [
                    {"a": a, "b": b, "given": g if g >= 0 else None, "predicted": n} for a, b, g, n in content.pairs
                ],
            }
        }

    def pictures(self, content: CooccurrenceView) -> PictureRequest:
        charts = {"cardinality": lambda: figures.cardinality_figure(content.true_counts, content.predicted_counts)}
        if len(content.shown) >= 2:
            matrix = content.cooccurrence if content.cooccurrence is not None else content.predicted_cooccurrence
            idx = np.array(content.shown)
            charts["cooccurrence"] = lambda: figures.cooccurrence_figure(
                matrix[idx][:, idx].toarray(), [content.labels[i] for i in idx]
            )
        return PictureRequest(charts=charts)


@dataclass
class LabelSuspectEntry:
    file: str
    thumb: str
    label: str
    kind: str  # "missing" or "extra"
    probability: float
    neighbour_share: float
    score: float
    given: list[str]  # the image's labels as given
    predicted: list[str]


@dataclass
class LabelSuspectsView:
    entries: list[LabelSuspectEntry]  # surest first
    found: LabelSuspicions | None  # None: not measured (see ``note``)
    layer: str | None
    note: str = ""


def _suspected(shared: Shared, multi: MultiLabelRun) -> LabelSuspectsView:
    if shared.reference is not None:
        return LabelSuspectsView([], None, None, "not measured with --reference (its folder has one label per image)")
    if not multi.known.any():
        return LabelSuspectsView([], None, None, "no image's labels are known")
    hood = shared.once(neighbourhood)
    if not hood.names:
        return LabelSuspectsView([], None, None, "no layer can be measured")
    layer = deep_layers(hood.names)[1]
    with shared.clock("suspects"):
        found = label_suspects(
            multi.truth, multi.known, shared.probs, multi.thresholds, hood.knn[layer].neighbours.indices
        )
    classes, files = shared.class_map.classes, shared.features.files

    def names(row: np.ndarray) -> list[str]:
        return [classes[j] for j in np.flatnonzero(row)]

    entries = [
        LabelSuspectEntry(
            files[s.row],
            thumb_key(files[s.row]),
            classes[s.label],
            s.kind,
            s.probability,
            s.neighbour_share,
            s.score,
            names(multi.truth[s.row]),
            names(multi.predicted[s.row]),
        )
        for s in found.suspects
    ]
    return LabelSuspectsView(entries, found, layer)


class LabelSuspectsSection(Section):
    id = "label-suspects"
    title = "Missing and extra labels"

    def build(self, shared: Shared) -> LabelSuspectsView | None:
        multi = shared.multilabel
        return None if multi is None else _suspected(shared, multi)

    def count(self, content: LabelSuspectsView) -> int | None:
        return None if content.found is None else content.found.missing + content.found.extra

    def json_items(self, content: LabelSuspectsView | None) -> dict[str, Any]:
        if content is None:
            return {}
        found = content.found
        return {
            "label_suspects": {
                "layer": content.layer,
                "note": content.note or None,
                "missing": None if found is None else found.missing,
                "extra": None if found is None else found.extra,
                "checked": None if found is None else found.checked,
                "suspects": [
                    {
                        "file": e.file,
                        "label": e.label,
                        "kind": e.kind,
                        "probability": e.probability,
                        "neighbour_share": e.neighbour_share,
                        "score": e.score,
                    }
                    for e in content.entries
                ],
            }
        }

    def pictures(self, content: LabelSuspectsView) -> PictureRequest:
        return PictureRequest(thumbs={e.thumb for e in content.entries[:SHOWN_LABEL_SUSPECTS]})
