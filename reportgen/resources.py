"""Where the packaged files live: templates and the sample data.

In an installed wheel they sit inside the package (``reportgen/templates``,
``reportgen/sample_data``); in a source checkout (including an editable install) they
are the top-level ``templates/`` and ``sample_data/`` folders.
"""

from __future__ import annotations

from importlib import resources
from pathlib import Path

_CHECKOUT = Path(__file__).resolve().parent.parent


def _find(name: str, marker: str) -> Path:
    packaged = Path(str(resources.files("reportgen") / name))
    for candidate in (packaged, _CHECKOUT / name):
        if (candidate / marker).is_file():
            return candidate
    raise FileNotFoundError(f"reportgen's {name} folder is missing (looked in {packaged} and {_CHECKOUT / name})")


def templates_dir() -> Path:
    return _find("templates", "report.html.j2")


def sample_dir() -> Path:
    return _find("sample_data", "manifest.json")
