"""Shared fixtures: the shipped sample, image builders, tiny models, CLI runs."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = ROOT / "sample_data"
ARTIFACTS = ROOT / "test-artifacts"

sys.path.insert(0, str(Path(__file__).resolve().parent))

# Every test converts its torch models afresh (and writes nothing under the home folder):
# the converted-program cache is tested on its own, in test_program_cache.py.
os.environ["REPORTGEN_PROGRAM_CACHE"] = "off"


# Options that leave out every section which runs the model again (galleries, map checks,
# corruptions, channel view, shortcut search): for tests about something else.
NO_RERUNS = ["--gallery-size", "0", "--faithfulness-images", "0", "--robustness-images", "0", "--channels", "0",
             "--shortcut-images", "0"]  # fmt: skip


def make_image(
    path: Path,
    size: tuple[int, int] = (40, 30),
    color: tuple[int, ...] = (200, 30, 30),
    mode: str = "RGB",
    fmt: str | None = None,
    **save: Any,
) -> Path:
    """Write a solid image (``size`` is width, height) and return its path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.new(mode, size, color)
    img.save(path, format=fmt, **save)
    return path


def jpeg_bytes(size: tuple[int, int] = (40, 30), color: tuple[int, int, int] = (10, 120, 240)) -> bytes:
    buf = io.BytesIO()
    rng = np.random.default_rng(0)
    arr = np.clip(np.array(color)[None, None, :] + rng.normal(0, 20, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
    Image.fromarray(arr).save(buf, "JPEG", quality=90)
    return buf.getvalue()


@dataclass
class CliResult:
    code: int
    out: str
    err: str


def run_cli(
    *args: str | Path, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: int = 600
) -> CliResult:
    """Run ``python -m reportgen`` in a subprocess, as a user would."""
    import os

    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "reportgen", *[str(a) for a in args]],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=full_env,
        timeout=timeout,
    )
    return CliResult(proc.returncode, proc.stdout, proc.stderr)


def assert_no_traceback(result: CliResult) -> None:
    assert "Traceback" not in result.err, result.err
    assert "Traceback" not in result.out, result.out


@pytest.fixture(scope="session")
def sample() -> Path:
    return SAMPLE


@pytest.fixture(scope="session")
def manifest() -> dict[str, Any]:
    return json.loads((SAMPLE / "manifest.json").read_text())


@pytest.fixture(scope="session")
def artifacts() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS


@pytest.fixture(scope="session")
def sample_audits(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The sample audited once per model format, shared by the tests that read reports."""
    out: dict[str, Path] = {}
    base = tmp_path_factory.mktemp("sample_audits")
    for fmt, model in (("onnx", "model.onnx"), ("torchscript", "model.ts")):
        html = base / fmt / "report.html"
        result = run_cli("audit", SAMPLE / model, SAMPLE / "images", "-o", html, "--quiet", "--device", "cpu")
        assert result.code == 0, result.err
        out[fmt] = html
    return out


def page_text(html: Path) -> str:
    """The report's HTML without the line-break hints (``<wbr>``) the page puts in names,
    so that a name can be looked for as it is."""
    return html.read_text().replace("<wbr>", "")


def load_json(html: Path) -> dict[str, Any]:
    return json.loads(html.with_suffix(".json").read_text())


@pytest.fixture()
def copy_sample(tmp_path: Path) -> Path:
    """A writable copy of the sample images."""
    dst = tmp_path / "images"
    shutil.copytree(SAMPLE / "images", dst)
    return dst


def read_cache(path: Path):
    """The features cache at ``path`` (a directory), read as reportgen reads it."""
    from reportgen.extract import CachedRun, load_cache

    cached = load_cache(path, None)
    assert isinstance(cached, CachedRun), cached
    return cached.features


def default_interrupts() -> None:
    """``preexec_fn`` for a run that Ctrl-C must reach.  A shell's background job starts
    with SIGINT ignored, and the CLI rightly keeps ignoring it there (a Ctrl-C at the
    terminal is not meant for it); these runs are about being interruptible, wherever
    the test runner itself was started."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.fixture
def python_interrupts() -> Iterator[None]:
    """Python's own SIGINT handler in this process for the test (see default_interrupts)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
