"""Report sections built from analysis results: numbers joined with file and class names.

Each section is a dataclass the template reads and whose ``to_json`` gives its part of
the JSON sidecar, so the HTML and the JSON cannot disagree.  Images are referred to by
thumbnail keys (``a:<file>`` for the audited folder, ``r:<file>`` for ``--reference``);
the render stage turns every key into one embedded thumbnail.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from reportgen.analyses.knn import LayerKnn
from reportgen.analyses.suspects import DuplicatePair, Mislabel
from reportgen.analyses.tsne import TsneResult


def thumb_key(file: str, reference: bool = False) -> str:
    return ("r:" if reference else "a:") + file


@dataclass
class ImageSet:
    """Names of the rows of a feature set (the audited folder or the reference)."""

    files: list[str]
    labels: np.ndarray  # int label per row in the shared vocabulary, -1 unlabeled
    reference: bool = False

    def key(self, row: int) -> str:
        return thumb_key(self.files[row], self.reference)


@dataclass
class NeighbourEntry:
    file: str
    thumb: str
    distance: float
    label: str | None
    match: bool | None  # same label as the query (None when either is unlabeled)


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
class KnnSection:
    """kNN tables: the chosen queries and their neighbours at every layer."""

    k: int
    metric: str
    source: str  # "leave-one-out" or the reference folder
    layers: list[str]
    key_layers: list[str]  # shown by default: pixels, one middle layer, penultimate
    queries: list[KnnQuery]
    class_names: list[str]  # label vocabulary, for the selector

    def thumb_keys(self) -> set[str]:
        keys = {q.thumb for q in self.queries}
        for q in self.queries:
            for strip in q.neighbours.values():
                keys.update(n.thumb for n in strip)
        return keys

    def json_items(self) -> dict[str, Any]:
        return {
            "knn": self.knn_json(),
            "knn_settings": {"k": self.k, "metric": self.metric, "source": self.source, "queries": len(self.queries)},
        }

    def knn_json(self) -> dict[str, Any]:
        return {
            layer: [
                {
                    "query": q.file,
                    "neighbours": [
                        {"file": n.file, "distance": n.distance, "label": n.label} for n in q.neighbours[layer]
                    ],
                }
                for q in self.queries
            ]
            for layer in self.layers
        }


@dataclass
class MislabelEntry:
    file: str
    thumb: str
    label: str
    suggested: str
    score: float
    disagreement: float
    p_label: float
    predicted: str
    neighbours: list[NeighbourEntry]  # at the deepest suspect layer


@dataclass
class DuplicateEntry:
    a: str
    b: str
    thumb_a: str
    thumb_b: str
    distance: float
    ratio: float
    layer: str
    b_in_reference: bool
    label_a: str | None
    label_b: str | None


@dataclass
class SuspectsSection:
    mislabels: list[MislabelEntry]
    duplicates: list[DuplicateEntry]
    layers: list[str]  # the deep layers the mislabel score reads
    duplicate_layers: list[str]
    duplicate_ratio: float

    def thumb_keys(self) -> set[str]:
        keys = {m.thumb for m in self.mislabels} | {n.thumb for m in self.mislabels for n in m.neighbours}
        return keys | {d.thumb_a for d in self.duplicates} | {d.thumb_b for d in self.duplicates}

    def json_items(self) -> dict[str, Any]:
        return {
            "suspected_mislabels": self.mislabels_json(),
            "near_duplicates": self.duplicates_json(),
            "suspect_settings": {
                "mislabel_layers": self.layers,
                "duplicate_layers": self.duplicate_layers,
                "duplicate_ratio": self.duplicate_ratio,
            },
        }

    def mislabels_json(self) -> list[dict[str, Any]]:
        return [
            {
                "file": m.file,
                "label": m.label,
                "suggested": m.suggested,
                "score": m.score,
                "neighbour_disagreement": m.disagreement,
                "p_label": m.p_label,
            }
            for m in self.mislabels
        ]

    def duplicates_json(self) -> list[dict[str, Any]]:
        return [
            {
                "a": d.a,
                "b": d.b,
                "distance": d.distance,
                "ratio": d.ratio,
                "layer": d.layer,
                "b_in_reference": d.b_in_reference,
            }
            for d in self.duplicates
        ]


@dataclass
class TsneSection:
    """t-SNE frames (for the figures) and what the JSON records about them."""

    result: TsneResult
    labels: np.ndarray  # colour index per embedded point
    misclassified: np.ndarray  # bool per embedded point
    class_names: list[str]
    layer_notes: dict[str, str] = field(default_factory=dict)

    def json_items(self) -> dict[str, Any]:
        r = self.result
        return {
            "tsne": {
                "n_points": len(r.rows),
                "n_total": r.n_total,
                "sampled": r.sampled,
                "perplexity": 30.0,
                "layers": {
                    layer: {"trustworthiness": r.trustworthiness.get(layer), "note": r.notes.get(layer)}
                    for layer in r.layers
                },
            }
        }


def _label_name(vocab: list[str], value: int) -> str | None:
    return vocab[value] if value >= 0 else None


def neighbour_strip(
    nb_indices: np.ndarray,
    nb_distances: np.ndarray,
    ref: ImageSet,
    own_label: int,
    vocab: list[str],
) -> list[NeighbourEntry]:
    out = []
    for j, d in zip(nb_indices, nb_distances, strict=True):
        lab = int(ref.labels[j])
        match = None if own_label < 0 or lab < 0 else lab == own_label
        out.append(NeighbourEntry(ref.files[j], ref.key(int(j)), float(d), _label_name(vocab, lab), match))
    return out


def choose_queries(
    labels: np.ndarray,
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


def build_knn_section(
    knn: dict[str, LayerKnn],
    layers: list[str],
    key_layers: list[str],
    rows: list[int],
    audited: ImageSet,
    ref: ImageSet,
    vocab: list[str],
    predicted: list[str],
    wrong: np.ndarray,
    groups: np.ndarray,
    k: int,
    metric: str,
    source: str,
) -> KnnSection:
    queries = []
    for row in rows:
        own = int(audited.labels[row])
        neighbours = {
            layer: neighbour_strip(
                knn[layer].neighbours.indices[row], knn[layer].neighbours.distances[row], ref, own, vocab
            )
            for layer in layers
        }
        queries.append(
            KnnQuery(
                row,
                audited.files[row],
                audited.key(row),
                _label_name(vocab, own),
                predicted[row],
                bool(wrong[row]),
                f"c{groups[row]}",
                neighbours,
            )
        )
    return KnnSection(k, metric, source, layers, key_layers, queries, vocab)


def build_suspects_section(
    mislabels: list[Mislabel],
    duplicates: list[DuplicatePair],
    knn: dict[str, LayerKnn],
    deep_layers: list[str],
    dup_layers: list[str],
    dup_ratio: float,
    audited: ImageSet,
    ref: ImageSet,
    vocab: list[str],
    predicted: list[str],
    limit: int = 200,
) -> SuspectsSection:
    deepest = knn[deep_layers[-1]].neighbours if deep_layers else None
    entries = []
    for m in mislabels[:limit]:
        strip = []
        if deepest is not None:
            strip = neighbour_strip(deepest.indices[m.row], deepest.distances[m.row], ref, m.label, vocab)
        entries.append(
            MislabelEntry(
                audited.files[m.row],
                audited.key(m.row),
                vocab[m.label],
                vocab[m.suggested],
                m.score,
                m.disagreement,
                m.p_label,
                predicted[m.row],
                strip,
            )
        )
    dups = []
    for d in duplicates[:limit]:
        other = ref if d.cross else audited
        dups.append(
            DuplicateEntry(
                audited.files[d.a],
                other.files[d.b],
                audited.key(d.a),
                other.key(d.b),
                d.distance,
                d.ratio,
                d.layer,
                d.cross,
                _label_name(vocab, int(audited.labels[d.a])),
                _label_name(vocab, int(other.labels[d.b])),
            )
        )
    return SuspectsSection(entries, dups, deep_layers, dup_layers, dup_ratio)


# ------------------------------------------------------------------ galleries and channels


def overlay_key(kind: str, index: int, file: str) -> str:
    """Key of a heat-map overlay thumbnail: ``cam:<class>:<file>`` or ``ch:<channel>:<file>``."""
    return f"{kind}:{index}:{file}"


@dataclass
class GalleryTile:
    file: str
    thumb: str
    overlay: str | None  # overlay thumbnail key, None when no map could be computed
    score: float  # probability of the gallery's class
    predicted: str
    truth: str | None
    correct: bool | None


@dataclass
class ClassGallery:
    index: int
    name: str
    max: list[GalleryTile]
    min: list[GalleryTile]
    wrong: list[GalleryTile]
    cue_mass: float | None = None  # unused unless a caller measures it


@dataclass
class GalleriesSection:
    """Max/min-activating and confidently-wrong images per class, with CAM overlays."""

    method: str | None  # CAM method, None when no map could be made
    layer: str | None
    classes: list[ClassGallery]
    size: int
    note: str = ""
    maps: dict[str, np.ndarray] = field(default_factory=dict)  # overlay key -> (H, W) map

    def thumb_keys(self) -> set[str]:
        return {t.thumb for g in self.classes for t in (*g.max, *g.min, *g.wrong)}

    def overlay_maps(self) -> dict[str, np.ndarray]:
        return self.maps

    def json_items(self) -> dict[str, Any]:
        def tiles(items: list[GalleryTile]) -> list[dict[str, Any]]:
            return [{"file": t.file, "score": t.score, "pred": t.predicted} for t in items]

        return {
            "galleries": {
                g.name: {"max": tiles(g.max), "min": tiles(g.min), "wrong": tiles(g.wrong)} for g in self.classes
            },
            "cam": {"method": self.method, "layer": self.layer, "note": self.note or None},
        }


@dataclass
class ChannelTile:
    file: str
    thumb: str
    overlay: str | None
    activation: float


@dataclass
class ChannelEntry:
    channel: int
    variance: float
    tiles: list[ChannelTile]


@dataclass
class ChannelsSection:
    layer: str
    channels: list[ChannelEntry]
    note: str = ""
    maps: dict[str, np.ndarray] = field(default_factory=dict)

    def thumb_keys(self) -> set[str]:
        return {t.thumb for c in self.channels for t in c.tiles}

    def overlay_maps(self) -> dict[str, np.ndarray]:
        return self.maps

    def json_items(self) -> dict[str, Any]:
        return {
            "channels": {
                "layer": self.layer,
                "note": self.note or None,
                "items": [
                    {
                        "channel": c.channel,
                        "variance": c.variance,
                        "top": [{"file": t.file, "activation": t.activation} for t in c.tiles],
                    }
                    for c in self.channels
                ],
            }
        }
