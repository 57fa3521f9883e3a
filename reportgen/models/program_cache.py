"""Converted graphs kept between runs, so a TorchScript or ``torch.save`` file is turned
into a functional ``ExportedProgram`` once, not at every audit.

The conversion (``torchscript.convert`` or ``torch.export``, then ``run_decompositions``)
takes seconds -- on a GPU machine it was the longest phase of a whole report.  Its
result is a pure function of the model file's bytes, the input size and channels, and
the torch, torchvision and reportgen versions, which together name the entry.

Where: ``$REPORTGEN_PROGRAM_CACHE`` (``off`` turns the cache off), else
``$XDG_CACHE_HOME/reportgen/programs``, else ``~/.cache/reportgen/programs``.  The folder
is reportgen's own: it is made (or, found empty, adopted) with a ``CACHEDIR.TAG`` naming
reportgen, and only a folder holding that tag is written to or pruned, and only entries
named as this module names them (``<64 hex>.pt2``).  At most :data:`KEEP` entries stay, the least recently
used go first.

An entry is read back with :func:`torch_archive.load_exported_program` without
``--trust-pickle``, like any ``.pt2`` a user gives: a file put there by someone else can
run no code.  An entry that cannot be read is converted again; one that cannot be
written (a read-only home) is simply not kept.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
import warnings
from importlib import metadata
from pathlib import Path

import torch

from reportgen import __version__
from reportgen.models.torch_archive import load_exported_program
from reportgen.util import file_sha256

KEEP = 8  # entries kept; a converted ResNet-50 is about 100 MB
ENV = "REPORTGEN_PROGRAM_CACHE"
TAG_NAME = "CACHEDIR.TAG"
TAG = (
    "Signature: 8a477f597d28d172789f06886806bc55\n"
    "# This folder holds graphs converted by reportgen (https://pypi.org/project/reportgen/);\n"
    "# see https://bford.info/cachedir/ -- deleting it only costs a conversion on the next run.\n"
)
ENTRY = re.compile(r"^[0-9a-f]{64}\.pt2$")


def cache_folder() -> Path | None:
    """The program cache's folder, or None when ``$REPORTGEN_PROGRAM_CACHE`` is ``off``."""
    chosen = os.environ.get(ENV, "").strip()
    if chosen.lower() == "off":
        return None
    if chosen:
        return Path(chosen).expanduser()
    base = os.environ.get("XDG_CACHE_HOME", "").strip()
    return (Path(base) if base else Path.home() / ".cache") / "reportgen" / "programs"


def _version(distribution: str) -> str | None:
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None


class ProgramCache:
    """The cache entries of one model file (see the module's docstring)."""

    def __init__(self, folder: Path, model_sha256: str, recipe: dict[str, object]):
        self.folder = folder
        # torchvision builds the module a state_dict is loaded into: its version is part of the graph.
        self.base = {
            "model": model_sha256,
            "torch": torch.__version__,
            "torchvision": _version("torchvision"),
            "reportgen": __version__,
            **recipe,
        }

    @classmethod
    def for_model(cls, path: Path, recipe: dict[str, object]) -> ProgramCache | None:
        folder = cache_folder()
        if folder is None:
            return None
        try:
            return cls(folder, file_sha256(path), recipe)
        except OSError:
            return None

    def entry(self, size: tuple[int, int], channels: int) -> Path:
        key = json.dumps({**self.base, "size": list(size), "channels": channels}, sort_keys=True)
        return self.folder / f"{hashlib.sha256(key.encode()).hexdigest()}.pt2"

    def _ours(self) -> bool:
        try:
            return (self.folder / TAG_NAME).read_text(encoding="utf-8", errors="replace") == TAG
        except OSError:
            return False

    def load(self, size: tuple[int, int], channels: int) -> torch.export.ExportedProgram | None:
        """The converted program for this input, or None (none kept, or unreadable)."""
        path = self.entry(size, channels)
        if not self._ours() or not path.is_file():
            return None
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                program = load_exported_program(path, trust_pickle=False)
        except Exception:  # noqa: BLE001 - any unreadable entry is converted again
            return None
        try:
            os.utime(path)  # most recently used: kept longest
        except OSError:
            pass
        return program

    def store(self, size: tuple[int, int], channels: int, program: torch.export.ExportedProgram) -> None:
        """Keep ``program`` (best effort: a folder that cannot be written keeps nothing)."""
        try:
            if not self.folder.exists():
                self.folder.mkdir(parents=True, exist_ok=True)
            if not any(self.folder.iterdir()):
                # A folder reportgen made just now, or an empty one named for it: adopted.
                (self.folder / TAG_NAME).write_text(TAG, encoding="utf-8")
            if not self._ours():
                return  # a folder reportgen did not make: nothing is written there
            fd, scratch = tempfile.mkstemp(prefix=".incoming-", suffix=".pt2", dir=self.folder)
            os.close(fd)
            try:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    torch.export.save(program, scratch)
                os.replace(scratch, self.entry(size, channels))
            finally:
                if os.path.exists(scratch):
                    os.unlink(scratch)
            self._prune()
        except Exception:  # noqa: BLE001 - a program torch cannot save, a full disk: not kept
            return

    def _prune(self) -> None:
        entries = [p for p in self.folder.iterdir() if ENTRY.match(p.name) and p.is_file() and not p.is_symlink()]
        entries.sort(key=lambda p: p.stat().st_mtime, reverse=True)
        for old in entries[KEEP:]:
            old.unlink(missing_ok=True)
