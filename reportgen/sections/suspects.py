"""Suspected mislabels and near-duplicates: the images the neighbours and the model agree
are labeled wrong, and the pairs of images far closer than two different images are.
Two units over one computation (``neighbours.suspicions``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from reportgen.analyses.suspects import MIN_SCORE, DuplicatePair
from reportgen.report import PictureRequest, Section
from reportgen.sections.base import NeighbourEntry, Shared, label_name, neighbour_strip
from reportgen.sections.neighbours import neighbourhood, suspicions

# Suspects kept for the HTML and the JSON, most suspicious first: more than a person
# works through in one sitting, and a bound on both files whatever the folder's size.
SHOWN_SUSPECTS = 200


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
class Mislabels:
    entries: list[MislabelEntry]
    layers: list[str]  # the deep layers the mislabel score reads
    duplicate_layers: list[str]
    duplicate_ratio: float
    min_score: float = MIN_SCORE  # the mislabel score a flag needs


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
    groups: tuple[str, str] | None = None  # the --group-by values of a and b, where both have one

    @property
    def across(self) -> bool:
        """The two images belong to different --group-by groups: leakage between them."""
        return self.groups is not None and self.groups[0] != self.groups[1]


@dataclass
class Duplicates:
    pairs: list[DuplicateEntry]
    layers: list[str]  # the layers pairs were looked for at
    ratio: float  # below this share of the median nearest-neighbour distance
    reference: bool  # pairs may join an audited image to a --reference one
    group_by: str | None = None  # the metadata column of --group-by
    across: int = 0  # pairs found (shown or not) across its groups


def _groups(shared: Shared) -> dict[str, str] | None:
    """Each audited file's --group-by value (files without one left out); None without
    the option."""
    column = shared.cfg.group_by
    if column is None:
        return None
    dataset = shared.dataset
    j = dataset.metadata_columns.index(column)
    out = {}
    for file, values in dataset.metadata.items():
        value = values[j]
        if value is not None and str(value).strip():
            out[file] = str(value)
    return out


class MislabelsSection(Section):
    id = "mislabels"
    title = "Suspected mislabels"

    def build(self, shared: Shared, limit: int = SHOWN_SUSPECTS) -> Mislabels | None:
        if shared.multilabel is not None:
            return None  # missing and extra labels instead (``sections.multilabel``)
        found = shared.once(suspicions)
        if found is None:
            return None
        hood = shared.once(neighbourhood)
        deepest = hood.knn[found.deep_layers[-1]].neighbours if found.deep_layers else None
        entries = []
        for m in found.mislabels[:limit]:
            strip = []
            if deepest is not None:
                strip = neighbour_strip(deepest.indices[m.row], deepest.distances[m.row], hood.ref, m.label, hood.vocab)
            entries.append(
                MislabelEntry(
                    hood.audited.files[m.row],
                    hood.audited.key(m.row),
                    hood.vocab[m.label],
                    hood.vocab[m.suggested],
                    m.score,
                    m.disagreement,
                    m.p_label,
                    hood.predicted[m.row],
                    strip,
                )
            )
        return Mislabels(entries, found.deep_layers, found.duplicate_layers, found.ratio)

    def count(self, content: Mislabels) -> int:
        return len(content.entries)

    def json_items(self, content: Mislabels | None) -> dict[str, Any]:
        if content is None:
            return {}
        return {
            "suspected_mislabels": [
                {
                    "file": m.file,
                    "label": m.label,
                    "suggested": m.suggested,
                    "score": m.score,
                    "neighbour_disagreement": m.disagreement,
                    "p_label": m.p_label,
                }
                for m in content.entries
            ],
            "suspect_settings": {
                "mislabel_layers": content.layers,
                "duplicate_layers": content.duplicate_layers,
                "duplicate_ratio": content.duplicate_ratio,
                "mislabel_min_score": content.min_score,
            },
        }

    def pictures(self, content: Mislabels) -> PictureRequest:
        keys = {m.thumb for m in content.entries} | {n.thumb for m in content.entries for n in m.neighbours}
        return PictureRequest(thumbs=keys)


class DuplicatesSection(Section):
    id = "duplicates"
    title = "Near-duplicates"

    def build(self, shared: Shared, limit: int = SHOWN_SUSPECTS) -> Duplicates | None:
        found = shared.once(suspicions)
        if found is None:
            return None
        hood = shared.once(neighbourhood)
        group_of = _groups(shared)

        def groups(d: DuplicatePair) -> tuple[str, str] | None:
            if group_of is None or d.cross:
                return None
            a, b = group_of.get(hood.audited.files[d.a]), group_of.get(hood.audited.files[d.b])
            return None if a is None or b is None else (a, b)

        # Pairs across --group-by groups first (leakage), each kind closest first.
        crossing = [(g := groups(d)) is not None and g[0] != g[1] for d in found.duplicates]
        ordered = [d for d, c in sorted(zip(found.duplicates, crossing, strict=True), key=lambda t: not t[1])]
        across = sum(crossing)
        pairs = []
        for d in ordered[:limit]:
            other = hood.ref if d.cross else hood.audited
            pairs.append(
                DuplicateEntry(
                    hood.audited.files[d.a],
                    other.files[d.b],
                    hood.audited.key(d.a),
                    other.key(d.b),
                    d.distance,
                    d.ratio,
                    d.layer,
                    d.cross,
                    label_name(hood.vocab, int(hood.audited.labels[d.a])),
                    label_name(hood.vocab, int(other.labels[d.b])),
                    groups(d),
                )
            )
        if across:
            shared.notes.append(
                f"{across:,} near-duplicate pair(s) join images of different {shared.cfg.group_by!r} values: "
                "the same content on both sides of that grouping is leakage (see Near-duplicates)"
            )
        return Duplicates(
            pairs, found.duplicate_layers, found.ratio, shared.reference is not None, shared.cfg.group_by, across
        )

    def count(self, content: Duplicates) -> int:
        return len(content.pairs)

    def json_items(self, content: Duplicates | None) -> dict[str, Any]:
        if content is None:
            return {}
        return {
            "near_duplicates": [
                {
                    "a": d.a,
                    "b": d.b,
                    "distance": d.distance,
                    "ratio": d.ratio,
                    "layer": d.layer,
                    "b_in_reference": d.b_in_reference,
                    **(
                        {"groups": list(d.groups) if d.groups else None, "across_groups": d.across}
                        if content.group_by
                        else {}
                    ),
                }
                for d in content.pairs
            ],
            "near_duplicates_across_groups": None
            if content.group_by is None
            else {"column": content.group_by, "pairs": content.across},
        }

    def pictures(self, content: Duplicates) -> PictureRequest:
        return PictureRequest(thumbs={d.thumb_a for d in content.pairs} | {d.thumb_b for d in content.pairs})
