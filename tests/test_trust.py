"""What reportgen trusts, what it says when something goes wrong, and that its claims
hold: links out of the image folder, unreadable folders, file permissions, colliding
outputs, a broken cache, warnings, undefined kNN, the recorded perplexity, the ONNX
twin's taps.  (Crafted audit JSONs given to ``compare`` are in ``test_compare.py``.)"""

from __future__ import annotations

import os
import shutil
import stat
import warnings
from pathlib import Path

import numpy as np
import pytest
from conftest import NO_RERUNS, SAMPLE, assert_no_traceback, load_json, make_image, run_cli
from onnx_models import tiny_cnn

from reportgen import cli
from reportgen.analyses.knn import layer_knn
from reportgen.analyses.tsne import perplexity_for
from reportgen.data import discover
from reportgen.errors import UserError
from reportgen.util import atomic_write_bytes

FAST = ["-q", *NO_RERUNS]


def _folder_with_links(tmp_path: Path) -> Path:
    """cat/ and dog/ with one image each; cat/ also holds links: to a file and a folder
    outside, and to an image inside."""
    root = tmp_path / "images"
    make_image(root / "cat" / "a.png")
    make_image(root / "dog" / "b.png")
    outside = tmp_path / "private"
    make_image(outside / "secret.png")
    make_image(outside / "more" / "c.png")
    (root / "cat" / "secret.png").symlink_to(outside / "secret.png")
    (root / "cat" / "more").symlink_to(outside / "more", target_is_directory=True)
    (root / "cat" / "same.png").symlink_to(root / "dog" / "b.png")
    return root


def test_links_out_of_the_image_folder_are_skipped_unless_followed(tmp_path: Path) -> None:
    root = _folder_with_links(tmp_path)
    dataset = discover(root)
    assert sorted(r.file for r in dataset.records) == ["cat/a.png", "cat/same.png", "dog/b.png"]
    skipped = {s.file: s.reason for s in dataset.skipped}
    assert set(skipped) == {"cat/secret.png", "cat/more"}
    assert all("out of the image folder" in reason and "--follow-links" in reason for reason in skipped.values())
    assert dataset.links_not_followed == 2
    followed = discover(root, follow_links=True)
    assert sorted(r.file for r in followed.records) == [
        "cat/a.png",
        "cat/more/c.png",
        "cat/same.png",
        "cat/secret.png",
        "dog/b.png",
    ]
    assert not followed.skipped


def test_a_folder_made_only_of_links_out_says_how_to_follow_them(tmp_path: Path) -> None:
    """A split made of links into an image store: refused as a whole with the way out;
    the report (or the error) never stays silent about it."""
    store = tmp_path / "store"
    split = tmp_path / "split"
    for c in ("cat", "dog"):
        make_image(store / c / "a.png")
        (split / c).mkdir(parents=True)
        (split / c / "a.png").symlink_to(store / c / "a.png")
    with pytest.raises(UserError, match=r"2 symbolic link\(s\) lead out of the folder.*--follow-links"):
        discover(split)
    assert len(discover(split, follow_links=True).records) == 2
    make_image(split / "cat" / "own.png")
    out = tmp_path / "out" / "r.html"
    result = run_cli("audit", tiny_cnn(tmp_path / "m.onnx"), split, "-o", out, *FAST, "--no-tsne")
    assert result.code == 0, result.err
    assert any("2 symbolic link(s) lead out of the image folder" in w for w in load_json(out)["warnings"])


def test_an_unreadable_sub_folder_is_listed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Reading is refused by the system (faked: the tests may run as root, who reads all)."""
    root = tmp_path / "images"
    make_image(root / "cat" / "a.png")
    make_image(root / "cat" / "locked" / "b.png")
    make_image(root / "dog" / "c.png")
    real_scandir = os.scandir

    def scandir(path: object) -> object:
        if Path(str(path)).name == "locked":
            raise PermissionError(13, "Permission denied")
        return real_scandir(path)

    monkeypatch.setattr(os, "scandir", scandir)
    dataset = discover(root)
    assert [r.file for r in dataset.records] == ["cat/a.png", "dog/c.png"]
    (entry,) = dataset.skipped
    assert entry.file == "cat/locked/" and "cannot read folder: Permission denied" in entry.reason


@pytest.mark.parametrize(("umask", "mode"), [(0o077, 0o600), (0o022, 0o644)])
def test_written_files_follow_the_umask(tmp_path: Path, umask: int, mode: int) -> None:
    old = os.umask(umask)
    try:
        atomic_write_bytes(tmp_path / "report.html", b"<html></html>")
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "report.html").st_mode) == mode


def test_an_existing_file_keeps_its_mode(tmp_path: Path) -> None:
    path = tmp_path / "report.json"
    path.write_text("{}")
    os.chmod(path, 0o640)
    atomic_write_bytes(path, b"{}")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o640


def _small_folder(root: Path, per_class: int = 12) -> Path:
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        for i in range(per_class):
            make_image(root / c / f"{i}.png", (32, 32), tuple(int(v) for v in rng.integers(0, 255, 3)))
    return root


@pytest.fixture(scope="module")
def private_audit(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small audit (24 images, t-SNE on: a lowered perplexity) under umask 077."""
    base = tmp_path_factory.mktemp("private")
    images = _small_folder(base / "images")
    model = tiny_cnn(base / "m.onnx")
    out = base / "out" / "report.html"
    old = os.umask(0o077)
    try:
        result = run_cli("audit", model, images, "-o", out, *FAST)
    finally:
        os.umask(old)
    assert result.code == 0, result.err
    return out


def test_a_report_under_umask_077_is_private(private_audit: Path) -> None:
    cache = private_audit.with_name("report.features")
    for path in (private_audit, private_audit.with_suffix(".json"), *cache.iterdir()):
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600, path
    assert stat.S_IMODE(os.stat(cache).st_mode) == 0o700


def test_the_recorded_perplexity_is_the_one_used(private_audit: Path) -> None:
    tsne = load_json(private_audit)["tsne"]
    assert tsne["n_points"] == 24
    assert tsne["perplexity"] == pytest.approx(perplexity_for(tsne["n_points"])) and tsne["perplexity"] < 30


def test_a_broken_cache_is_named_and_noted(private_audit: Path, tmp_path: Path) -> None:
    """A cache reportgen wrote whose layer file was damaged: named, noted, extracted again
    and replaced (it is provably reportgen's: its meta.json says so)."""
    base = private_audit.parent.parent
    cache = tmp_path / "copy.features"
    shutil.copytree(private_audit.with_name("report.features"), cache)
    layer = cache / "layer_1.npy"
    layer.write_bytes(layer.read_bytes()[:100])
    out = tmp_path / "r.html"
    args = ["audit", base / "m.onnx", base / "images", "-o", out, "--features", cache, *FAST[1:], "--no-tsne"]
    result = run_cli(*args)
    assert result.code == 0, result.err
    assert f"not reusing the features cache {cache}: unreadable" in result.err
    assert any("could not be used" in w and "unreadable" in w for w in load_json(out)["warnings"])
    # The cache written by that run is used by the next, and nothing is said about it.
    again = run_cli(*args)
    assert again.code == 0 and "not reusing" not in again.err and "reusing the features cache" in again.err
    assert not any("could not be used" in w for w in load_json(out)["warnings"])


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["-o", "{dir}/x.json"], "the JSON sidecar would be the report itself"),
        (["-o", "{dir}/r.html", "--features", "{dir}/r.json"], "would overwrite the report or its JSON"),
        (["-o", "{dir}/r.html", "--features", "{dir}/r.html"], "would overwrite the report or its JSON"),
    ],
)
def test_colliding_outputs_are_refused(tmp_path: Path, args: list[str], message: str) -> None:
    filled = [a.format(dir=tmp_path) for a in args]
    result = run_cli("audit", SAMPLE / "model.onnx", SAMPLE / "images", *filled, "-q")
    assert_no_traceback(result)
    assert result.code == 2 and message in result.err
    assert not list(tmp_path.iterdir())


def test_user_relevant_warnings_are_shown_and_api_notices_are_not(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    def command(args: object) -> int:
        warnings.warn("some values were clipped", RuntimeWarning, stacklevel=1)
        warnings.warn("this API will change", FutureWarning, stacklevel=1)
        warnings.warn("this API is deprecated", DeprecationWarning, stacklevel=1)
        return 0

    monkeypatch.setattr(cli, "_cmd_layers", command)
    model = tiny_cnn(tmp_path / "m.onnx")
    assert cli.main(["layers", str(model)]) == 0
    err = capsys.readouterr().err
    assert "reportgen: warning: some values were clipped (RuntimeWarning)" in err
    assert "API" not in err
    assert cli.main(["layers", str(model), "--debug"]) == 0
    assert "this API is deprecated" in capsys.readouterr().err


def test_knn_on_constant_features_is_undefined() -> None:
    """Every distance ties: the vote would be decided by row order."""
    labels = np.repeat(np.arange(3), 10)
    result = layer_knn(np.ones((30, 8), np.float32), labels, 5)
    assert result.accuracy is None and result.agreement is None
    assert "kNN undefined" in result.note
    varied = layer_knn(np.random.default_rng(0).standard_normal((30, 8)).astype(np.float32), labels, 5)
    assert varied.accuracy is not None and varied.note == ""


def test_constant_layer_says_undefined_in_the_report(tmp_path: Path) -> None:
    images = _small_folder(tmp_path / "images", per_class=6)
    model = tiny_cnn(tmp_path / "const.onnx", constant=True)
    out = tmp_path / "r.html"
    result = run_cli("audit", model, images, "-o", out, *FAST, "--no-tsne")
    assert result.code == 0, result.err
    inner = [layer for layer in load_json(out)["layers"] if layer["name"] not in ("input",)]
    constant = [layer for layer in inner if "kNN undefined" in (layer["note"] or "")]
    assert constant and all(layer["knn_accuracy"] is None for layer in constant)


def test_the_twin_checks_each_tapped_tensor(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A twin whose value at a tap differs from ONNX Runtime's is refused there, even when
    its outputs agree."""
    from reportgen.models import last_spatial_layer, load_model

    adapter = load_model(tiny_cnn(tmp_path / "m.onnx"), device="cpu")
    adapter.prepare((32, 32))
    layer = last_spatial_layer(adapter.layers())
    twin = adapter.differentiable()
    real = adapter.tensors
    monkeypatch.setattr(adapter, "tensors", lambda pixels, names: [v * 1.5 + 1 for v in real(pixels, names)])
    pixels = np.zeros((2, 3, 32, 32), np.float32)
    with pytest.raises(UserError, match="differs from ONNX Runtime"):
        twin.tensor_gradient(pixels, layer, np.zeros(2, np.int64))
    monkeypatch.setattr(adapter, "tensors", real)
    activations, _, _ = twin.tensor_gradient(pixels, layer, np.zeros(2, np.int64))
    assert activations.shape[0] == 2


def test_results_files_write_their_own_gpu_line(monkeypatch: pytest.MonkeyPatch) -> None:
    import torch

    from benchmarks.__main__ import gpu_line

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert gpu_line().startswith("- GPU figures: not measured")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda i: "NVIDIA H100")
    assert "NVIDIA H100 present" in gpu_line()


def test_declared_dependencies_are_the_imported_ones() -> None:
    """scikit-learn is only for tests and benchmarks; threadpoolctl is imported."""
    import tomllib

    from conftest import ROOT

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    names = {d.split(">")[0].split("=")[0].strip() for d in project["dependencies"]}
    assert "threadpoolctl" in names and "scikit-learn" not in names
    source = "\n".join(p.read_text() for p in (ROOT / "reportgen").rglob("*.py"))
    assert "import sklearn" not in source and "from sklearn" not in source and "threadpoolctl" in source
