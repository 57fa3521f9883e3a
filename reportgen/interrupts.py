"""Ctrl-C that no library can lose.

Python turns SIGINT into a ``KeyboardInterrupt`` wherever the main thread happens to be.
When that is inside code that catches ``BaseException`` and carries on, or inside a C
extension that clears the pending error, the interrupt is gone and the run would go on
to write its report.  While :func:`sticky_interrupts` is active, the interrupt is also
remembered, and :func:`check` (at every phase boundary and before any output is written)
raises it again.  :func:`deferred` holds an interrupt back while a group of renames
that must happen together (a report and its JSON, a cache taking its name) completes,
and raises it right after.

(A run started with SIGINT ignored -- a shell's background job, as a CI script run with
``&`` is -- keeps ignoring it: Python installs no handler there, and neither does this
module.  That, not a swallowed interrupt, was what once made the interrupt test fail
under such a CI run; the tests now start their runs with the default disposition.)
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from types import FrameType

_seen = threading.Event()


@contextmanager
def sticky_interrupts() -> Iterator[None]:
    """SIGINT raises ``KeyboardInterrupt`` as Python's own handler does, and is remembered.

    Only where Python's default handler is installed, in the main thread: a process
    started with SIGINT ignored (a shell's background job) keeps ignoring it."""
    if threading.current_thread() is not threading.main_thread() or (
        signal.getsignal(signal.SIGINT) is not signal.default_int_handler
    ):
        yield
        return

    def handler(signum: int, frame: FrameType | None) -> None:
        _seen.set()
        raise KeyboardInterrupt

    _seen.clear()
    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, signal.default_int_handler)
        _seen.clear()


def check() -> None:
    """Raise ``KeyboardInterrupt`` if an interrupt arrived, even one something swallowed."""
    if _seen.is_set():
        raise KeyboardInterrupt


@contextmanager
def deferred() -> Iterator[None]:
    """Within the block, Ctrl-C is remembered, not raised; it is raised when the block
    ends (or at the next :func:`check`).  For steps that must not stop half-way.

    Only in the main thread of a process whose SIGINT handler is Python's or
    :func:`sticky_interrupts`'s (elsewhere no ``KeyboardInterrupt`` is raised anyway).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous is signal.SIG_IGN or previous is signal.SIG_DFL or previous is None:
        yield
        return

    arrived = threading.Event()

    def remember(signum: int, frame: FrameType | None) -> None:
        arrived.set()
        if previous is not signal.default_int_handler:
            _seen.set()  # sticky_interrupts' handler is the previous one: remembered as it would

    signal.signal(signal.SIGINT, remember)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if arrived.is_set():
        raise KeyboardInterrupt
    check()
