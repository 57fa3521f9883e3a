"""The report's contents: one dataclass per section, and :class:`Sections`, which holds them.

The section builders (``reportgen.sections``) compute these; the template reads them and
each one's ``json_items`` gives its part of the JSON sidecar, so the HTML and the JSON
cannot disagree.  Pictures a section needs (maps, synthesised inputs) travel with it as
arrays; the render stage encodes them.  Images are referred to by keys (see
``reportgen.sections``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any, Protocol

import numpy as np

from reportgen.analyses.shortcuts import GRID
from reportgen.analyses.suspects import MIN_SCORE
from reportgen.analyses.tsne import TsneResult, perplexity_for


class Section(Protocol):
    def json_items(self) -> dict[str, Any]:
        """The section's top-level keys in the JSON sidecar."""
        ...


@dataclass
class ReferenceSection:
    """The ``--reference`` folder the neighbours were searched in."""

    root: str
    n_images: int
    classes: list[str]

    def json_items(self) -> dict[str, Any]:
        return {"reference": {"root": self.root, "n_images": self.n_images, "classes": self.classes}}


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
    min_score: float = MIN_SCORE  # the mislabel score a flag needs

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
                "mislabel_min_score": self.min_score,
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

    def json_items(self) -> dict[str, Any]:
        r = self.result
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


@dataclass
class ExplorerSection:
    """One point per embedded image (index ``i`` is row ``rows[i]`` of the features)."""

    layers: list[str]  # layers with a t-SNE map, in layer order
    rows: np.ndarray  # (n,) feature rows of the points
    files: list[str]  # (n,) file names, relative to the image folder
    positions: np.ndarray  # (L, n, 2) float32 aligned t-SNE coordinates, the GIF's frames
    neighbours: np.ndarray  # (L, n, k) int point indices, nearest first
    labels: np.ndarray  # (n,) index into ``names``, -1 unlabeled
    preds: np.ndarray  # (n,) index into ``names`` of the predicted class
    pred_outputs: np.ndarray  # (n,) the same prediction as the model's output index (names its Grad-CAM)
    confidence: np.ndarray  # (n,) probability of the predicted class
    correct: np.ndarray  # (n,) int8: 1 right, 0 wrong, -1 unknown (no label, or a label that is no model class)
    suspect: np.ndarray  # (n,) mislabel score in [0, 1], NaN where none (unlabeled)
    names: list[str]  # class names: the folder's labels, then output classes not among them
    mislabels: dict[int, str] = field(default_factory=dict)  # flagged point -> suggested label
    duplicates: dict[int, list[str]] = field(default_factory=dict)  # point -> files it near-duplicates
    metric: str = "euclidean"
    sampled: bool = False
    n_total: int = 0
    neighbour_scope: str = "all audited images"
    labeled: bool = True

    @property
    def k(self) -> int:
        return int(self.neighbours.shape[2])

    def json_items(self) -> dict[str, Any]:
        return {
            "explorer": {
                "n_points": len(self.files),
                "n_total": self.n_total,
                "sampled": self.sampled,
                "layers": self.layers,
                "k": self.k,
                "metric": self.metric,
                "neighbours_among": self.neighbour_scope,
            }
        }


@dataclass
class GalleryTile:
    file: str
    thumb: str
    overlay: str | None  # overlay thumbnail key, None when no map could be computed or it is blank
    score: float  # probability of the gallery's class
    predicted: str
    truth: str | None
    correct: bool | None
    blank: bool = False  # a map was computed and is zero everywhere (shown as such, not as an overlay)


@dataclass
class ClassGallery:
    index: int
    name: str
    max: list[GalleryTile]
    min: list[GalleryTile]
    wrong: list[GalleryTile]


@dataclass
class GalleriesSection:
    """Max/min-activating and confidently-wrong images per class, with CAM overlays."""

    method: str | None  # CAM method, None when no map could be made
    layer: str | None
    classes: list[ClassGallery]
    size: int
    note: str = ""
    maps: dict[str, np.ndarray] = field(default_factory=dict)  # overlay key -> (H, W) map
    score_source: str = "logits"  # which score the maps explain (see ``pipeline.class_scores``)
    blank: int = 0  # maps that came out zero everywhere

    def explained(self) -> str:
        """The report's sentence on what the maps explain and the galleries are ranked by."""
        return explained_scores(self.score_source)

    def thumb_keys(self) -> set[str]:
        return {t.thumb for g in self.classes for t in (*g.max, *g.min, *g.wrong)}

    def json_items(self) -> dict[str, Any]:
        def tiles(items: list[GalleryTile]) -> list[dict[str, Any]]:
            return [{"file": t.file, "score": t.score, "pred": t.predicted, "blank_map": t.blank} for t in items]

        return {
            "galleries": {
                g.name: {"max": tiles(g.max), "min": tiles(g.min), "wrong": tiles(g.wrong)} for g in self.classes
            },
            "cam": {
                "method": self.method,
                "layer": self.layer,
                "note": self.note or None,
                "explains": self.score_source,
                "blank_maps": self.blank,
            },
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


def explained_scores(source: str) -> str:
    """One sentence for the report: which score the maps explain, what ranks the galleries."""
    if source == "logits before softmax":
        return (
            "The maps explain each class's logit, taken before the model's final softmax (a saturated "
            "softmax has no gradient, so maps of the probability would be blank exactly where the model "
            "is surest); galleries are ranked by the log-odds computed from the logits (the logit margin, for two "
            "classes), so images at probability 1.0 are still ordered by how far ahead the class is."
        )
    if source == "logits":
        return (
            "The maps explain each class's logit (the model's output); galleries are ranked by the "
            "log-odds computed from the logits, so images at probability 1.0 are still ordered."
        )
    return (
        "The model outputs probabilities and its graph has no final softmax to cut before, so the maps "
        "explain the probability itself: where the model is sure, its gradient vanishes and maps can "
        "be blank, and images at probability 1.0 tie (ties keep file order)."
    )


@dataclass
class Shortcut:
    """A flagged class: its evidence sits in one spot, and covering the spot costs it."""

    cls: str
    where: str  # e.g. "top-left corner"
    cell: tuple[int, int]  # (row, column) in the GRID x GRID grid
    box: tuple[int, int, int, int]  # the cell in input pixels (x0, y0, x1, y1), exclusive ends
    images: int  # of the class, whose maps and occlusions were measured
    concentration: float  # mean share of the map mass in the cell
    consistency: float  # share of the images whose map peaks in the cell
    specificity: float  # concentration over the other classes' median share in the cell
    border_share: float  # mean share of the map mass in the outer ring of cells
    occlusion_drop: float  # mean drop of the class's probability with the cell covered in grey
    random_drop: float  # the same with another cell covered (RANDOM_CELLS cells per image, seeded)
    picture: str = ""  # picture key: the class's mean map over its images' mean


@dataclass
class ShortcutsSection:
    flagged: list[Shortcut]
    checked: int  # classes with enough maps to judge
    candidates: int  # classes whose evidence stood out before the occlusion test
    images_per_class: int
    method: str | None
    note: str = ""
    blends: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # key -> (mean image, mean map)
    grid: int = GRID

    def json_items(self) -> dict[str, Any]:
        return {
            "shortcuts": [
                {
                    "class": s.cls,
                    "where": s.where,
                    "cell": list(s.cell),
                    "box": list(s.box),
                    "images": s.images,
                    "concentration": s.concentration,
                    "consistency": s.consistency,
                    "specificity": None if not np.isfinite(s.specificity) else s.specificity,
                    "border_share": s.border_share,
                    "occlusion_drop": s.occlusion_drop,
                    "random_occlusion_drop": s.random_drop,
                }
                for s in self.flagged
            ],
            "shortcut_settings": {
                "grid": GRID,
                "classes_checked": self.checked,
                "candidates": self.candidates,
                "images_per_class": self.images_per_class,
                "method": self.method,
                "note": self.note or None,
            },
        }


@dataclass
class UnitTile:
    """A unit: its synthesised input, and its top real images with their projections."""

    layer: str
    index: int
    name: str  # "channel 12" or the class name
    value: float  # on its synthesised input: mean activation, or probability for a class
    mean_value: float  # the same measure averaged over the audited images
    picture: str  # picture key of the synthesised input
    top: list[tuple[str, str, str | None]]  # (file, thumbnail key, projection picture key)
    responded: bool = True  # False: no run beat its start (for a class: made the class win)
    runs: int = 1  # seeded runs it took


@dataclass
class UnitsSection:
    """Activation maximisation and guided backpropagation for chosen units."""

    route: str
    steps: int
    seed: int
    groups: list[tuple[str, list[UnitTile]]]  # (heading, units)
    note: str = ""
    pictures: dict[str, np.ndarray] = field(default_factory=dict)  # key -> (H, W, C) in [0, 1]

    def thumb_keys(self) -> set[str]:
        return {thumb for _, tiles in self.groups for t in tiles for _, thumb, _ in t.top}

    def json_items(self) -> dict[str, Any]:
        return {
            "units": {
                "route": self.route or None,
                "steps": self.steps,
                "seed": self.seed,
                "note": self.note or None,
                "groups": [
                    {
                        "heading": heading,
                        "units": [
                            {
                                "layer": t.layer,
                                "index": t.index,
                                "name": t.name,
                                "synthesized_value": t.value,
                                "mean_value": t.mean_value,
                                "responded": t.responded,
                                "runs": t.runs,
                                "top": [f for f, _, _ in t.top],
                            }
                            for t in tiles
                        ],
                    }
                    for heading, tiles in self.groups
                ],
            }
        }


@dataclass
class Sections:
    """Every section of the report; ``None`` where the run did not make it (options, a
    model without spatial layers, ...).  The order of the fields is the JSON's."""

    reference: ReferenceSection | None = None
    knn: KnnSection | None = None
    suspects: SuspectsSection | None = None
    tsne: TsneSection | None = None
    explorer: ExplorerSection | None = None
    galleries: GalleriesSection | None = None
    shortcuts: ShortcutsSection | None = None
    channels: ChannelsSection | None = None
    units: UnitsSection | None = None

    def present(self) -> list[Section]:
        """The sections the run made, in the JSON's order."""
        return [s for s in (getattr(self, f.name) for f in fields(self)) if s is not None]
