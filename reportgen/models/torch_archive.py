"""Reading ``torch.export`` archives (``.pt2``) without running code from them.

``torch.export.load`` unpickles parts of the archive with ``weights_only=False``: a
weight or constant marked ``use_pickle``, the sample inputs when the weights-only
unpickler refuses them, opaque constants through ``pickle.loads``, TorchBind objects
through ``torch._C._pickle_load_obj``.  Any of these runs whatever the file's author
put in a ``__reduce__``.  Without ``--trust-pickle`` the archive is loaded with every
such entry read by torch's weights-only unpickler (plain tensors, as honest archives
hold, still load) and with plain pickle refused outright; a file that needs more is
refused in one line.

Two independent guards, because torch's loader changes between releases:

* while the archive loads, ``torch.load`` is called with ``weights_only=True`` whatever
  the caller asked for;
* a Python audit hook (``sys.addaudithook``) sees every class a pickle looks up
  (``pickle.find_class``, raised by the standard unpickler however it is reached) and
  stops the load at the first one.  The weights-only unpickler is torch's own pure-Python
  reader and raises no such event, so it is unaffected.
"""

from __future__ import annotations

import io
import json
import logging
import pickle
import sys
import threading
import zipfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch

from reportgen.errors import UserError, one_line


class PickleRefused(Exception):
    """A pickle tried to look up a Python object while pickles were refused.

    Not a ``RuntimeError``: ``torch.export.load`` retries an older archive format on
    those, and the refusal must reach the caller."""


class _Guard:
    """Which thread refuses pickles right now, and what was refused."""

    def __init__(self) -> None:
        self.thread: int | None = None
        self.refused: list[str] = []
        self.hooked = False
        self.lock = threading.Lock()


_GUARD = _Guard()


def _audit(event: str, args: tuple[Any, ...]) -> None:
    if event != "pickle.find_class" or _GUARD.thread != threading.get_ident():
        return
    what = ".".join(str(a) for a in args[:2])
    _GUARD.refused.append(what)
    raise PickleRefused(f"the archive's pickle asks for {what}")


@contextmanager
def _no_code_from_pickles() -> Iterator[list[str]]:
    """Within the block (in this thread), pickles cannot build arbitrary objects.

    Yields the list of what was refused (filled as the block runs)."""
    with _GUARD.lock:
        if not _GUARD.hooked:
            sys.addaudithook(_audit)  # cannot be removed: it is inert outside this block
            _GUARD.hooked = True
        saved: dict[tuple[Any, str], Callable[..., Any]] = {
            (torch, "load"): torch.load,
            (torch.serialization, "load"): torch.serialization.load,
            (torch._C, "_pickle_load_obj"): torch._C._pickle_load_obj,
        }
        original_load = torch.serialization.load
        refused: list[str] = []

        def weights_only_load(f: Any, *args: Any, **kwargs: Any) -> Any:
            kwargs["weights_only"] = True
            kwargs.pop("pickle_module", None)
            try:
                return original_load(f, *args, **kwargs)
            except pickle.UnpicklingError as exc:
                refused.append("a pickled entry that is more than tensors")
                raise PickleRefused(one_line(exc)) from None

        def no_torchbind(*args: Any, **kwargs: Any) -> Any:
            refused.append("a TorchBind object")
            raise PickleRefused("TorchBind objects are unpickled only with --trust-pickle")

        torch.load = weights_only_load
        torch.serialization.load = weights_only_load
        torch._C._pickle_load_obj = no_torchbind
        _GUARD.refused = refused
        _GUARD.thread = threading.get_ident()
        try:
            yield refused
        finally:
            _GUARD.thread = None
            for (owner, name), value in saved.items():
                setattr(owner, name, value)


# Output containers torch deserialises by itself; any other type in an archive's output
# spec (transformers' ``ImageClassifierOutput``) needs its library imported to load.
_TORCH_CONTAINERS = ("builtins.", "collections.", "torch.")
_MAX_SPEC_JSON = 64 << 20  # a program's JSON description; larger is not read here


def _plain_output_containers(path: Path) -> bytes | None:
    """The archive with every foreign dict-like output container named a plain ``dict``
    (its keys kept), so that a program exported from a ``transformers`` model loads
    without ``transformers``: the outputs are the same tensors, found by their keys (the
    ``logits`` entry is what reportgen reads).  None when nothing needs renaming."""
    try:
        with zipfile.ZipFile(path) as archive:
            infos = archive.infolist()
            programs = [
                i
                for i in infos
                if "/models/" in i.filename and i.filename.endswith(".json") and i.file_size < _MAX_SPEC_JSON
            ]
            rewritten: dict[str, bytes] = {}
            for info in programs:
                text = archive.read(info).decode("utf-8")
                if not any(marker in text for marker in ('"out_spec"', '"in_spec"')):
                    continue
                data = json.loads(text)
                if _rename_foreign_specs(data):
                    rewritten[info.filename] = json.dumps(data).encode("utf-8")
            # The copy is made in memory: only of an archive that holds what it claims to
            # (torch stores its entries uncompressed), never of one that would inflate.
            if not rewritten or sum(i.file_size for i in infos) > 2 * path.stat().st_size + _MAX_SPEC_JSON:
                return None
            out = io.BytesIO()
            with zipfile.ZipFile(out, "w") as copy:
                for info in infos:
                    copy.writestr(info, rewritten.get(info.filename) or archive.read(info))
            return out.getvalue()
    except (OSError, ValueError, zipfile.BadZipFile, UnicodeDecodeError, RecursionError):
        return None  # torch's loader will say what is wrong with the file


def _rename_foreign_specs(value: Any) -> bool:
    """Rename foreign dict-like containers in every serialised tree spec under ``value``."""
    changed = False
    if isinstance(value, dict):
        for key, item in value.items():
            if key in ("out_spec", "in_spec") and isinstance(item, str):
                spec = json.loads(item)
                if isinstance(spec, list) and len(spec) == 2 and _rename_node(spec[1]):
                    value[key] = json.dumps(spec)
                    changed = True
            else:
                changed = _rename_foreign_specs(item) or changed
    elif isinstance(value, list):
        for item in value:
            changed = _rename_foreign_specs(item) or changed
    return changed


def _rename_node(node: Any) -> bool:
    if not isinstance(node, dict):
        return False
    changed = False
    kind = node.get("type")
    if isinstance(kind, str) and not kind.startswith(_TORCH_CONTAINERS):
        try:
            keys = json.loads(node.get("context") or "null")
        except ValueError:
            keys = None
        if isinstance(keys, list) and all(isinstance(k, str) for k in keys):
            node["type"] = "builtins.dict"
            changed = True
    for child in node.get("children_spec") or []:
        changed = _rename_node(child) or changed
    return changed


@contextmanager
def _torch_logs_muted() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in ("torch.export", "torch._export")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels, strict=True):
            logger.setLevel(level)


def load_exported_program(path: Path, *, trust_pickle: bool) -> torch.export.ExportedProgram:
    """``torch.export.load`` of ``path``; without ``trust_pickle`` no pickle in the archive
    may build anything but tensors (see the module docstring).

    Raises
    ------
    UserError
        When the archive needs a pickle that could run code (naming ``--trust-pickle``),
        or cannot be read as a program.
    """
    failure: BaseException | None = None
    refused: list[str] = []
    # A file object, not the name: torch's loader complains (on stderr, through its
    # logger) about names that do not end in .pt2.  Its other log lines -- a failed load
    # retried in an older format -- are the one-line error's business, so they are muted.
    plain = _plain_output_containers(path)
    with io.BytesIO(plain) if plain is not None else open(path, "rb") as fh, _torch_logs_muted():
        if trust_pickle:
            try:
                return torch.export.load(fh)
            except Exception as exc:  # noqa: BLE001
                raise UserError(f"cannot load torch.export program {path.name}: {one_line(exc)}") from None
        with _no_code_from_pickles() as refused:
            try:
                program = torch.export.load(fh)
            except Exception as exc:  # noqa: BLE001 - judged below, after the guard is lifted
                failure = exc
    if refused:
        raise UserError(
            f"{path.name} holds pickled Python objects ({refused[0]}); loading them could run arbitrary code, "
            "so reportgen refuses. Re-run with --trust-pickle only if you trust where the file came from"
        )
    if failure is not None:
        raise UserError(f"cannot load torch.export program {path.name}: {one_line(failure)}") from None
    return program
