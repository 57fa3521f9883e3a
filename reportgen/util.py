"""Small helpers shared by the stages: atomic writes, hashing, JSON rounding."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import math
import mmap
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from reportgen.errors import UserError

# Rows of a memory-mapped layer read at once: 64k rows of 1,024 float32 values are 256 MB.
ROW_BLOCK = 65536


def atomic_write(path: Path, write: Callable[[IO[bytes]], Any]) -> None:
    """Write ``path`` through a temporary file in the same folder, then rename it.

    A crash or Ctrl-C leaves either the old file or the new one, never half of one.
    """
    path = Path(path)
    tmp = temporary_beside(path, write)
    try:
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def temporary_beside(path: Path, content: bytes | Callable[[IO[bytes]], Any]) -> str:
    """A hidden temporary file next to ``path`` (same file system: a rename finishes it)
    holding ``content`` (bytes, or a function that writes to the open file), flushed to
    disk and given the mode ``path`` would get.  Nothing is left behind on failure; a
    failure to write (a full disk) is a one-line error that names ``path``."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as fh:
            if isinstance(content, bytes):
                fh.write(content)
            else:
                content(fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, _mode_for(path))
        return tmp
    except BaseException as exc:
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
        if isinstance(exc, OSError):
            raise UserError(f"cannot write {path}: {exc.strerror or exc}; nothing there was replaced") from None
        raise


def _mode_for(path: Path) -> int:
    """The mode an ordinary ``open(path, "w")`` would leave: the existing file's, or
    0666 less the umask (mkstemp's 0600 would hide a shared report; a forced 0644 would
    expose a private one)."""
    try:
        return os.stat(path).st_mode & 0o777
    except OSError:
        mask = os.umask(0o022)  # the only way to read the umask is to set it
        os.umask(mask)
        return 0o666 & ~mask


def atomic_write_bytes(path: Path, data: bytes) -> None:
    atomic_write(path, lambda fh: fh.write(data))


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def round_floats(value: Any, digits: int = 6) -> Any:
    """Round floats to ``digits`` significant digits (recursively) and turn NaN/inf into
    None, so the JSON is valid, stable across platforms, and free of float noise."""
    if isinstance(value, float):
        if not math.isfinite(value):
            return None
        if value == 0.0:
            return 0.0
        return float(f"{value:.{digits}g}")
    if isinstance(value, dict):
        return {k: round_floats(v, digits) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [round_floats(v, digits) for v in value]
    return value


def data_uri(data: bytes, mime: str) -> str:
    """``data:`` URI of the bytes: how every picture is embedded in the reports."""
    return f"data:{mime};base64,{base64.b64encode(data).decode('ascii')}"


def release(array: Any) -> None:
    """Let the operating system take back the pages of a memory-mapped array that this
    process has read (they stay in the page cache; a later read maps them again): the
    resident memory of a run over a large cache then holds the layer in use, not every
    layer read so far.  Anything else is left alone."""
    handle = getattr(array, "_mmap", None)
    if isinstance(handle, mmap.mmap) and hasattr(mmap, "MADV_DONTNEED"):
        with contextlib.suppress(OSError, ValueError):
            handle.madvise(mmap.MADV_DONTNEED)
