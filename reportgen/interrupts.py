"""Ctrl-C that no library can lose.

Python turns SIGINT into a ``KeyboardInterrupt`` wherever the main thread happens to be.
When that is inside code that catches ``BaseException`` and carries on, or inside a C
extension that clears the pending error, the interrupt is gone and the run would go on
to write its report.  While :func:`sticky_interrupts` is active, the interrupt is also
remembered, and :func:`check` (at every phase boundary and before any output is written)
raises it again.

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
