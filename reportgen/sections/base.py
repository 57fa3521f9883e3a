"""What the sections of the report share: the run's results (:class:`Shared`), computed
once, and small helpers for naming images.

Images are referred to by keys: ``a:<file>`` (audited folder) and ``r:<file>``
(``--reference``) for thumbnails, ``cam:``, ``ch:``, ``unit:``, ``gbp:``, ``shortcut:`` for
pictures a section makes; the picture step turns every key into one embedded image.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import numpy as np

from reportgen.analyses.metrics import ClassBalance, ClassificationMetrics
from reportgen.analyses.multilabel import MultiLabelMetrics
from reportgen.config import AuditConfig
from reportgen.data import DecodeError, ImageDataset, Preprocess, Skipped, load_one
from reportgen.extract import Features
from reportgen.labels import ClassMap
from reportgen.report import AuditResult

if TYPE_CHECKING:
    from reportgen.clock import Clock
    from reportgen.models import ModelHandle

T = TypeVar("T")


@dataclass
class MultiLabelRun:
    """A multi-label audit's ground truth and decisions (see ``analyses.multilabel``)."""

    truth: np.ndarray  # (N, K) int8, 1 where the image carries the label
    known: np.ndarray  # (N,) bool, the image's labels are known
    thresholds: np.ndarray  # (K,) a label is predicted at p >= its threshold
    predicted: np.ndarray  # (N, K) bool
    metrics: MultiLabelMetrics | None  # None when no image's labels are known


@dataclass
class Shared:
    """What every section reads once the model has run over the images, and a memo of the
    intermediate results several sections need (the neighbours of every layer, the model
    cut for maps, ...): each is a function of ``Shared`` computed once, by :meth:`once`,
    whichever section asks first."""

    cfg: AuditConfig
    result: AuditResult  # the run's provenance (model, folder, classes); read only
    features: Features  # every audited layer, one row per decoded image
    probs: np.ndarray  # (N, K) output probabilities
    log_odds: np.ndarray  # (N, K) float64 log(p / (1 - p)) from the logits: ranks as p does, without ties at p = 1
    score_source: str  # what the maps explain and the galleries rank by (see ``pipeline.class_scores``)
    truth: np.ndarray  # (N,) true output index, -1 where unknown
    pred: np.ndarray  # (N,) predicted output index
    class_map: ClassMap
    metrics: ClassificationMetrics | None  # None without labels that match the model's classes
    balance: ClassBalance
    skipped: list[Skipped]  # every input left out, with its reason
    dataset: ImageDataset
    pre: Preprocess
    handle: ModelHandle  # loads the model only when a section needs it
    clock: Clock
    reference: tuple[Features, list[str]] | None = None  # ``--reference`` features and its class names
    unusable: dict[str, str] = field(default_factory=dict)  # layers no distance can use, and why
    notes: list[str] = field(default_factory=list)  # warnings sections add for the top of the report
    multilabel: MultiLabelRun | None = None  # several labels per image: ``truth`` is -1 and ``pred`` the top label
    _memo: dict[Callable[..., Any], Any] = field(default_factory=dict, repr=False)
    _ahead: dict[Callable[..., Any], _Background] = field(default_factory=dict, repr=False)

    def once(self, compute: Callable[[Shared], T]) -> T:
        """``compute(self)``, computed on the first call and remembered (when it was
        started :meth:`ahead`, its result is waited for)."""
        if compute not in self._memo:
            running = self._ahead.pop(compute, None)
            if running is not None:
                with self.clock("waiting for background work"):
                    self._memo[compute] = running.result()
            else:
                self._memo[compute] = compute(self)
        return self._memo[compute]

    def ahead(self, compute: Callable[[Shared], Any]) -> None:
        """Start ``compute(self)`` now on a background thread, for :meth:`once` to collect.

        For work that needs only the features and the CPU (t-SNE) while the sections
        before it keep a GPU busy: the result is the same as computed in turn.  The
        thread is a daemon, so an error or an interrupt elsewhere does not wait for it."""
        if compute in self._memo or compute in self._ahead:
            return
        self._ahead[compute] = _Background(lambda: compute(self))


class _Background:
    """One computation on a daemon thread; :meth:`result` waits and re-raises its error."""

    def __init__(self, work: Callable[[], Any]):
        self._outcome: dict[str, Any] = {}

        def run() -> None:
            try:
                self._outcome["value"] = work()
            except BaseException as exc:  # noqa: BLE001 - handed to the thread that collects it
                self._outcome["error"] = exc

        self._thread = threading.Thread(target=run, name="reportgen-background", daemon=True)
        self._thread.start()

    def result(self) -> Any:
        self._thread.join()
        if "error" in self._outcome:
            raise self._outcome["error"]
        return self._outcome["value"]


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


def label_name(vocab: list[str], value: int) -> str | None:
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
        out.append(NeighbourEntry(ref.files[j], ref.key(int(j)), float(d), label_name(vocab, lab), match))
    return out


def overlay_key(kind: str, index: int, file: str) -> str:
    """Key of a heat-map overlay: ``cam:<class>:<file>`` or ``ch:<channel>:<file>``."""
    return f"{kind}:{index}:{file}"


def load_pixels(dataset: ImageDataset, files: list[str], pre: Preprocess) -> dict[str, np.ndarray]:
    """Model inputs of a few images, decoded again (the extraction pass kept none)."""
    out = {}
    for f in files:
        try:
            out[f] = load_one(dataset.root / f, pre, dataset.max_bytes)[0]
        except DecodeError:
            continue  # changed on disk since extraction; its tile shows no overlay
    return out


def small_map(cam: np.ndarray, side: int = 128) -> np.ndarray:
    """Maps are kept at most ``side`` px for the overlays (thumbnails are 96 px)."""
    from reportgen.analyses.cam import resize_bilinear

    h, w = cam.shape
    if max(h, w) <= side:
        return cam.astype(np.float32)
    scale = side / max(h, w)
    return resize_bilinear(cam[None], (max(1, round(h * scale)), max(1, round(w * scale))))[0]
