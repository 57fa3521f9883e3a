"""The audit's result, and the shape every part of the report shares.

A report is a list of :class:`Section` objects in reading order (``sections/order.py``
lists them once).  Each section builds its content from what the run shares
(``sections.base.Shared``), says what its side-bar entry counts, which keys it adds to
the JSON sidecar and which pictures it needs; its HTML is its own partial,
``templates/sections/<id>.html.j2``.  The pipeline, the picture step, :func:`to_json`
and ``report.html.j2`` all walk the same list, so a part of the report has one home.

:class:`AuditResult` holds the run's provenance (model, folder, options, timings) and
the built sections; :class:`Figures` holds the pictures the HTML embeds (the JSON holds
numbers only).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

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
    root_resolved: str  # the folder the image paths are relative to, links resolved
    labeled: bool
    n_images: int  # decoded and audited
    n_candidates: int  # image files found, decoded or not
    folder_classes: list[str]
    sha256: str
    source: str | None = None  # the manifest or --labels-file that lists the images
    source_sha256: str | None = None
    metadata_columns: list[str] = field(default_factory=list)
    multi_label: bool = False  # several labels per image (``labeled`` then stays False)


@dataclass
class PictureRequest:
    """The pictures one section's partial shows, as the picture step makes them.

    Keys of ``thumbs`` name images of the folders (``a:<file>``, ``r:<file>``); the other
    keys are the section's own (see ``sections.base``).  ``charts`` are drawn by calling them."""

    charts: dict[str, Callable[[], bytes]] = field(default_factory=dict)  # figure name -> drawing
    thumbs: set[str] = field(default_factory=set)
    overlays: dict[str, np.ndarray] = field(default_factory=dict)  # "kind:index:file" -> (h, w) map in [0, 1]
    pictures: dict[str, np.ndarray] = field(default_factory=dict)  # key -> (H, W, C) picture in [0, 1]
    blends: dict[str, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # key -> (picture, map)
    sprites: list[str] = field(default_factory=list)  # audited files, one sprite tile each (the explorer)


class Section(ABC):
    """One part of the report: built once, drawn by ``templates/sections/<id>.html.j2``.

    ``build`` returns the section's content (a plain dataclass of numbers and names), or None
    where the run does not make this part (options, an unlabeled folder, a model without
    maps).  The other methods read that content.
    """

    id: ClassVar[str]  # the page anchor, the partial's name
    title: ClassVar[str]  # the side-bar entry

    @abstractmethod
    def build(self, shared: Any) -> Any:
        """The content, from ``shared`` (a ``sections.base.Shared``), or None."""

    def shown(self, content: Any) -> bool:
        """Whether a built section appears on the page (its JSON is written either way)."""
        return True

    def count(self, content: Any) -> int | None:
        """The number the side bar shows beside the title (None: no number)."""
        return None

    def json_items(self, content: Any) -> dict[str, Any]:
        """The section's top-level keys of the JSON sidecar; ``content`` is None when the
        section was not built (keys documented as null then say so here)."""
        return {}

    def pictures(self, content: Any) -> PictureRequest:
        """What the picture step must make for the partial."""
        return PictureRequest()

    def page_data(self, content: Any, figures: Figures) -> Any:
        """Data for the page's scripts, embedded as JSON in the partial (None: none)."""
        return None


@dataclass
class Built:
    """A section with what it built (None: not made in this run)."""

    section: Section
    content: Any

    @property
    def id(self) -> str:
        return self.section.id

    @property
    def title(self) -> str:
        return self.section.title

    @property
    def shown(self) -> bool:
        return self.content is not None and self.section.shown(self.content)

    @property
    def count(self) -> int | None:
        return None if self.content is None else self.section.count(self.content)


@dataclass
class AuditResult:
    """Everything the report says: the run's provenance, and its parts in reading order."""

    tool_version: str
    generated_at: str | None
    options: dict[str, Any]
    model: ModelSummary
    dataset: DatasetSummary
    classes: list[str]
    class_source: str
    preprocessing: dict[str, Any]
    warnings: list[str]
    timings: dict[str, float] | None = None
    throughput: dict[str, float] | None = None
    engine: dict[str, Any] | None = None  # a distributed extraction's workers, shards and phases (ray_engine.EngineRun)
    features_from_cache: bool | None = False  # None when SOURCE_DATE_EPOCH asks for reproducible output
    sections: list[Built] = field(default_factory=list)

    def content(self, section_id: str) -> Any:
        """The content a section built (None when it built none, or is not in the report)."""
        return next((b.content for b in self.sections if b.id == section_id), None)


@dataclass
class Figures:
    """PNG/GIF bytes and thumbnails for the HTML only."""

    images: dict[str, bytes] = field(default_factory=dict)  # chart name -> PNG or GIF bytes
    thumbs: dict[str, str] = field(default_factory=dict)  # thumbnail or picture key -> data URI
    sprites: SpriteSheets | None = None  # the explorer's thumbnails, one tile per point


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


def to_json(result: AuditResult) -> dict[str, Any]:
    """The JSON sidecar (see the README's "JSON sidecar" section for every key): the run's
    provenance, each section's keys in report order, then the run's notes."""
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
            "source": result.dataset.source,
            "source_sha256": result.dataset.source_sha256,
            "metadata_columns": result.dataset.metadata_columns,
            "multi_label": result.dataset.multi_label,
        },
        "classes": result.classes,
        "class_source": result.class_source,
        "preprocessing": result.preprocessing,
    }
    for built in result.sections:
        out.update(built.section.json_items(built.content))
    out.update(
        {
            "warnings": result.warnings,
            "features_from_cache": result.features_from_cache,
            "timings": result.timings,
            "throughput": result.throughput,
            "engine": result.engine,
        }
    )
    return round_floats(out)
