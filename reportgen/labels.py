"""Which model output is which class, and the ground truth of each image.

Resolved in one place, in this order:

1. ``--labels FILE``: one class name per line, in output order;
2. class names embedded in the model (see ``models.base.EmbeddedMetadata``);
3. the sorted class-folder names (torchvision's ``ImageFolder`` convention), when their
   count equals the number of outputs.

Otherwise outputs are named by index and no ground truth is claimed: a count mismatch
is reported, never guessed.  With 1 or 2, a folder is matched to the output of the
same name; folders with no such output keep their images out of the metrics.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from reportgen.errors import UserError


@dataclass
class ClassMap:
    """The model's class names and each image's true output index."""

    classes: list[str]  # one name per model output, in output order
    source: str  # "--labels", "model metadata", "folder names", "output index"
    folder_to_output: list[int]  # per folder class, its output index or -1
    warnings: list[str] = field(default_factory=list)

    def truth(self, folder_labels: np.ndarray) -> np.ndarray:
        """Output index per image; -1 for unlabeled images or unmatched folders."""
        if not self.folder_to_output:
            return np.full(len(folder_labels), -1, np.int64)
        lookup = np.array([*self.folder_to_output, -1], np.int64)
        return lookup[np.where(folder_labels >= 0, folder_labels, len(self.folder_to_output))]


def read_labels_file(path: str | Path) -> list[str]:
    """Class names, one per non-empty line (UTF-8)."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"labels file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read labels file {path}: {exc}") from None
    names = [line.strip() for line in text.splitlines() if line.strip()]
    if not names:
        raise UserError(f"labels file {path} holds no class names")
    if len(set(names)) != len(names):
        dup = next(n for n in names if names.count(n) > 1)
        raise UserError(f"labels file {path} names class {dup!r} twice")
    return names


def resolve_classes(
    folder_classes: list[str],
    num_outputs: int,
    *,
    labels: list[str] | None = None,
    embedded: list[str] | None = None,
    embedded_from: str = "model metadata",
    indices: bool = False,
    noun: str = "class folder",
) -> ClassMap:
    """Decide the names of the model's outputs and map class folders onto them
    (``embedded_from`` says where the model's own names came from).  With ``indices``
    the "folders" are a manifest's labels given as output indices: each maps to its
    output, and an index the model does not have matches nothing."""
    if indices:
        return _by_index(folder_classes, num_outputs, labels, embedded, embedded_from)
    if labels is not None:
        if len(labels) != num_outputs:
            raise UserError(f"--labels names {len(labels)} classes but the model has {num_outputs} outputs")
        return _by_name(labels, "--labels", folder_classes, noun)
    notes = []
    if embedded is not None and len(set(embedded)) != len(embedded):
        twice = next(name for i, name in enumerate(embedded) if name in embedded[:i])
        # One name for two outputs would make images of both count as one class.
        notes.append(f"the {embedded_from} names the class {twice!r} more than once, so its class names are not used")
        embedded = None
    if embedded is not None and len(embedded) == num_outputs:
        return _by_name(embedded, embedded_from, folder_classes, noun)
    fallback = _unnamed(folder_classes, num_outputs, noun)
    fallback.warnings[:0] = notes
    return fallback


def _unnamed(folder_classes: list[str], num_outputs: int, noun: str = "class folder") -> ClassMap:
    """Output names without a labels file or usable metadata: the folders', or indices."""
    if not folder_classes:
        return ClassMap([str(i) for i in range(num_outputs)], "output index", [])
    if len(folder_classes) == num_outputs:
        return ClassMap(list(folder_classes), "folder names", list(range(num_outputs)))
    message = (
        f"the images have {len(folder_classes)} {noun}s but the model has {num_outputs} outputs, "
        f"so outputs cannot be matched to {noun}s; pass --labels FILE with one class name per output. "
        "Accuracy and per-class metrics are left out."
    )
    return ClassMap([str(i) for i in range(num_outputs)], "output index", [-1] * len(folder_classes), [message])


def _by_name(names: list[str], source: str, folder_classes: list[str], noun: str = "class folder") -> ClassMap:
    index = {name: i for i, name in enumerate(names)}
    mapping = [index.get(folder, -1) for folder in folder_classes]
    warnings = []
    missing = [f for f, m in zip(folder_classes, mapping, strict=True) if m < 0]
    if missing:
        shown = ", ".join(repr(m) for m in missing[:5]) + (" ..." if len(missing) > 5 else "")
        warnings.append(
            f"{len(missing)} {noun}(s) match no model output ({shown}); their images are left out of the metrics"
        )
    return ClassMap(list(names), source, mapping, warnings)


def _by_index(
    values: list[str], num_outputs: int, labels: list[str] | None, embedded: list[str] | None, embedded_from: str
) -> ClassMap:
    """Labels that are output indices: names from ``--labels`` or the model, else indices."""
    if labels is not None and len(labels) != num_outputs:
        raise UserError(f"--labels names {len(labels)} classes but the model has {num_outputs} outputs")
    if labels is not None:
        names, source = list(labels), "--labels"
    elif embedded is not None and len(embedded) == num_outputs and len(set(embedded)) == num_outputs:
        names, source = list(embedded), embedded_from
    else:
        names, source = [str(i) for i in range(num_outputs)], "output index"
    mapping = [int(v) if int(v) < num_outputs else -1 for v in values]
    warnings = []
    beyond = [v for v, m in zip(values, mapping, strict=True) if m < 0]
    if beyond:
        warnings.append(
            f"{len(beyond)} label index(es) are not outputs of the model, which has {num_outputs} "
            f"({', '.join(beyond[:5])}{' ...' if len(beyond) > 5 else ''}); their images are left out of the metrics"
        )
    return ClassMap(names, source, mapping, warnings)


MAX_THRESHOLDS_BYTES = 64 << 20  # a thresholds file of label,threshold lines; larger is no such file


def read_thresholds(path: Path, classes: list[str], default: float) -> tuple[np.ndarray, list[str]]:
    """Per-label thresholds of a multi-label model (``--thresholds``): a JSON object
    ``{label: threshold}`` or a CSV/TSV of ``label,threshold`` rows (a header row is
    allowed); labels it leaves out keep ``default``.  Names that are not model classes
    are reported, never matched by guess."""
    import csv
    import json

    from reportgen.errors import printable

    try:
        if path.stat().st_size > MAX_THRESHOLDS_BYTES:
            raise UserError(f"--thresholds {path}: larger than {MAX_THRESHOLDS_BYTES >> 20} MB; not a thresholds file")
        text = path.read_text(encoding="utf-8-sig")
    except FileNotFoundError:
        raise UserError(f"--thresholds file not found: {path}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read --thresholds {path}: {exc}") from None
    pairs: list[tuple[str, object]] = []
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except ValueError as exc:
            raise UserError(f"--thresholds {path} is not valid JSON: {exc}") from None
        if not isinstance(data, dict):
            raise UserError(f"--thresholds {path} must hold a JSON object of label: threshold")
        pairs = [(str(k), v) for k, v in data.items()]
    else:
        delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
        rows = [r for r in csv.reader(text.splitlines(), delimiter=delimiter) if r and any(c.strip() for c in r)]
        for number, row in enumerate(rows):
            if len(row) != 2:
                raise UserError(f"--thresholds {path}, line {number + 1}: expected label{delimiter}threshold")
            pairs.append((row[0].strip(), row[1].strip()))
        if pairs and not _is_number(pairs[0][1]):
            pairs = pairs[1:]  # a header row
    out = np.full(len(classes), default, np.float64)
    index = {name: i for i, name in enumerate(classes)}
    unknown = []
    for name, value in pairs:
        if isinstance(value, bool) or not _is_number(value):
            raise UserError(f"--thresholds {path}: the threshold of {printable(name)!r} is not a number")
        t = float(value)  # type: ignore[arg-type]
        if not 0.0 < t < 1.0:
            raise UserError(
                f"--thresholds {path}: the threshold of {printable(name)!r} must be between 0 and 1, got {t}"
            )
        if name in index:
            out[index[name]] = t
        else:
            unknown.append(name)
    warnings = []
    if unknown:
        shown = ", ".join(repr(printable(u)) for u in unknown[:5]) + (" ..." if len(unknown) > 5 else "")
        warnings.append(
            f"--thresholds names {len(unknown)} label(s) the model does not have ({shown}); they are not used"
        )
    return out, warnings


def _is_number(value: object) -> bool:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return bool(np.isfinite(value))
    try:
        return bool(np.isfinite(float(str(value))))
    except ValueError:
        return False


def label_matrix(
    label_sets: dict[str, tuple[int, ...]], files: list[str], folder_to_output: list[int], k: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """The (N, K) 0/1 matrix of true labels of a multi-label dataset, which rows are
    known, and how many given labels match no model output (left out)."""
    truth = np.zeros((len(files), k), np.int8)
    known = np.zeros(len(files), bool)
    unmatched = 0
    if not any(o >= 0 for o in folder_to_output):
        return truth, known, 0  # no label names a model output: nothing is known (said by resolve_classes)
    for row, f in enumerate(files):
        labels = label_sets.get(f)
        if labels is None:
            continue
        known[row] = True
        for v in labels:
            o = folder_to_output[v] if v < len(folder_to_output) else -1
            if o >= 0:
                truth[row, o] = 1
            else:
                unmatched += 1
    return truth, known, unmatched
