"""Progress bars on stderr (tqdm), switched off by ``--quiet``."""

from __future__ import annotations

import sys
from typing import Any

from tqdm import tqdm

from reportgen.errors import printable


def progress(*, total: int | None, desc: str, unit: str = "it", enabled: bool = True) -> tqdm:
    """A tqdm bar on stderr; a disabled one still accepts ``update``/``close``."""
    return tqdm(
        total=total,
        desc=desc,
        unit=unit,
        file=sys.stderr,
        disable=not enabled,
        leave=False,
        dynamic_ncols=True,
        mininterval=0.5,
    )


def note(message: str, enabled: bool = True, **_: Any) -> None:
    """A one-line status message on stderr."""
    if enabled:
        tqdm.write(f"reportgen: {printable(message)}", file=sys.stderr)
