"""Nearest neighbours: for a few query images per class (and the misclassified ones), their
nearest neighbours at every layer, from the pixels to the logits."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from reportgen.models import INPUT_LAYER, LOGITS_LAYER
from reportgen.report import PictureRequest, Section
from reportgen.sections.base import NeighbourEntry, Shared, label_name, neighbour_strip
from reportgen.sections.neighbours import deep_layers, neighbourhood

# Queries opened on the page at first; the rest are one click away.  Each query shows a
# strip of neighbours per layer: a few are enough to see what the layers do, and the page
# stays scannable (46 open queries once took more than half of it).
OPEN_QUERIES = 6


@dataclass
class KnnQuery:
    row: int
    file: str
    thumb: str
    label: str | None
    predicted: str
    misclassified: bool
    group: str  # class index for the selector, e.g. "c3"
    neighbours: dict[str, list[NeighbourEntry]]  # layer -> nearest first


@dataclass
class Knn:
    """kNN tables: the chosen queries and their neighbours at every layer."""

    k: int
    metric: str
    source: str  # "leave-one-out" or the reference folder
    layers: list[str]
    key_layers: list[str]  # shown by default: pixels, one middle layer, penultimate
    queries: list[KnnQuery]
    class_names: list[str]  # label vocabulary, for the selector
    per_class: int  # --queries-per-class
    cap: int  # --max-queries
    open_queries: int = OPEN_QUERIES


def choose_queries(
    groups: np.ndarray,
    wrong: np.ndarray,
    wrong_score: np.ndarray,
    per_class: int,
    cap: int,
    seed: int,
) -> list[int]:
    """A few seeded picks per group (class), then misclassified images, most confident
    first, up to ``cap`` in all."""
    rng = np.random.default_rng(seed)
    picks: list[int] = []
    for g in np.unique(groups[groups >= 0]):
        members = np.flatnonzero(groups == g)
        take = min(per_class, len(members))
        picks.extend(sorted(int(i) for i in rng.choice(members, size=take, replace=False)))
    chosen = picks[:cap]
    taken = set(chosen)
    for i in np.flatnonzero(wrong)[np.argsort(-wrong_score[wrong], kind="stable")]:
        if len(chosen) >= cap:
            break
        if int(i) not in taken:
            chosen.append(int(i))
            taken.add(int(i))
    return chosen


class KnnSection(Section):
    id = "knn"
    title = "Nearest neighbours"

    def build(self, shared: Shared) -> Knn | None:
        cfg, pred, probs = shared.cfg, shared.pred, shared.probs
        hood = shared.once(neighbourhood)
        names = hood.names
        if not names:
            return None
        rows = choose_queries(
            hood.groups, hood.wrong, probs[np.arange(len(pred)), pred], cfg.queries_per_class, cfg.max_queries, cfg.seed
        )
        inner = [n for n in names if n not in (INPUT_LAYER, LOGITS_LAYER)]
        key_layers = [n for n in (names[0], inner[len(inner) // 2] if inner else None, deep_layers(names)[1]) if n]
        audited, ref, vocab = hood.audited, hood.ref, hood.vocab
        queries = []
        for row in rows:
            own = int(audited.labels[row])
            neighbours = {
                layer: neighbour_strip(
                    hood.knn[layer].neighbours.indices[row], hood.knn[layer].neighbours.distances[row], ref, own, vocab
                )
                for layer in names
            }
            queries.append(
                KnnQuery(
                    row,
                    audited.files[row],
                    audited.key(row),
                    label_name(vocab, own),
                    hood.predicted[row],
                    bool(hood.wrong[row]),
                    f"c{hood.groups[row]}",
                    neighbours,
                )
            )
        return Knn(
            cfg.k,
            cfg.metric,
            hood.source,
            names,
            list(dict.fromkeys(key_layers)),
            queries,
            vocab,
            cfg.queries_per_class,
            cfg.max_queries,
        )

    def json_items(self, content: Knn | None) -> dict[str, Any]:
        if content is None:
            return {}
        return {
            "knn": {
                layer: [
                    {
                        "query": q.file,
                        "neighbours": [
                            {"file": n.file, "distance": n.distance, "label": n.label} for n in q.neighbours[layer]
                        ],
                    }
                    for q in content.queries
                ]
                for layer in content.layers
            },
            "knn_settings": {
                "k": content.k,
                "metric": content.metric,
                "source": content.source,
                "queries": len(content.queries),
            },
        }

    def pictures(self, content: Knn) -> PictureRequest:
        keys = {q.thumb for q in content.queries}
        for q in content.queries:
            for strip in q.neighbours.values():
                keys.update(n.thumb for n in strip)
        return PictureRequest(thumbs=keys)
