"""What reportgen writes, and the one rule for replacing: only what it can prove it wrote.

Every path a run will write is checked before the work starts (so a refusal costs
nothing) and again as it is written.  A path that does not exist is free; one that
exists is replaced only when it is a regular file (or, for a features cache, a
directory) whose content shows reportgen made it -- a report's ``generator`` tag, a JSON
sidecar's first keys, a predictions CSV's header, a cache's ``meta.json`` and file
names, a PNG's ``Software`` text.  Anything else (a device, a folder of images, a link,
someone's notes) is refused in one line.

A group of files that belong together (a report, its JSON and its predictions CSV) is
written by :func:`write_together`: every file goes to a temporary beside its target
first, so a full disk fails before anything is replaced, and the renames run as one
step that Ctrl-C cannot split.  :func:`written` tells the command line what the run
has replaced, so its last message is true whenever the run is stopped.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import re
import stat
import struct
import zlib
from collections.abc import Callable, Iterable
from pathlib import Path

from reportgen import interrupts
from reportgen.errors import UserError
from reportgen.util import atomic_write_bytes, temporary_beside

HTML_GENERATOR = b'<meta name="generator" content="reportgen '
_JSON_HEAD = re.compile(rb'^\{\s*"schema_version":\s*\d+,\s*"tool_version":')
PREDICTION_COLUMNS = ("file", "label", "pred", "score", "sha256")  # the predictions CSV's header
PNG_SOFTWARE = "reportgen"  # the tEXt "Software" entry of every PNG reportgen writes
_HEAD_BYTES = 8192

_written: list[Path] = []


def _head(path: Path, size: int = _HEAD_BYTES) -> bytes:
    try:
        with open(path, "rb") as fh:
            return fh.read(size)
    except OSError:
        return b""


def is_report_html(path: Path) -> bool:
    """An HTML page reportgen rendered (audit or compare): its ``generator`` tag is in the head."""
    return HTML_GENERATOR in _head(path)


def is_report_json(path: Path) -> bool:
    """A JSON sidecar reportgen wrote: it opens with ``schema_version`` then ``tool_version``."""
    return _JSON_HEAD.match(_head(path, 256)) is not None


def is_predictions_csv(path: Path) -> bool:
    """A gzipped predictions CSV reportgen wrote: its first line is the known header."""
    try:
        with gzip.open(path, "rb") as fh:
            first = fh.readline(256)
    except (OSError, EOFError):
        return False
    return first.rstrip(b"\r\n") == ",".join(PREDICTION_COLUMNS).encode()


def is_reportgen_png(path: Path) -> bool:
    """A PNG reportgen wrote: its ``Software`` text says so."""
    head = _head(path, 4096)
    if not head.startswith(b"\x89PNG\r\n\x1a\n"):
        return False
    return b"tEXtSoftware\x00" + PNG_SOFTWARE.encode() in head


def tag_png(data: bytes) -> bytes:
    """PNG bytes with a ``Software: reportgen`` text chunk right after the header, so a
    later run can tell the file is its own (:func:`is_reportgen_png`)."""
    signature, ihdr_end = b"\x89PNG\r\n\x1a\n", 8 + 25
    if not data.startswith(signature) or data[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    body = b"tEXt" + b"Software\x00" + PNG_SOFTWARE.encode()
    chunk = struct.pack(">I", len(body) - 4) + body + struct.pack(">I", zlib.crc32(body))
    return data[:ihdr_end] + chunk + data[ihdr_end:]


def is_map_npy(path: Path) -> bool:
    """A ``.npy`` file of one activation map, as ``reportgen cam`` writes: a 2-D float32
    array (a ``.npy`` header has no room for a tag; its exact shape is the proof)."""
    import numpy as np

    try:
        with open(path, "rb") as fh:
            major, _ = np.lib.format.read_magic(fh)
            read_header = np.lib.format.read_array_header_1_0 if major == 1 else np.lib.format.read_array_header_2_0
            shape, fortran, dtype = read_header(fh)
    except (OSError, ValueError):
        return False
    return dtype == np.float32 and len(shape) == 2 and not fortran


Proof = Callable[[Path], bool]


def check_replaceable(path: Path, proof: Proof, what: str, *, folder: bool = False) -> None:
    """Refuse, in one line, to write ``path`` unless it is free or provably reportgen's.

    ``what`` names the path's role for the message (``-o``, ``the JSON sidecar``,
    ``--features``); ``folder`` allows a directory (a features cache) instead of a file.
    """
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as exc:
        raise UserError(f"{what} {path}: cannot check it: {exc.strerror or exc}") from None
    if stat.S_ISLNK(st.st_mode):
        raise UserError(
            f"{what} {path} is a symbolic link; reportgen replaces only files it wrote, so it refuses. "
            "Choose another path"
        )
    if not (stat.S_ISREG(st.st_mode) or (folder and stat.S_ISDIR(st.st_mode))):
        kind = "a folder" if stat.S_ISDIR(st.st_mode) else "not a regular file"
        raise UserError(f"{what} {path} exists and is {kind}; reportgen writes only regular files. Choose another path")
    if not proof(path):
        raise UserError(
            f"{what} {path} exists and was not written by reportgen; it is left alone. "
            "Remove it yourself or choose another path"
        )


def check_apart(
    outputs: Iterable[tuple[Path, str]], files: Iterable[tuple[Path, str]], folders: Iterable[tuple[Path, str]]
) -> None:
    """Refuse outputs that are one of the run's input ``files``, lie inside a folder it
    reads (``folders``) or hold one of them: a report never replaces what it reports on.
    Every entry is (path, its role for messages)."""
    real_files = [(os.path.realpath(f), name) for f, name in files]
    real_folders = [(os.path.realpath(d), name) for d, name in folders]
    for path, what in outputs:
        target = os.path.realpath(path)
        for real, name in real_files:
            if target == real:
                raise UserError(f"{what} {path} is {name}; reportgen never overwrites its inputs")
        for real, name in real_folders:
            if _within(target, real):
                raise UserError(
                    f"{what} {path} is inside {name} {real}; reportgen writes nothing in a folder it reads. "
                    "Choose another path"
                )
        for real, name in [*real_files, *real_folders]:
            if _within(real, target):
                raise UserError(f"{what} {path} holds {name} {real}; choose another path")


def _within(path: str, folder: str) -> bool:
    """Whether ``path`` is ``folder`` or lies below it (both real paths)."""
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def write_together(files: list[tuple[Path, bytes, Proof, str]], remove: Iterable[tuple[Path, Proof, str]] = ()) -> None:
    """Write several files as one step: every file to a temporary beside it (a failure,
    such as a full disk, leaves every target as it was and no temporary behind), then all
    renames -- and the removals of stale companions in ``remove`` -- with Ctrl-C held
    back until they are done.  Each entry is (path, content, proof, what) as in
    :func:`check_replaceable`, which is applied to every target first."""
    for path, _, proof, what in files:
        check_replaceable(path, proof, what)
    stale = []
    for path, proof, what in remove:
        if os.path.lexists(path):
            check_replaceable(path, proof, what)
            stale.append(path)
    temporaries: list[tuple[str, Path]] = []
    try:
        for path, data, _, _ in files:
            temporaries.append((temporary_beside(path, data), path))
        with interrupts.deferred():
            for tmp, path in temporaries:
                os.replace(tmp, path)
                _written.append(path)
            for path in stale:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
            temporaries = []
    finally:
        for tmp, _ in temporaries:
            with contextlib.suppress(OSError):
                os.unlink(tmp)


def write_file(path: Path, data: bytes, proof: Proof, what: str) -> None:
    """One file, atomically, after :func:`check_replaceable`."""
    check_replaceable(path, proof, what)
    atomic_write_bytes(path, data)
    _written.append(path)


def written() -> list[Path]:
    """The files this process has written or replaced since :func:`forget_written`."""
    return list(_written)


def forget_written() -> None:
    """Start a new record (each command of the CLI starts with none)."""
    _written.clear()
