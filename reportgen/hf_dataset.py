"""A dataset saved by Hugging Face ``datasets`` (``Dataset.save_to_disk`` or
``DatasetDict.save_to_disk``): Arrow files whose image column holds each picture's bytes,
with a ``ClassLabel`` column and any others.

The pictures are written once into a folder reportgen owns (``<report>.dataset`` beside
the report, reused while the saved dataset is unchanged), with a JSON Lines manifest of
their labels and the other columns; from there the audit is a manifest audit, with every
rule of one.  Only ``pyarrow`` is needed (the ``parquet`` extra), not ``datasets``.

Everything in the saved dataset is untrusted: split and data-file names must be plain
names inside the folder; a picture larger than ``--max-image-mb`` is not written (listed
under Skipped); a picture stored as a path rather than bytes is read only under the
manifest rules: it lies outside the folder reportgen writes, so only ``--follow-links``
lets it be read.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from reportgen import __version__
from reportgen.data import Skipped, too_large
from reportgen.errors import UserError, printable

MARKER = ".reportgen-dataset.json"  # proof that a folder is one reportgen wrote
_JSON_BYTES = 16 << 20  # a dataset_info.json or state.json larger than this is no saved dataset
_EXTENSIONS = {"JPEG": ".jpg", "PNG": ".png", "WEBP": ".webp", "BMP": ".bmp", "GIF": ".gif", "TIFF": ".tif"}


def is_saved_dataset(folder: Path) -> bool:
    """Whether ``folder`` holds what ``save_to_disk`` writes (one split, or several)."""
    return folder.is_dir() and (
        (folder / "dataset_dict.json").is_file()
        or ((folder / "state.json").is_file() and (folder / "dataset_info.json").is_file())
    )


def is_dataset_folder(path: Path) -> bool:
    """Whether ``path`` is a folder of pictures reportgen wrote from a saved dataset (so a
    run may replace it)."""
    try:
        marker = json.loads((path / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return isinstance(marker, dict) and marker.get("tool") == "reportgen"


def _json(path: Path) -> Any:
    try:
        if path.stat().st_size > _JSON_BYTES:
            raise UserError(f"{printable(str(path))} is too large for a saved dataset's description")
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise UserError(f"cannot read {printable(str(path))}: {printable(str(exc))[:160]}") from None


def _plain(name: object) -> bool:
    return isinstance(name, str) and bool(name) and "/" not in name and "\\" not in name and name not in (".", "..")


@dataclass
class SavedSplit:
    folder: Path  # the split's own folder (state.json, dataset_info.json, data files)
    name: str  # the split's name, or "data" for a lone Dataset
    files: list[Path]  # its Arrow files, in order
    features: dict[str, Any]  # dataset_info.json's "features"


def saved_split(folder: Path, split: str | None) -> SavedSplit:
    """The split of the saved dataset at ``folder`` to audit: ``split``, or the only one."""
    name = "data"
    if (folder / "dataset_dict.json").is_file():
        splits = _json(folder / "dataset_dict.json").get("splits")
        if not isinstance(splits, list) or not all(_plain(s) for s in splits):
            raise UserError(f"{printable(str(folder))}/dataset_dict.json lists no usable splits")
        if split is None and len(splits) != 1:
            raise UserError(f"{printable(str(folder))} holds the splits {', '.join(splits)}: choose one with --split")
        name = split if split is not None else splits[0]
        if name not in splits:
            raise UserError(
                f"--split {printable(name)!r} is not a split of {printable(str(folder))} ({', '.join(splits)})"
            )
        folder = folder / name
    elif split is not None:
        raise UserError(f"{printable(str(folder))} is one saved split; --split chooses among a DatasetDict's splits")
    state, info = _json(folder / "state.json"), _json(folder / "dataset_info.json")
    entries = state.get("_data_files") if isinstance(state, dict) else None
    names = [e.get("filename") for e in entries or [] if isinstance(e, dict)]
    if not names or not all(_plain(n) for n in names):
        raise UserError(f"{printable(str(folder))}/state.json names no data files (or names outside the folder)")
    features = info.get("features") if isinstance(info, dict) else None
    if not isinstance(features, dict):
        raise UserError(f"{printable(str(folder))}/dataset_info.json describes no features")
    return SavedSplit(folder, name, [folder / n for n in names], features)


def _image_column(features: dict[str, Any]) -> str:
    for column, spec in features.items():
        if isinstance(spec, dict) and spec.get("_type") == "Image":
            return column
    raise UserError("the saved dataset has no Image column")


def _class_names(spec: object) -> list[str] | None:
    """The names of a ClassLabel feature, or of a list (``Sequence``/``List``) of them:
    several labels per image."""
    if not isinstance(spec, dict):
        return None
    if spec.get("_type") in ("Sequence", "List", "LargeList"):
        spec = spec.get("feature")
    if isinstance(spec, dict) and spec.get("_type") == "ClassLabel":
        names = spec.get("names")
        return [str(n) for n in names] if isinstance(names, list) else None
    return None


def _label_column(features: dict[str, Any], asked: str | None) -> tuple[str | None, list[str] | None]:
    """The label column (``--label-column``, else the first ClassLabel or list of them)
    and its names."""
    if asked is not None:
        if asked not in features:
            raise UserError(f"the saved dataset has no column {printable(asked)!r} (--label-column)")
        return asked, _class_names(features[asked])
    for column, spec in features.items():
        names = _class_names(spec)
        if names is not None:
            return column, names
    return None, None


def fingerprint(split: SavedSplit, label_column: str | None) -> str:
    """What decides the written folder: the split's description and its data files'
    names, sizes and times, the label column, and the tool's version."""
    h = hashlib.sha256(f"{__version__}\0{split.name}\0{label_column}\n".encode())
    for path in (split.folder / "state.json", split.folder / "dataset_info.json", *split.files):
        st = path.stat()
        h.update(f"{path.name}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def _extension(data: bytes, given: object) -> str:
    """The picture's extension: from its stored file name when that is an image name,
    else from its header."""
    suffix = Path(given).suffix.lower() if isinstance(given, str) else ""
    if suffix in {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff"}:
        return suffix
    try:
        with Image.open(io.BytesIO(data)) as img:
            return _EXTENSIONS.get(img.format or "", ".img")
    except Exception:  # noqa: BLE001 - any header Pillow cannot read: decoding will say why
        return ".img"


def _scalar(value: object) -> bool:
    return value is None or isinstance(value, str | int | float | bool)


def materialise(
    source: Path, split: str | None, into: Path, *, label_column: str | None, max_bytes: int
) -> tuple[Path, list[Skipped], list[str]]:
    """The saved dataset's split as pictures and ``manifest.jsonl`` under ``into`` (reused
    when it is up to date); returns the manifest, the pictures left out, and notes."""
    try:
        import pyarrow as pa
    except ImportError:
        raise UserError(
            f"{printable(str(source))} is a saved Hugging Face dataset: reading it needs pyarrow "
            "(pip install 'reportgen[parquet]')"
        ) from None
    chosen = saved_split(source, split)
    image, (label, names) = _image_column(chosen.features), _label_column(chosen.features, label_column)
    print_key = fingerprint(chosen, label)
    manifest = into / "manifest.jsonl"
    reused = _reusable(into, print_key)
    if reused is not None:
        return manifest, *reused
    if into.exists() and not is_dataset_folder(into):
        raise UserError(f"{printable(str(into))} exists and was not written by reportgen; it is left alone")
    # A new folder beside ``into`` (same file system: finishing is a rename); only it is ever removed.
    into.parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f".{into.name}.", suffix=".tmp", dir=into.parent))
    (scratch / "images").mkdir()
    skipped: list[Skipped] = []
    dropped: set[str] = set()
    row = 0
    try:
        with open(scratch / "manifest.jsonl", "w", encoding="utf-8") as out:
            for path in chosen.files:
                try:
                    with pa.memory_map(str(path)) as stream:
                        reader = pa.ipc.open_stream(stream)
                        for batch in reader:
                            for record in batch.to_pylist():
                                entry = _row(record, row, image, label, names, scratch, max_bytes, skipped, dropped)
                                if entry is not None:
                                    out.write(json.dumps(entry, ensure_ascii=False) + "\n")
                                row += 1
                except (OSError, pa.ArrowException) as exc:
                    raise UserError(f"cannot read {printable(str(path))}: {printable(str(exc))[:160]}") from None
        notes = []
        if dropped:
            notes.append(
                "columns left out of the metadata (no single value per image, or named path or label): "
                + ", ".join(sorted(printable(c) for c in dropped))
            )
        marker = {
            "tool": "reportgen",
            "fingerprint": print_key,
            "source": str(source),
            "split": chosen.name,
            "skipped": [{"file": s.file, "reason": s.reason} for s in skipped],
            "notes": notes,
        }
        (scratch / MARKER).write_text(json.dumps(marker), encoding="utf-8")
        if into.exists():
            shutil.rmtree(into)  # the caller checked it is ours (outputs.check_replaceable)
        os.replace(scratch, into)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    return manifest, skipped, notes


def _reusable(into: Path, print_key: str) -> tuple[list[Skipped], list[str]] | None:
    """What an up-to-date folder written before recorded (the pictures it left out, its
    notes); None when it must be written again (absent, out of date, or its marker not as
    reportgen writes it)."""
    if not is_dataset_folder(into) or not (into / "manifest.jsonl").is_file():
        return None
    marker = json.loads((into / MARKER).read_text(encoding="utf-8"))
    skipped, notes = marker.get("skipped"), marker.get("notes")
    if marker.get("fingerprint") != print_key or not isinstance(skipped, list) or not isinstance(notes, list):
        return None
    if not all(isinstance(e, dict) and isinstance(e.get("file"), str) and isinstance(e.get("reason"), str)
               for e in skipped) or not all(isinstance(n, str) for n in notes):  # fmt: skip
        return None
    return [Skipped(e["file"], e["reason"]) for e in skipped], notes


def _row(
    record: dict[str, Any],
    row: int,
    image: str,
    label: str | None,
    names: list[str] | None,
    scratch: Path,
    max_bytes: int,
    skipped: list[Skipped],
    dropped: set[str],
) -> dict[str, Any] | None:
    """One manifest entry, its picture written; None when the picture is left out."""
    picture = record.get(image)
    data = picture.get("bytes") if isinstance(picture, dict) else None
    stored = picture.get("path") if isinstance(picture, dict) else None
    file = f"images/{row:08d}"
    if isinstance(stored, str) and data is not None:
        # The stored file name, made safe, helps a reader find the picture again.
        stem = "".join(c if c.isalnum() or c in "._-" else "_" for c in Path(stored).stem)[:60].strip("._")
        file += f"-{stem}" if stem else ""
    if data is not None:
        if len(data) > max_bytes:
            skipped.append(Skipped(f"{file} (row {row})", too_large(len(data), max_bytes)))
            return None
        file += _extension(data, stored)
        (scratch / file).write_bytes(data)
    elif isinstance(stored, str) and stored:
        file = stored  # a picture kept as a file: read under the manifest's rules
    else:
        skipped.append(Skipped(f"{file} (row {row})", "the row holds no picture"))
        return None
    entry: dict[str, Any] = {"path": file}
    if label is not None:
        value = record.get(label)
        if isinstance(value, int) and names is not None:
            entry["label"] = names[value] if 0 <= value < len(names) else None
        elif isinstance(value, list) and all(isinstance(v, int) for v in value):
            # Several labels (a list of ClassLabel): a list cell, read as multi-label.
            entry["label"] = [names[v] if names is not None and 0 <= v < len(names) else v for v in value]
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            entry["label"] = value
        else:
            entry["label"] = value if _scalar(value) else None
    for column, value in record.items():
        if column in (image, label):
            continue
        if column in ("path", "label"):
            dropped.add(column)  # the manifest's own columns: the picture and its label
        elif _scalar(value):
            entry[column] = value
        else:
            dropped.add(column)
    return entry
