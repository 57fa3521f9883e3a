"""Work started ahead on a background thread (``Shared.ahead``): the t-SNE of a GPU run
overlaps the sections that keep the GPU busy, and must give what it gives in turn."""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Any

import pytest

from reportgen.clock import Clock
from reportgen.sections.base import Shared


@dataclass
class Bench:
    """What ``Shared.once``/``ahead`` use of a Shared: its clock and memo tables."""

    clock: Clock = field(default_factory=lambda: Clock(show=True))
    _memo: dict = field(default_factory=dict)
    _ahead: dict = field(default_factory=dict)
    once = Shared.once
    ahead = Shared.ahead


def test_ahead_gives_the_result_once_would_and_runs_it_once() -> None:
    calls: list[str] = []
    release = threading.Event()

    def compute(shared: Any) -> list[int]:
        calls.append(threading.current_thread().name)
        release.wait(10)
        # A progress bar asked for off the main thread is never drawn.
        assert shared.clock.bar("t-SNE", 3, "layer").disable
        return [1, 2, 3]

    bench = Bench()
    bench.ahead(compute)
    bench.ahead(compute)  # already running: not started twice
    release.set()
    assert bench.once(compute) == [1, 2, 3]
    assert bench.once(compute) == [1, 2, 3]
    assert calls == ["reportgen-background"]
    assert "waiting for background work" in bench.clock.seconds
    assert not Bench().clock.bar("x", 1, "y").disable  # the main thread's bars are shown


def test_an_error_ahead_is_raised_where_the_result_is_collected() -> None:
    def broken(shared: Any) -> None:
        raise ValueError("no layer to embed")

    bench = Bench()
    bench.ahead(broken)
    with pytest.raises(ValueError, match="no layer to embed"):
        bench.once(broken)
