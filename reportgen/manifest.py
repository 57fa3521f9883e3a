"""Images listed in a file instead of sorted into class folders: a manifest (CSV, TSV,
JSON Lines, Parquet) with a path column, an optional label column and any other columns
(metadata), or ``--labels-file`` beside a flat folder (the same tables, or ImageNet's
one label per line in sorted file order).  The result is the :class:`ImageDataset` a
folder gives, so every later step is unchanged.

Everything in the file is untrusted: paths that leave the manifest's folder (``..``,
absolute paths, links out) are listed under Skipped unless ``--follow-links`` consents;
one cell may hold at most :data:`MAX_CELL` characters and the file at most
:data:`MAX_MANIFEST_BYTES`; duplicate rows, conflicting labels and missing files are
reported, never guessed.
"""

from __future__ import annotations

import csv
import json
import math
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import Any

from reportgen.data import ImageDataset, ImageRecord, Skipped, _inside, too_large
from reportgen.errors import UserError, printable
from reportgen.util import file_sha256

MANIFEST_SUFFIXES = {".csv": "csv", ".tsv": "tsv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".parquet": "parquet"}
PATH_COLUMNS = ("path", "file", "filename", "file_name", "filepath", "image", "image_path")
LABEL_COLUMNS = ("label", "labels", "class", "target", "category")
MAX_CELL = 64 << 10  # characters in one cell: longer is no path, label or metadata value
MAX_MANIFEST_BYTES = 4 << 30  # a manifest of 4 GiB lists tens of millions of images
SHOWN = 5  # examples named in a message


@dataclass
class Table:
    """A manifest read into columns (values: str, int, float, bool, list or None)."""

    columns: list[str]
    rows: list[list[object]]
    where: str  # how messages name the file


@dataclass
class Listing:
    """What a manifest says: files, their labels and metadata, and what it got wrong."""

    dataset: ImageDataset
    warnings: list[str] = field(default_factory=list)


def is_manifest(path: Path) -> bool:
    """Whether ``path`` names a manifest file (by suffix) rather than an image folder."""
    return path.suffix.lower() in MANIFEST_SUFFIXES and not path.is_dir()


# ------------------------------------------------------------------ reading the table


def _cell(value: object, where: str) -> object:
    """A cell as read, refused when it is too long to be a path, label or value."""
    if isinstance(value, float) and not math.isfinite(value):
        return None  # a missing value (JSON, and the report's JSON, have no NaN)
    if isinstance(value, str) and len(value) > MAX_CELL:
        raise UserError(f"{where}: a cell of {len(value):,} characters (at most {MAX_CELL:,}); the manifest is refused")
    if isinstance(value, list):
        if len(value) > 10_000:
            raise UserError(f"{where}: a list of {len(value):,} values in one cell; the manifest is refused")
        return [_cell(v, where) for v in value]
    if isinstance(value, dict):
        text = json.dumps(value, sort_keys=True)
        return _cell(text, where)
    return value


def _read_delimited(path: Path, delimiter: str) -> Table:
    where = printable(str(path))
    csv.field_size_limit(MAX_CELL)
    rows: list[list[object]] = []
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            reader = csv.reader(fh, delimiter=delimiter)
            header = next(reader, None)
            if header is None:
                raise UserError(f"manifest {where} is empty")
            columns = [h.strip() for h in header]
            for row in reader:
                if not any(cell.strip() for cell in row):
                    continue
                if len(row) != len(columns):
                    raise UserError(
                        f"manifest {where}, line {reader.line_num}: {len(row)} cells where the header has {len(columns)}"
                    )
                rows.append([cell.strip() for cell in row])
    except csv.Error as exc:
        raise UserError(f"manifest {where}: {exc} (a cell may hold at most {MAX_CELL:,} characters)") from None
    except UnicodeDecodeError:
        raise UserError(f"manifest {where} is not UTF-8 text") from None
    return Table(columns, rows, where)


def _read_jsonl(path: Path) -> Table:
    where = printable(str(path))
    columns: dict[str, None] = {}
    records: list[dict[str, object]] = []
    limit = MAX_CELL * 8
    with open(path, "rb") as fh:
        number = 0
        while True:
            line = fh.readline(limit + 1)
            if not line:
                break
            number += 1
            if len(line) > limit and not line.endswith(b"\n"):
                raise UserError(
                    f"manifest {where}, line {number}: longer than {limit:,} bytes; the manifest is refused"
                )
            if not line.strip():
                continue
            try:
                item = json.loads(line)
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise UserError(f"manifest {where}, line {number}: not JSON ({exc})") from None
            if not isinstance(item, dict):
                raise UserError(f"manifest {where}, line {number}: a JSON object per line is expected")
            records.append({str(k): _cell(v, f"manifest {where}, line {number}") for k, v in item.items()})
            columns.update(dict.fromkeys(records[-1]))
    names = list(columns)
    return Table(names, [[r.get(c) for c in names] for r in records], where)


def _read_parquet(path: Path) -> Table:
    where = printable(str(path))
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise UserError(
            f"manifest {where}: Parquet needs pyarrow (pip install pyarrow), or save the manifest as CSV or JSON Lines"
        ) from None
    try:
        table = pq.read_table(path)
    except Exception as exc:  # noqa: BLE001 - any failure of a foreign reader is the file's
        raise UserError(f"manifest {where}: cannot read it as Parquet ({printable(str(exc))[:160]})") from None
    columns = [str(c) for c in table.column_names]
    data = [table.column(c).to_pylist() for c in table.column_names]
    rows = [[_cell(col[i], f"manifest {where}, row {i + 1}") for col in data] for i in range(table.num_rows)]
    return Table(columns, rows, where)


def read_table(path: Path) -> Table:
    """The manifest at ``path`` as a table of columns; one-line errors for what is not one."""
    kind = MANIFEST_SUFFIXES.get(path.suffix.lower())
    try:
        size = path.stat().st_size
    except FileNotFoundError:
        raise UserError(f"manifest not found: {printable(str(path))}") from None
    except OSError as exc:
        raise UserError(f"cannot read manifest {printable(str(path))}: {exc.strerror or exc}") from None
    if size > MAX_MANIFEST_BYTES:
        raise UserError(f"manifest {printable(str(path))}: {too_large(size, MAX_MANIFEST_BYTES)}")
    try:
        if kind == "csv":
            return _read_delimited(path, ",")
        if kind == "tsv":
            return _read_delimited(path, "\t")
        if kind == "jsonl":
            return _read_jsonl(path)
        if kind == "parquet":
            return _read_parquet(path)
    except OSError as exc:
        raise UserError(f"cannot read manifest {printable(str(path))}: {exc.strerror or exc}") from None
    raise UserError(f"{printable(str(path))}: not a manifest ({', '.join(sorted(MANIFEST_SUFFIXES))})")


def _column(table: Table, asked: str | None, defaults: tuple[str, ...], option: str) -> int | None:
    """Index of the column named ``asked`` (exactly, then ignoring case), or of the first
    of ``defaults`` present; None when none is (an error if one was asked for)."""
    lower = {c.lower(): i for i, c in reversed(list(enumerate(table.columns)))}
    if asked is not None:
        if asked in table.columns:
            return table.columns.index(asked)
        if asked.lower() in lower:
            return lower[asked.lower()]
        raise UserError(
            f"manifest {table.where} has no column {printable(asked)!r} ({option}); its columns: "
            + ", ".join(printable(c) for c in table.columns[:20])
        )
    for name in defaults:
        if name in lower:
            return lower[name]
    return None


# ------------------------------------------------------------------ rows to images


def _label(value: object) -> str | int | None:
    """A label cell: a name (str), an output index (int) or nothing."""
    if value is None or isinstance(value, bool):
        return None if value is None else str(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isnan(value):
            return None
        return int(value) if value.is_integer() else str(value)
    if isinstance(value, list):
        raise UserError("a label cell holds a list: several labels per image are read with --multi-label")
    text = str(value).strip()
    if not text:
        return None
    return int(text) if text.isdigit() else text


def _label_set(value: object, separator: str) -> tuple[str | int, ...] | None:
    """A multi-label cell: a list (JSON Lines, Parquet, or a JSON list written in a
    CSV cell), or text split on ``separator``; None when the cell is empty (labels not
    known), ``()`` for an explicit empty list (known: no label)."""
    if isinstance(value, str):
        text = value.strip()
        if text.startswith("[") and text.endswith("]"):
            try:
                value = json.loads(text)
            except ValueError:
                raise UserError(
                    f"a label cell starts like a JSON list but is not one: {printable(text[:80])}"
                ) from None
        elif not text:
            return None
        else:
            value = [part for part in text.split(separator) if part.strip()]
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return None
    items = value if isinstance(value, list) else [value]
    out = []
    for item in items:
        if isinstance(item, list):
            raise UserError("a label cell holds a list inside a list")
        one = _label(item)
        if one is not None:
            out.append(one)
    return tuple(sorted(set(out), key=lambda v: (isinstance(v, str), v)))


class _Resolver:
    """Turns manifest paths into files under one root, refusing what leaves it."""

    def __init__(self, base: Path, follow_links: bool):
        self.base = base
        self.real_base = os.path.realpath(base)
        self.follow = follow_links

    def resolve(self, raw: str) -> tuple[str | None, str | None]:
        """(real path, None), or (None, why it is refused)."""
        if "\x00" in raw:
            return None, "a path with a NUL character"
        windows = PureWindowsPath(raw)
        if windows.drive and not PurePosixPath(raw).is_absolute():
            return None, "a Windows path (drive letter); write paths with / relative to the manifest's folder"
        path = Path(raw) if PurePosixPath(raw).is_absolute() else self.base / raw
        real = os.path.realpath(path)
        if not _inside(self.real_base, real) and not self.follow:
            kind = "an absolute path" if PurePosixPath(raw).is_absolute() else "a path"
            return None, f"{kind} outside the manifest's folder (to {real}); not read without --follow-links"
        return real, None


def _display(raw: str) -> str:
    """How a refused row is named: its path as written, made printable."""
    return printable(raw)[:300] or "(empty path)"


def listing_from_table(
    table: Table,
    base: Path,
    *,
    path_column: str | None = None,
    label_column: str | None = None,
    follow_links: bool = False,
    max_bytes: int,
    source: Path,
    option: str = "the manifest",
    multi_label: bool = False,
    separator: str = "|",
) -> Listing:
    """The images a table lists, relative to ``base`` (the manifest's folder, or the image
    folder of ``--labels-file``), as an :class:`ImageDataset`.

    Several labels per image (``multi_label``, or any label cell holding a list) make a
    multi-label dataset: each cell is a set of labels (see :func:`_label_set`), and the
    rows of one file add up (a long table of one (path, label) row per label)."""
    p = _column(table, path_column, PATH_COLUMNS, "--path-column")
    if p is None:
        raise UserError(
            f"{option} {table.where} has no path column (one of {', '.join(PATH_COLUMNS)}; or name it with "
            f"--path-column); its columns: " + ", ".join(printable(c) for c in table.columns[:20])
        )
    lab = _column(table, label_column, LABEL_COLUMNS, "--label-column")
    meta_idx = [i for i in range(len(table.columns)) if i not in (p, lab)]
    multi = multi_label or (lab is not None and any(isinstance(row[lab], list) for row in table.rows))
    resolver = _Resolver(base, follow_links)
    skipped: list[Skipped] = []
    first: dict[str, int] = {}  # real path -> index into ``entries``
    # (real path, path as written, label -- a set of them when multi-label --, metadata)
    entries: list[tuple[str, str, Any, tuple[object, ...]]] = []
    duplicates = 0
    conflicts: dict[int, set[str]] = {}
    refused_rows: dict[str, int] = {}
    seen: dict[
        str, tuple[str | None, str | None]
    ] = {}  # path as written -> resolved (a path repeated is resolved once)
    pathless = 0
    for number, row in enumerate(table.rows):
        raw = row[p]
        if not isinstance(raw, str) or not raw.strip():
            pathless += 1
            continue
        raw = raw.strip()
        if raw in refused_rows:  # a refused path again: counted, not resolved again
            refused_rows[raw] += 1
            continue
        real, why = seen[raw] if raw in seen else resolver.resolve(raw)
        seen[raw] = (real, why)
        try:
            cell = row[lab] if lab is not None else None
            label = _label_set(cell, separator) if multi else _label(cell)
        except UserError as exc:
            raise UserError(f"{option} {table.where}, row {number + 1}: {exc}") from None
        if real is None:
            skipped.append(Skipped(_display(raw), why or "refused"))
            refused_rows[raw] = 1
            continue
        if real in first:
            duplicates += 1
            j = first[real]
            if multi:
                if label is not None:
                    merged = set(entries[j][2] or ()) | set(label)
                    labels_of = tuple(sorted(merged, key=lambda v: (isinstance(v, str), v)))
                    entries[j] = (entries[j][0], entries[j][1], labels_of, entries[j][3])
            elif entries[j][2] != label:
                conflicts.setdefault(j, {str(entries[j][2])}).add(str(label))
            continue
        first[real] = len(entries)
        entries.append((real, raw, label, tuple(row[i] for i in meta_idx)))
    if not entries and not skipped:
        raise UserError(f"{option} {table.where} lists no image")
    # One root for every file: the base folder, or (links followed) the folder that holds them all.
    roots = [os.path.realpath(base), *(os.path.dirname(e[0]) for e in entries)]
    root = Path(os.path.commonpath(roots)) if follow_links else Path(os.path.realpath(base))
    label_values = [v for e in entries if e[2] is not None for v in (e[2] if multi else (e[2],))]
    indices = bool(label_values) and all(isinstance(v, int) for v in label_values)
    names = sorted({v for v in label_values}, key=lambda v: (isinstance(v, str), v)) if label_values else []
    classes = [str(v) for v in names]
    index_of = {v: i for i, v in enumerate(names)}
    records: list[ImageRecord] = []
    label_sets: dict[str, tuple[int, ...]] = {}
    metadata: dict[str, tuple[object, ...]] = {}
    warnings: list[str] = []
    conflicted = set(conflicts)
    for j, (real, _, label, values) in enumerate(entries):
        rel = Path(real).relative_to(root).as_posix()
        try:
            st = os.stat(real)
        except FileNotFoundError:
            skipped.append(Skipped(rel, f"listed in {option} but not found"))
            continue
        except OSError as exc:
            skipped.append(Skipped(rel, f"cannot read file: {exc.strerror or exc}"))
            continue
        if not stat.S_ISREG(st.st_mode):
            skipped.append(Skipped(rel, "not a regular file"))
            continue
        if st.st_size > max_bytes:
            skipped.append(Skipped(rel, too_large(st.st_size, max_bytes)))
            continue
        if multi:
            cls = -1
            if label is not None:
                label_sets[rel] = tuple(index_of[v] for v in label)
        else:
            cls = -1 if label is None or j in conflicted else index_of[label]
        records.append(ImageRecord(rel, cls, st.st_size, st.st_mtime_ns))
        metadata[rel] = values
    if duplicates and multi:
        warnings.append(f"{option} lists {duplicates:,} more row(s) for files already listed: their labels are merged")
    elif duplicates:
        warnings.append(
            f"{option} lists {duplicates:,} row(s) for a file it already listed; each file is audited once, "
            "with its first row's metadata"
        )
    if conflicts:
        shown = "; ".join(
            f"{printable(entries[j][1])} ({', '.join(sorted(printable(s) for s in labels))})"
            for j, labels in list(conflicts.items())[:SHOWN]
        )
        warnings.append(
            f"{len(conflicts):,} file(s) are listed with different labels, so they count as unlabelled: {shown}"
        )
    if pathless:
        warnings.append(f"{pathless:,} row(s) of {option} have no path (an empty or non-text cell) and are passed over")
    repeated = sum(n - 1 for n in refused_rows.values())
    if repeated:
        warnings.append(f"{repeated:,} more row(s) name a refused path already listed under Skipped inputs")
    if not records and not skipped:
        raise UserError(f"no usable image in {option} {table.where}")
    # ``labeled`` means one class per image; a multi-label dataset's sets are its own.
    labeled = lab is not None and any(r.folder_class >= 0 for r in records)
    dataset = ImageDataset(
        root,
        labeled,
        classes if lab is not None else [],
        sorted(records, key=lambda r: r.file),
        sorted(skipped, key=lambda s: s.file),
        max_bytes=max_bytes,
        source=source,
        source_sha256=file_sha256(source),
        label_indices=indices,
        metadata_columns=[table.columns[i] for i in meta_idx],
        metadata=metadata,
        multi_label=multi,
        label_sets=label_sets,
    )
    return Listing(dataset, warnings)


def _sorted_images(folder: Path) -> Iterator[str]:
    from reportgen.data import _is_hidden, _is_image_name

    for entry in sorted(os.scandir(folder), key=lambda e: e.name):
        if not _is_hidden(entry.name) and _is_image_name(entry.name) and not entry.is_dir():
            yield entry.name


def labels_file_table(path: Path, folder: Path) -> Table:
    """``--labels-file``: a table (path and label columns), or a ``.txt`` of one label per
    line for the folder's images in sorted order (ImageNet's validation ground truth)."""
    if path.suffix.lower() != ".txt":
        return read_table(path)
    where = printable(str(path))
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise UserError(f"--labels-file {where}: {too_large(path.stat().st_size, MAX_MANIFEST_BYTES)}")
        lines = [line.strip() for line in path.read_text(encoding="utf-8-sig").splitlines()]
    except FileNotFoundError:
        raise UserError(f"--labels-file not found: {where}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read --labels-file {where}: {exc}") from None
    labels = [line for line in lines if line]
    files = list(_sorted_images(folder))
    if len(labels) != len(files):
        raise UserError(
            f"--labels-file {where} holds {len(labels):,} labels for the {len(files):,} images of "
            f"{printable(str(folder))} (one label per line, for the images in sorted file order)"
        )
    for label in labels:
        _cell(label, f"--labels-file {where}")
    return Table(["path", "label"], [[f, label] for f, label in zip(files, labels, strict=True)], where)


HF_METADATA = ("metadata.csv", "metadata.jsonl", "metadata.parquet")  # Hugging Face imagefolder's names


def folder_metadata(folder: Path) -> Path | None:
    """The metadata file of a Hugging Face ``imagefolder`` (``metadata.csv``, ``.jsonl`` or
    ``.parquet`` at the folder's top, with a ``file_name`` column), or None."""
    found = [folder / name for name in HF_METADATA if (folder / name).is_file()]
    if len(found) > 1:
        raise UserError(
            f"{printable(str(folder))} holds {' and '.join(f.name for f in found)}: one metadata file is expected"
        )
    return found[0] if found else None


def metadata_path_column(table: Table, asked: str | None = None) -> int | None:
    """The column of a folder's metadata file that names the images: ``asked``
    (``--path-column``), else ``file_name`` (Hugging Face's) or a manifest's usual names."""
    return _column(table, asked, ("file_name", *PATH_COLUMNS), "--path-column")


def attach_metadata(dataset: ImageDataset, table: Table, path: Path, *, path_column: str | None = None) -> list[str]:
    """The columns of a labelled folder's metadata file (``table``, read from ``path``)
    attached to its images (the class folders keep deciding the labels); warnings for rows
    that name no audited image."""
    p = metadata_path_column(table, path_column)
    if p is None:
        raise UserError(f"{table.where} has no file_name column (Hugging Face imagefolder's metadata)")
    keep = [i for i in range(len(table.columns)) if i != p]
    files = {r.file for r in dataset.records}
    metadata: dict[str, tuple[object, ...]] = {}
    unknown = 0
    for row in table.rows:
        raw = row[p]
        if not isinstance(raw, str) or raw.strip() not in files:
            unknown += 1
            continue
        metadata.setdefault(raw.strip(), tuple(row[i] for i in keep))
    dataset.source, dataset.source_sha256 = path, file_sha256(path)
    dataset.metadata_columns = [table.columns[i] for i in keep]
    dataset.metadata = metadata
    warnings = []
    if unknown:
        warnings.append(f"{unknown:,} row(s) of {path.name} name no audited image; their metadata is not used")
    return warnings
