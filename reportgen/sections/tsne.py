"""t-SNE per layer: an animated, aligned 2-D map of every layer, and all of them side by side."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from reportgen import figures
from reportgen.analyses.tsne import TsneResult, perplexity_for
from reportgen.report import PictureRequest, Section
from reportgen.sections.base import Shared
from reportgen.sections.neighbours import colours, embedding


@dataclass
class Tsne:
    result: TsneResult
    labels: np.ndarray  # colour index per embedded point
    misclassified: np.ndarray  # bool per embedded point
    class_names: list[str]  # what the colour indices name
    subtitles: list[str]  # per embedded layer: its shape and trustworthiness (or why it has no map)
    labeled: bool  # coloured by folder label (else by prediction)
    max_points: int  # --tsne-max-points

    @property
    def swatches(self) -> list[dict[str, str]]:
        return figures.class_swatches(self.class_names)


class TsneSection(Section):
    id = "tsne"
    title = "t-SNE per layer"

    def build(self, shared: Shared) -> Tsne | None:
        result = shared.once(embedding)
        if result is None:
            return None
        labeled = bool(shared.result.dataset.labeled)
        wrong = (shared.truth >= 0) & (shared.pred != shared.truth)
        shapes = {layer.name: layer.shape for layer in shared.features.layers}
        subtitles = []
        for name in result.layers:
            t = result.trustworthiness.get(name)
            dims = "x".join(str(v) for v in shapes.get(name, ()))
            subtitles.append(
                dims + (f" · trustworthiness {t:.3f}" if t is not None else f" · {result.notes.get(name, '')}")
            )
        names = list(shared.result.dataset.folder_classes) if labeled else shared.class_map.classes
        return Tsne(
            result,
            colours(shared)[result.rows],
            wrong[result.rows],
            names,
            subtitles,
            labeled,
            shared.cfg.tsne_max_points,
        )

    def json_items(self, content: Tsne | None) -> dict[str, Any]:
        if content is None:
            return {}
        r = content.result
        return {
            "tsne": {
                "n_points": len(r.rows),
                "n_total": r.n_total,
                "sampled": r.sampled,
                "perplexity": perplexity_for(len(r.rows)),
                "layers": {
                    layer: {"trustworthiness": r.trustworthiness.get(layer), "note": r.notes.get(layer)}
                    for layer in r.layers
                },
            }
        }

    def pictures(self, content: Tsne) -> PictureRequest:
        r = content.result
        embeddings = [r.embeddings.get(name) for name in r.layers]
        k = len(content.class_names)

        def animation() -> bytes:
            gif, _ = figures.tsne_animation(
                r.layers, embeddings, content.subtitles, content.labels, content.misclassified, k
            )
            return gif

        return PictureRequest(
            charts={
                "tsne_gif": animation,
                "tsne_grid": lambda: figures.tsne_grid(
                    r.layers, embeddings, content.subtitles, content.labels, content.misclassified, k
                ),
            }
        )
