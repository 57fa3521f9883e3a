"""Rendering: escaping, self-containment, formatting filters, packaged templates."""

from __future__ import annotations

import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from reportgen.render import environment, fmt_bytes, fmt_num, fmt_pct, fmt_seconds
from reportgen.resources import templates_dir

ROOT = Path(__file__).resolve().parent.parent


def test_filters() -> None:
    assert fmt_pct(0.87345) == "87.3%" and fmt_pct(None) == "–"
    assert (
        fmt_num(3) == "3"
        and fmt_num(12345) == "12,345"
        and fmt_num(0.12345) == "0.123"
        and fmt_num(float("nan")) == "–"
    )
    assert fmt_seconds(0.25) == "250 ms" and fmt_seconds(12.34) == "12.3 s" and fmt_seconds(600) == "10.0 min"
    assert fmt_bytes(512) == "512 B" and fmt_bytes(2048) == "2.0 KB"


def test_environment_escapes_and_is_strict() -> None:
    env = environment()
    assert env.from_string("{{ x }}").render(x="<img src=x onerror=alert(1)>") == "&lt;img src=x onerror=alert(1)&gt;"
    with pytest.raises(Exception, match="undefined"):
        env.from_string("{{ missing }}").render()


def test_templates_found_in_checkout() -> None:
    assert (templates_dir() / "report.html.j2").is_file()


@pytest.mark.slow
def test_installed_wheel_ships_and_finds_templates(tmp_path: Path) -> None:
    """Build the wheel, install it alone into a folder, and render from there."""
    wheel_dir = tmp_path / "wheel"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheel_dir),
            str(ROOT),
        ],
        check=True,
    )
    (wheel,) = wheel_dir.glob("reportgen-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for asset in ("report.html.j2", "report.css", "report.js"):
        assert f"reportgen/templates/{asset}" in names
    assert "reportgen/sample_data/model.onnx" in names
    target = tmp_path / "site"
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)], check=True
    )
    probe = (
        "import reportgen.resources as r, reportgen.render as g;"
        "d = r.templates_dir(); print(d);"
        "print(g.environment().get_template('report.html.j2').filename)"
    )
    out = subprocess.run(
        [sys.executable, "-c", probe],
        env={"PYTHONPATH": str(target), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
    ).stdout.splitlines()
    assert out[0] == str(target / "reportgen" / "templates")
    assert out[1].startswith(str(target))


def test_csp_hash_matches_script() -> None:
    import base64
    import hashlib

    from reportgen.render import _asset, csp

    script = _asset("report.js")
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    policy = csp(script)
    assert f"'sha256-{digest}'" in policy and "default-src 'none'" in policy
    assert not re.search(r"https?:", policy)
