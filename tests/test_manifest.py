"""Data as users have it: manifests (CSV, TSV, JSON Lines, Parquet), a flat folder with
--labels-file, label indices; the same numbers as the folder audit of the same images;
hostile manifests refused or listed without reading outside the root; metadata broken
down against direct computations; --group-by leakage."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import NO_RERUNS, SAMPLE, load_json, page_text, run_cli
from PIL import Image
from scipy import stats

from reportgen.analyses import metadata as md

FAST = ["-q", "--no-tsne", "--device", "cpu", *NO_RERUNS]
SITES = ("north", "south", "east")


def _rows(base: str) -> list[dict[str, Any]]:
    """One row per sample image: its path under ``base``, its class, a site and an age
    that depend on the file alone (seeded by its position)."""
    rows = []
    for i, path in enumerate(sorted((SAMPLE / "images").rglob("*.jpg"))):
        cls = path.parent.name
        rows.append({"path": f"{base}{cls}/{path.name}", "label": cls, "site": SITES[i % 3], "age": 20 + (i * 7) % 61})
    return rows


def _write_csv(path: Path, rows: list[dict[str, Any]], delimiter: str = ",") -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, list(rows[0]), delimiter=delimiter)
        writer.writeheader()
        writer.writerows(rows)
    return path


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder holding a copy of the sample images (``images/<class>/``) for manifests."""
    root = tmp_path_factory.mktemp("manifest_data")
    shutil.copytree(SAMPLE / "images", root / "images")
    return root


@pytest.fixture(scope="module")
def folder_audit(tmp_path_factory: pytest.TempPathFactory, data: Path) -> dict[str, Any]:
    out = tmp_path_factory.mktemp("folder_audit") / "r.html"
    result = run_cli("audit", SAMPLE / "model.onnx", data / "images", "-o", out, *FAST, "--no-cache")
    assert result.code == 0, result.err
    return load_json(out)


def _by_file(report: dict[str, Any], prefix: str = "") -> dict[str, tuple[str | None, str]]:
    return {p["file"].removeprefix(prefix): (p["label"], p["pred"]) for p in report["predictions"]}


def _same_numbers(got: dict[str, Any], folder: dict[str, Any], prefix: str) -> None:
    assert _by_file(got, prefix) == _by_file(folder)
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "confusion_matrix", "per_class", "classes"):
        assert got[key] == folder[key], key


@pytest.mark.parametrize("kind", ["csv", "tsv", "jsonl", "parquet"])
def test_a_manifest_gives_the_folder_audit_s_numbers(
    kind: str, data: Path, folder_audit: dict[str, Any], tmp_path: Path
) -> None:
    rows = _rows("images/")
    manifest = data / f"m-{kind}.{kind}"
    if kind in ("csv", "tsv"):
        _write_csv(manifest, rows, "," if kind == "csv" else "\t")
    elif kind == "jsonl":
        manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    else:
        import pyarrow as pa
        import pyarrow.parquet as pq

        pq.write_table(pa.Table.from_pylist(rows), manifest)
    out = tmp_path / "r.html"
    result = run_cli("audit", SAMPLE / "model.onnx", manifest, "-o", out, *FAST, "--no-cache")
    assert result.code == 0, result.err
    got = load_json(out)
    _same_numbers(got, folder_audit, "images/")
    assert got["dataset"]["source"] == str(manifest) and got["dataset"]["metadata_columns"] == ["site", "age"]
    assert got["dataset"]["sha256"] != folder_audit["dataset"]["sha256"]  # the manifest is part of it
    # Metadata: site accuracies equal the predictions', counted by hand.
    site_of = {r["path"]: r["site"] for r in rows}
    breakdown = {c["column"]: c for c in got["metadata_breakdown"]}
    for g in breakdown["site"]["groups"]:
        mine = [p for p in got["predictions"] if site_of[p["file"]] == g["value"]]
        assert g["n"] == len(mine)
        assert g["accuracy"] == pytest.approx(np.mean([p["pred"] == p["label"] for p in mine]), abs=1e-6)
    assert breakdown["age"]["kind"] == "numeric" and sum(g["n"] for g in breakdown["age"]["groups"]) == 274


def test_labels_as_output_indices(data: Path, folder_audit: dict[str, Any], tmp_path: Path) -> None:
    classes = folder_audit["classes"]
    rows = [{**r, "label": classes.index(r["label"])} for r in _rows("images/")]
    rows[0]["label"] = 17  # no such output: unlabelled, and said so
    manifest = _write_csv(data / "indices.csv", rows)
    out = tmp_path / "r.html"
    result = run_cli("audit", SAMPLE / "model.onnx", manifest, "-o", out, *FAST, "--no-cache")
    assert result.code == 0, result.err
    got = load_json(out)
    assert got["classes"] == classes  # names from the model's metadata, matched by index
    labels = {p["file"]: p["label"] for p in got["predictions"]}
    assert labels[rows[0]["path"]] == "17" and labels[rows[1]["path"]] == classes[rows[1]["label"]]
    assert got["n_evaluated"] == 273  # the image labelled 17 is left out of the metrics
    assert any("not outputs of the model" in w and "17" in w for w in got["warnings"])


def test_a_flat_folder_with_a_labels_file(data: Path, folder_audit: dict[str, Any], tmp_path: Path) -> None:
    flat = tmp_path / "flat"
    flat.mkdir()
    rows = []
    for path in sorted((data / "images").rglob("*.jpg")):
        name = f"{path.parent.name}_{path.name}"
        shutil.copy(path, flat / name)
        rows.append({"filename": name, "target": path.parent.name})
    expected = {f"{k.split('/')[0]}_{k.split('/')[1]}": v for k, v in _by_file(folder_audit).items()}
    # A table (other column names than the defaults' first), and ImageNet's one label per line.
    table = _write_csv(tmp_path / "labels.csv", rows)
    txt = tmp_path / "labels.txt"
    txt.write_text("".join(r["target"] + "\n" for r in sorted(rows, key=lambda r: r["filename"])))
    for labels_file in (table, txt):
        out = tmp_path / labels_file.suffix[1:] / "r.html"
        result = run_cli("audit", SAMPLE / "model.onnx", flat, "--labels-file", labels_file, "-o", out, *FAST,
                         "--no-cache")  # fmt: skip
        assert result.code == 0, result.err
        got = load_json(out)
        assert _by_file(got) == expected
        assert got["accuracy"] == folder_audit["accuracy"]
    # A .txt whose count does not match the folder: refused in one line.
    txt.write_text("circle\n")
    bad = run_cli("audit", SAMPLE / "model.onnx", flat, "--labels-file", txt, "-o", tmp_path / "x.html", *FAST)
    assert bad.code == 2 and "holds 1 labels for the 274 images" in bad.err and "Traceback" not in bad.err


def test_hostile_paths_are_listed_not_read(data: Path, tmp_path: Path) -> None:
    """``..``, absolute paths and links out of the manifest's folder are refused unless
    --follow-links consents; the files outside are never opened."""
    import os

    outside = tmp_path / "outside.png"
    Image.new("RGB", (64, 64), (200, 10, 10)).save(outside)
    root = tmp_path / "root"
    shutil.copytree(data / "images" / "circle", root / "circle")
    os.symlink(outside, root / "circle" / "link.png")
    rows = [{"path": f"circle/{p.name}", "label": "circle"} for p in sorted((root / "circle").glob("*.jpg"))]
    rows += [
        {"path": "../outside.png", "label": "circle"},
        {"path": str(outside), "label": "circle"},
        {"path": "circle/link.png", "label": "circle"},
    ]
    manifest = _write_csv(root / "m.csv", rows)
    out = tmp_path / "out" / "r.html"
    result = run_cli("audit", SAMPLE / "model.onnx", manifest, "-o", out, *FAST, "--no-cache")
    assert result.code == 0, result.err
    got = load_json(out)
    files = {p["file"] for p in got["predictions"]}
    assert not any("outside" in f or "link" in f for f in files)
    reasons = {s["file"]: s["reason"] for s in got["skipped"]}
    assert "not read without --follow-links" in reasons["../outside.png"]
    assert "an absolute path outside" in reasons[str(outside)]
    assert "not read without --follow-links" in reasons["circle/link.png"]
    # With consent, all three are the same file, audited once under one root.
    result = run_cli("audit", SAMPLE / "model.onnx", manifest, "-o", tmp_path / "f" / "r.html", *FAST, "--no-cache",
                     "--follow-links")  # fmt: skip
    assert result.code == 0, result.err
    got = load_json(tmp_path / "f" / "r.html")
    assert len(got["predictions"]) == len(rows) - 2
    assert any("row(s) for a file it already listed" in w for w in got["warnings"])


def test_a_million_rows_of_one_missing_file_and_a_huge_cell(tmp_path: Path) -> None:
    root = tmp_path / "m"
    root.mkdir()
    Image.new("RGB", (64, 64), (0, 0, 0)).save(root / "ok.png")
    with open(root / "m.csv", "w") as fh:
        fh.write("path,label\nok.png,circle\n" + "missing.jpg,circle\n" * 1_000_000)
    out = tmp_path / "out" / "r.html"
    result = run_cli("audit", SAMPLE / "model.onnx", root / "m.csv", "-o", out, *FAST, "--no-cache")
    assert result.code == 0, result.err
    got = load_json(out)
    assert [s["file"] for s in got["skipped"]] == ["missing.jpg"]
    assert "not found" in got["skipped"][0]["reason"]
    assert any("999,999 row(s) for a file it already listed" in w for w in got["warnings"])
    # One cell of 100 MB: refused in one line.
    with open(root / "big.csv", "w") as fh:
        fh.write("path,label,note\nok.png,circle,")
        chunk = "x" * (1 << 20)
        for _ in range(100):
            fh.write(chunk)
        fh.write("\n")
    result = run_cli("audit", SAMPLE / "model.onnx", root / "big.csv", "-o", tmp_path / "b.html", *FAST)
    assert result.code == 2 and "65,536 characters" in result.err and "Traceback" not in result.err
    # The same in JSON Lines: refused before the line is read whole.
    with open(root / "big.jsonl", "w") as fh:
        fh.write('{"path": "ok.png", "note": "' + "x" * (8 << 20) + '"}\n')
    result = run_cli("audit", SAMPLE / "model.onnx", root / "big.jsonl", "-o", tmp_path / "j.html", *FAST)
    assert result.code == 2 and "longer than" in result.err


def test_duplicates_conflicts_unknown_labels_and_columns(data: Path, tmp_path: Path) -> None:
    rows = _rows("images/")[:40]
    rows.append({**rows[0]})  # the same row again
    rows.append({**rows[1], "label": "square"})  # the same file, another label
    rows.append({**rows[2], "path": rows[2]["path"], "label": rows[2]["label"]})
    rows[3] = {**rows[3], "label": "hexagon"}  # no such class
    manifest = _write_csv(data / "dups.csv", rows)
    out = tmp_path / "r.html"
    result = run_cli("audit", SAMPLE / "model.onnx", manifest, "-o", out, *FAST, "--no-cache")
    assert result.code == 0, result.err
    got = load_json(out)
    warnings = " | ".join(got["warnings"])
    assert "3 row(s) for a file it already listed" in warnings
    assert "1 file(s) are listed with different labels" in warnings
    assert "1 label(s) match no model output ('hexagon')" in warnings
    labels = {p["file"]: p["label"] for p in got["predictions"]}
    assert labels[rows[1]["path"]] is None and labels[rows[3]["path"]] == "hexagon" and len(labels) == 40
    assert got["n_evaluated"] == 38  # the conflicting file and the unknown class are left out
    for args, message in (
        (["--path-column", "nope"], "has no column 'nope'"),
        (["--group-by", "nope"], "is not a metadata column"),
    ):
        bad = run_cli("audit", SAMPLE / "model.onnx", manifest, "-o", tmp_path / "x.html", *FAST, *args)
        assert bad.code == 2 and message in bad.err, bad.err


def test_group_by_marks_duplicates_across_groups(data: Path, tmp_path: Path) -> None:
    rows = [{**r, "split": "train" if i % 2 else "test"} for i, r in enumerate(_rows("images/"))]
    planted = []
    (data / "planted").mkdir(exist_ok=True)  # beside images/, which other tests copy whole
    for r in rows[:3]:
        name = "planted/" + Path(r["path"]).stem + "_again.png"
        Image.open(data / r["path"]).save(data / name)
        other = "train" if r["split"] == "test" else "test"
        rows.append({**r, "path": name, "split": other})
        planted.append({r["path"], name})
    manifest = _write_csv(data / "split.csv", rows)
    out = tmp_path / "r.html"
    result = run_cli("audit", SAMPLE / "model.onnx", manifest, "-o", out, *FAST, "--no-cache", "--group-by", "split")
    assert result.code == 0, result.err
    got = load_json(out)
    pairs = got["near_duplicates"]
    across = [p for p in pairs if p["across_groups"]]
    assert got["near_duplicates_across_groups"] == {"column": "split", "pairs": len(across)}
    for pair in planted:
        assert any({p["a"], p["b"]} == pair for p in across)
    assert pairs[: len(across)] == across  # leakage first
    assert all(p["groups"][0] == p["groups"][1] for p in pairs[len(across) :] if p["groups"])
    assert any("join images of different 'split' values" in w for w in got["warnings"])
    assert "across groups" in page_text(out)


def test_the_cache_follows_the_manifest_s_labels(data: Path, tmp_path: Path) -> None:
    rows = _rows("images/")[:30]
    manifest = _write_csv(data / "cached.csv", rows)
    out = tmp_path / "r.html"
    assert run_cli("audit", SAMPLE / "model.onnx", manifest, "-o", out, *FAST).code == 0
    first = load_json(out)
    rows[0]["label"] = "star" if rows[0]["label"] != "star" else "ring"
    _write_csv(manifest, rows)
    assert run_cli("audit", SAMPLE / "model.onnx", manifest, "-o", out, *FAST).code == 0
    second = load_json(out)
    assert {p["file"]: p["label"] for p in second["predictions"]}[rows[0]["path"]] == rows[0]["label"]
    assert second["dataset"]["sha256"] != first["dataset"]["sha256"]


def test_breakdown_against_direct_computation() -> None:
    rng = np.random.default_rng(3)
    n = 400
    site = [str(rng.choice(["a", "b", "c", "rare1", "rare2"], p=[0.4, 0.3, 0.26, 0.02, 0.02])) for _ in range(n)]
    age = list(rng.integers(18, 90, n).astype(float))
    age[5] = None  # missing
    ids = [f"patient-{i}" for i in range(n)]
    correct = rng.random(n) < np.where(np.array(site) == "b", 0.4, 0.9)
    out = {c.column: c for c in md.metadata_breakdown({"site": site, "age": age, "id": ids}, correct)}
    s = out["site"]
    assert s.kind == "categorical" and [g.value for g in s.groups][:3] == ["a", "b", "c"]
    assert s.groups[-1].value == "other (2 values)"
    for g in s.groups[:3]:
        mask = np.array(site) == g.value
        assert g.n == mask.sum() and g.correct == correct[mask].sum()
        ci = stats.binomtest(int(correct[mask].sum()), int(mask.sum())).proportion_ci(method="wilson")
        assert g.ci == pytest.approx((ci.low, ci.high), abs=1e-9)
        table = [[correct[mask].sum(), (~correct[mask]).sum()], [correct[~mask].sum(), (~correct[~mask]).sum()]]
        assert g.p_value == pytest.approx(stats.fisher_exact(table).pvalue)
    assert {g.value for g in s.groups if g.worse} == {"b"}
    a = out["age"]
    assert a.kind == "numeric" and a.missing == 1 and sum(g.n for g in a.groups) == n - 1
    values = np.array([x for x in age if x is not None])
    edges = np.quantile(values, np.linspace(0, 1, 6))
    assert a.groups[0].n == ((values >= edges[0]) & (values < edges[1])).sum()
    assert a.groups[-1].n == ((values >= edges[-2]) & (values <= edges[-1])).sum()
    assert out["id"].kind == "identifier" and not out["id"].groups and out["id"].distinct == n


def test_slice_descriptions_name_the_metadata_their_members_share() -> None:
    from reportgen.analyses.slices import _properties, describe_property

    labeled = np.arange(40)
    members = np.arange(10)  # the slice: rows 0-9, all from camera "old"
    camera = ["old"] * 10 + ["new"] * 28 + ["old", None]
    ids = [f"id{i}" for i in range(40)]  # an identifier: never a description
    props = _properties(labeled, members, [f"f{i}.png" for i in range(40)], None, set(), {"camera": camera, "id": ids})
    by_name = {p.name: p for p in props}
    old = by_name["meta camera=old"]
    assert old.slice_mean == 1.0 and old.rest_mean == pytest.approx(1 / 30)
    assert describe_property(old).startswith("100% with camera old (rest 3%")
    assert not any(name.startswith("meta id=") for name in by_name)


def test_compare_breaks_changes_down_by_metadata(data: Path, tmp_path: Path) -> None:
    """Two audits of one manifest, the second model's logits biased toward one class: each
    site's accuracy under both models equals the predictions', counted by hand."""
    import onnx
    from onnx import TensorProto, helper

    graph = onnx.load(str(SAMPLE / "model.onnx"))
    name = graph.graph.output[0].name
    bias = np.zeros(6, np.float32)
    bias[0] = 4.0  # toward "circle"
    graph.graph.initializer.append(helper.make_tensor("bias", TensorProto.FLOAT, [6], bias))
    graph.graph.node.append(helper.make_node("Add", [name, "bias"], [f"{name}_biased"]))
    graph.graph.output[0].name = f"{name}_biased"
    biased = tmp_path / "biased.onnx"
    onnx.save(graph, str(biased))
    rows = _rows("images/")
    manifest = _write_csv(data / "compare.csv", rows)
    reports = {}
    for tag, model in (("old", SAMPLE / "model.onnx"), ("new", biased)):
        reports[tag] = tmp_path / tag / "r.html"
        result = run_cli("audit", model, manifest, "-o", reports[tag], *FAST, "--no-cache")
        assert result.code == 0, result.err
    diff = tmp_path / "diff.html"
    result = run_cli("compare", reports["old"].with_suffix(".json"), reports["new"].with_suffix(".json"), "-o", diff,
                     "-q")  # fmt: skip
    assert result.code == 0, result.err
    changes = {(m["column"], m["value"]): m for m in json.loads(diff.with_suffix(".json").read_text())["metadata"]}
    site_of = {r["path"]: r["site"] for r in rows}
    for tag in ("old", "new"):
        preds = load_json(reports[tag])["predictions"]
        assert preds[0]["metadata"] == {"site": site_of[preds[0]["file"]], "age": str(rows[0]["age"])}  # CSV: text
        for site in SITES:
            mine = [p for p in preds if site_of[p["file"]] == site]
            m = changes[("site", site)]
            assert m["size"] == len(mine)
            assert m[f"{tag}_accuracy"] == pytest.approx(np.mean([p["pred"] == p["label"] for p in mine]), abs=1e-6)
    assert all(m["delta"] <= 0 for m in changes.values() if m["column"] == "site")
    assert "Metadata" in diff.read_text()


def test_a_hugging_face_imagefolder_with_its_metadata_file(
    data: Path, folder_audit: dict[str, Any], tmp_path: Path
) -> None:
    """Class folders plus ``metadata.csv`` (``file_name`` + columns): the folders label,
    the file adds metadata.  A flat folder's ``metadata.jsonl`` with a label labels it."""
    folder = tmp_path / "hf"
    shutil.copytree(data / "images", folder)
    rows = [{"file_name": r["path"], "site": r["site"]} for r in _rows("")]
    rows.append({"file_name": "gone/nothing.jpg", "site": "north"})
    _write_csv(folder / "metadata.csv", rows)
    out = tmp_path / "a" / "r.html"
    result = run_cli("audit", SAMPLE / "model.onnx", folder, "-o", out, *FAST, "--no-cache")
    assert result.code == 0, result.err
    got = load_json(out)
    _same_numbers(got, folder_audit, "")
    assert [c["column"] for c in got["metadata_breakdown"]] == ["site"]
    assert any("1 row(s) of metadata.csv name no audited image" in w for w in got["warnings"])
    flat = tmp_path / "flat"
    flat.mkdir()
    lines = []
    for path in sorted((data / "images").rglob("*.jpg"))[::10]:
        shutil.copy(path, flat / f"{path.parent.name}-{path.name}")
        lines.append(json.dumps({"file_name": f"{path.parent.name}-{path.name}", "label": path.parent.name}))
    (flat / "metadata.jsonl").write_text("\n".join(lines) + "\n")
    out = tmp_path / "b" / "r.html"
    result = run_cli("audit", SAMPLE / "model.onnx", flat, "-o", out, *FAST, "--no-cache")
    assert result.code == 0, result.err
    got = load_json(out)
    expected = {f"{k.split('/')[0]}-{k.split('/')[1]}": v for k, v in _by_file(folder_audit).items()}
    assert _by_file(got) == {k: expected[k] for k in _by_file(got)} and len(got["predictions"]) == len(lines)


# ---------------------------------------------------------------- saved Hugging Face datasets


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory, data: Path) -> Path:
    """The sample as a DatasetDict saved by ``datasets`` (a test split of every image and
    a one-image train split), with a ClassLabel and a site column."""
    import datasets

    files = sorted((data / "images").rglob("*.jpg"))
    classes = sorted({f.parent.name for f in files})
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=classes), "site": datasets.Value("string")}
    )

    def split(chosen: list[Path]) -> datasets.Dataset:
        return datasets.Dataset.from_dict(
            {
                "image": [str(f) for f in chosen],
                "label": [classes.index(f.parent.name) for f in chosen],
                "site": [SITES[i % 3] for i in range(len(chosen))],
            },
            features=features,
        )

    folder = tmp_path_factory.mktemp("hf") / "saved"
    datasets.DatasetDict({"test": split(files), "train": split(files[:1])}).save_to_disk(str(folder))
    return folder


def test_a_saved_dataset_gives_the_folder_audit_s_numbers(
    saved: Path, folder_audit: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "r.html"
    result = run_cli("audit", SAMPLE / "model.onnx", saved, "--split", "test", "-o", out, *FAST)
    assert result.code == 0, result.err
    got = load_json(out)
    for key in ("accuracy", "confusion_matrix", "per_class", "classes"):
        assert got[key] == folder_audit[key], key
    # Row i is the i-th sorted file: the same predictions, file by file.
    original = sorted(_by_file(folder_audit).items())
    written = sorted(_by_file(got).items())
    assert [v for _, v in written] == [v for _, v in original]
    assert written[0][0] == "images/00000000-" + Path(original[0][0]).stem + ".jpg"
    assert [c["column"] for c in got["metadata_breakdown"]] == ["site"]
    pictures = tmp_path / "r.dataset"
    assert (pictures / "manifest.jsonl").is_file() and len(list((pictures / "images").iterdir())) == 274
    # Again: the pictures and the features are reused.
    stamp = (pictures / "manifest.jsonl").stat().st_mtime_ns
    result = run_cli("audit", SAMPLE / "model.onnx", saved, "--split", "test", "-o", out, *FAST)
    assert result.code == 0, result.err
    assert (pictures / "manifest.jsonl").stat().st_mtime_ns == stamp
    assert load_json(out)["features_from_cache"] is True


def test_saved_dataset_refusals(saved: Path, tmp_path: Path) -> None:
    for args, message in (
        ([], "holds the splits test, train: choose one with --split"),
        (["--split", "valid"], "is not a split of"),
    ):
        result = run_cli("audit", SAMPLE / "model.onnx", saved, "-o", tmp_path / "r.html", *FAST, *args)
        assert result.code == 2 and message in result.err, result.err
    # A folder at the pictures' place that reportgen did not write is left alone.
    mine = tmp_path / "mine.dataset"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    result = run_cli("audit", SAMPLE / "model.onnx", saved, "--split", "train", "-o", tmp_path / "mine.html", *FAST)
    assert result.code == 2 and "was not written by reportgen" in result.err
    assert (mine / "notes.txt").read_text() == "keep"
    other = run_cli("audit", SAMPLE / "model.onnx", SAMPLE / "images", "--split", "x", "-o", tmp_path / "o.html", *FAST)
    assert other.code == 2 and "is not one" in other.err


def test_a_hostile_saved_dataset(tmp_path: Path) -> None:
    """Written by hand (no ``datasets``): a picture stored as a path outside, a picture too
    large, an undecodable one, a row without a picture, a nested column."""
    import pyarrow as pa

    folder = tmp_path / "hostile"
    folder.mkdir()
    good = io_png((64, 64), (0, 200, 0))
    secret = tmp_path / "secret.png"
    secret.write_bytes(good)
    big = io_png((1200, 1200), None)
    rows = [
        {"image": {"bytes": good, "path": "ok.png"}, "label": 0, "nested": [1, 2]},
        {"image": {"bytes": None, "path": str(secret)}, "label": 0, "nested": []},
        {"image": {"bytes": big, "path": "big.png"}, "label": 1, "nested": []},
        {"image": {"bytes": b"not an image", "path": "junk.png"}, "label": 1, "nested": []},
        {"image": None, "label": 1, "nested": []},
    ]
    table = pa.Table.from_pylist(rows)
    with pa.OSFile(str(folder / "data-00000-of-00001.arrow"), "wb") as sink, pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": "data-00000-of-00001.arrow"}]}))
    features = {"image": {"_type": "Image"}, "label": {"_type": "ClassLabel", "names": ["circle", "cross"]},
                "nested": {"_type": "Sequence"}}  # fmt: skip
    (folder / "dataset_info.json").write_text(json.dumps({"features": features}))
    out = tmp_path / "out" / "r.html"
    result = run_cli("audit", SAMPLE / "model.onnx", folder, "-o", out, *FAST, "--max-image-mb", "1", "--no-cache")
    assert result.code == 0, result.err
    got = load_json(out)
    assert [p["file"] for p in got["predictions"]] == ["images/00000000-ok.png"]
    reasons = " | ".join(f"{s['file']}: {s['reason']}" for s in got["skipped"])
    assert f"{secret}: an absolute path outside" in reasons
    assert "images/00000002-big (row 2): file too large: 4 MB" in reasons
    assert "images/00000003-junk.png: not a recognised image format" in reasons
    assert "images/00000004 (row 4): the row holds no picture" in reasons
    assert any("nested" in w for w in got["warnings"])
    # A data file that is no Arrow stream: refused in one line.
    (folder / "data-00000-of-00001.arrow").write_bytes(b"not arrow at all")
    bad = run_cli("audit", SAMPLE / "model.onnx", folder, "-o", tmp_path / "c" / "r.html", *FAST)
    assert bad.code == 2 and "cannot read" in bad.err and "Traceback" not in bad.err
    # The state naming a file outside the folder: refused.
    (folder / "state.json").write_text(json.dumps({"_data_files": [{"filename": "../x.arrow"}]}))
    bad = run_cli("audit", SAMPLE / "model.onnx", folder, "-o", tmp_path / "b" / "r.html", *FAST)
    assert bad.code == 2 and "names no data files" in bad.err


def io_png(size: tuple[int, int], colour: tuple[int, int, int] | None) -> bytes:
    import io

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8) if colour is None else None
    img = Image.fromarray(pixels) if pixels is not None else Image.new("RGB", size, colour)
    buf = io.BytesIO()
    img.save(buf, "PNG")
    return buf.getvalue()


def test_somebody_s_own_metadata_csv_is_left_alone(tmp_path: Path) -> None:
    """A metadata.csv without a file_name column is no imagefolder metadata: the folder is
    audited as before, and the warnings say the file was not read."""
    folder = tmp_path / "mine"
    shutil.copytree(SAMPLE / "images" / "circle", folder / "circle")
    shutil.copytree(SAMPLE / "images" / "star", folder / "star")
    (folder / "metadata.csv").write_text("camera,owner\nx,y\n")
    out = tmp_path / "out" / "r.html"
    result = run_cli("audit", SAMPLE / "model.onnx", folder, "-o", out, *FAST, "--no-cache")
    assert result.code == 0, result.err
    got = load_json(out)
    assert got["metadata_breakdown"] is None and got["dataset"]["source"] is None
    assert any("metadata.csv has no file_name column" in w for w in got["warnings"])
