"""Run bookkeeping: the seconds each phase of an audit took, and its progress bars."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from tqdm import tqdm

from reportgen import interrupts
from reportgen.progress import progress


class Clock:
    """Seconds spent per phase, in the order the phases ran, and the progress bars of
    the phases that loop (shown on stderr unless ``show`` is false)."""

    def __init__(self, show: bool = True) -> None:
        self.seconds: dict[str, float] = {}
        self.show = show

    def bar(self, desc: str, total: int, unit: str) -> tqdm:
        """A progress bar for one phase; close it when the phase ends.  Work on a
        background thread gets none: two bars at once would garble the terminal."""
        shown = self.show and threading.current_thread() is threading.main_thread()
        return progress(total=total, desc=desc, unit=unit, enabled=shown)

    @contextmanager
    def __call__(self, phase: str) -> Iterator[None]:
        """Time one phase; an interrupt that something swallowed stops the run at its
        start or end (see ``reportgen.interrupts``)."""
        interrupts.check()
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[phase] = self.seconds.get(phase, 0.0) + time.perf_counter() - start
        interrupts.check()
