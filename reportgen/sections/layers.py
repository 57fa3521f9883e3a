"""Layer by layer: every audited layer's shape and pooling, its kNN accuracy and label
agreement, the t-SNE's trustworthiness, and why a number is missing where it is."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from reportgen import figures
from reportgen.analyses.knn import SearchReport
from reportgen.models import INPUT_LAYER, LOGITS_LAYER, pooling
from reportgen.report import PictureRequest, Section
from reportgen.sections.base import Shared
from reportgen.sections.neighbours import embedding, neighbourhood


@dataclass
class LayerSummary:
    name: str
    shape: tuple[int, ...]
    dim: int
    op: str
    layout: str = ""  # chw, hwc, tokens, vector, or "" (see models/layouts.py)
    pooling: str = ""  # how the tensor became one vector per image (models.pooling)
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
class Layers:
    rows: list[LayerSummary]
    k: int  # neighbours per image
    source: str  # where the neighbours come from, in words
    pool_values: int  # --pool-values

    @property
    def approximate(self) -> bool:
        """Whether any layer's neighbours came from the approximate index."""
        return any(r.knn_search is not None and r.knn_search.method == "approximate" for r in self.rows)


class LayersSection(Section):
    id = "layers"
    title = "Layer by layer"

    def build(self, shared: Shared) -> Layers | None:
        layers = shared.features.layers
        if not layers:
            return None
        hood = shared.once(neighbourhood)
        tsne = shared.once(embedding)
        rows = []
        for layer in layers:
            row = LayerSummary(
                layer.name,
                tuple(layer.shape),
                layer.dim,
                layer.op,
                layer.layout,
                "pixels, area-averaged"
                if layer.name == INPUT_LAYER
                else ("as is" if layer.name == LOGITS_LAYER else pooling(layer)),
                layer.module,
            )
            notes = [shared.unusable.get(layer.name, "")]
            found = hood.knn.get(layer.name)
            if found is not None:
                row.knn_accuracy, row.knn_agreement, row.knn_search = found.accuracy, found.agreement, found.search
                row.knn_accuracy_global_mean = hood.global_mean_accuracy.get(layer.name)
                notes.append(found.note)
            if tsne is not None:
                row.tsne_trustworthiness = tsne.trustworthiness.get(layer.name)
                notes.append(tsne.notes.get(layer.name, ""))
            row.note = "; ".join(dict.fromkeys(n for n in notes if n))
            rows.append(row)
        return Layers(rows, shared.cfg.k, hood.source, shared.cfg.pool_values)

    def json_items(self, content: Layers | None) -> dict[str, Any]:
        rows = content.rows if content is not None else []
        return {
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
                for layer in rows
            ]
        }

    def pictures(self, content: Layers) -> PictureRequest:
        rows = content.rows
        if not any(r.knn_accuracy is not None or r.tsne_trustworthiness is not None for r in rows):
            return PictureRequest()
        series = {
            "kNN accuracy (leave-one-out)": [r.knn_accuracy for r in rows],
            "neighbour label agreement": [r.knn_agreement for r in rows],
            # Where a layer keeps a grid, what its global mean alone would score.
            "kNN accuracy, maps averaged to one vector": [
                r.knn_accuracy if r.knn_accuracy_global_mean is None else r.knn_accuracy_global_mean for r in rows
            ]
            if any(r.knn_accuracy_global_mean is not None for r in rows)
            else [None] * len(rows),
            "t-SNE trustworthiness": [r.tsne_trustworthiness for r in rows],
        }
        series = {k: v for k, v in series.items() if any(x is not None for x in v)}
        names = [r.name for r in rows]
        return PictureRequest(charts={"layer_curve": lambda: figures.layer_curve_figure(names, series, "score")})
