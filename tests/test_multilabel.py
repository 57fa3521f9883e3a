"""Multi-label models: the metrics against scikit-learn, the label sets of every input kind,
a final sigmoid found in ONNX and TorchScript graphs, thresholds, and the missing / extra
labels the neighbours and the model agree on."""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from conftest import NO_RERUNS, assert_no_traceback, load_json, run_cli
from PIL import Image
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    hamming_loss,
    precision_recall_fscore_support,
)

from reportgen.analyses.multilabel import (
    best_f1,
    independent_probabilities,
    label_suspects,
    multilabel_metrics,
)

COLOURS = {"red": (255, 0, 0), "green": (0, 255, 0), "blue": (0, 0, 255)}
NAMES = list(COLOURS)
# One 1x1-convolution detector per colour (pixel_models), minus 3, through a sigmoid: a
# label's logit grows with the area of its colour's patch.
WEIGHTS = [[1.0, -1.0, -1.0], [-1.0, 1.0, -1.0], [-1.0, -1.0, 1.0]]
FAST = ["-q", "--no-tsne", "--no-cache", "--device", "cpu", "--mean", "0", "--std", "1", "--size", "32", *NO_RERUNS]


# ------------------------------------------------------------------ numbers


def _random_case(seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n, k = 60, 6
    truth = (rng.random((n, k)) < 0.3).astype(np.int8)
    truth[:, 5] = 0  # a label no image carries: no AP, left out of the mAP
    truth[3] = 0  # an image with no label
    # Scores rounded to 0.1 so that many tie (AP must take tied images together).
    probs = np.round(np.clip(truth * 0.35 + rng.random((n, k)) * 0.65, 0, 1), 1)
    probs[3] = 0.0  # nothing given, nothing predicted: F1 1 for that image
    known = np.ones(n, bool)
    known[[7, 11]] = False  # labels not known: left out of every figure
    thresholds = np.array([0.5, 0.4, 0.6, 0.5, 0.5, 0.5])
    return truth, known, probs, thresholds


@pytest.mark.parametrize("seed", [0, 1])
def test_metrics_equal_scikit_learn_s(seed: int) -> None:
    truth, known, probs, thresholds = _random_case(seed)
    m = multilabel_metrics(truth, known, probs, thresholds, [f"l{i}" for i in range(6)])
    assert m is not None
    y, p = truth[known], probs[known]
    pred = (p >= thresholds).astype(int)
    prec, rec, f1, support = precision_recall_fscore_support(y, pred, average=None, zero_division=0)
    for j, s in enumerate(m.per_label):
        assert (s.precision, s.recall, s.f1, s.support) == pytest.approx((prec[j], rec[j], f1[j], support[j]))
        assert s.predicted == pred[:, j].sum()
        if y[:, j].any():
            assert s.average_precision == pytest.approx(average_precision_score(y[:, j], p[:, j]), abs=1e-12)
            # The best F1 over thresholds, by brute force over every distinct score.
            brute = max(f1_score(y[:, j], p[:, j] >= t, zero_division=0) for t in np.unique(p[:, j]))
            assert s.best_f1 == pytest.approx(brute)
            assert f1_score(y[:, j], p[:, j] >= s.best_threshold, zero_division=0) == pytest.approx(brute)
        else:
            assert s.average_precision is None and s.best_f1 is None
    with_support = y.any(axis=0)
    expected_map = average_precision_score(y[:, with_support], p[:, with_support], average="macro")
    assert m.mean_average_precision == pytest.approx(expected_map, abs=1e-12)
    assert m.micro_average_precision == pytest.approx(average_precision_score(y, p, average="micro"), abs=1e-12)
    assert m.micro_f1 == pytest.approx(f1_score(y, pred, average="micro", zero_division=0))
    assert m.macro_f1 == pytest.approx(f1[with_support].mean())
    assert m.samples_f1 == pytest.approx(f1_score(y, pred, average="samples", zero_division=1.0))
    assert m.subset_accuracy == pytest.approx(accuracy_score(y, pred))
    assert m.hamming_loss == pytest.approx(hamming_loss(y, pred))
    assert np.array_equal(m.cooccurrence.toarray(), y.T.astype(int) @ y.astype(int))
    assert m.true_counts == np.bincount(y.sum(axis=1)).tolist()
    assert m.true_cardinality == pytest.approx(y.sum(axis=1).mean())


def test_no_known_labels_give_no_metrics_and_best_f1_needs_a_positive() -> None:
    truth, _, probs, thresholds = _random_case(0)
    assert multilabel_metrics(truth, np.zeros(len(truth), bool), probs, thresholds, list("abcdef")) is None
    assert best_f1(np.zeros(4), np.array([0.1, 0.2, 0.3, 0.4])) is None


def test_outputs_are_read_by_the_function_that_ends_the_graph() -> None:
    logits = np.array([[-2.0, 0.0, 3.0]])
    p, kind, notes = independent_probabilities(logits, None)
    assert kind == "logits" and not notes
    assert np.allclose(p, 1 / (1 + np.exp(-logits)))
    sig = 1 / (1 + np.exp(-logits))
    p, kind, notes = independent_probabilities(sig, "sigmoid")
    assert kind == "sigmoid probabilities" and np.allclose(p, sig) and not notes
    p, kind, notes = independent_probabilities(np.array([[0.2, 0.3, 0.5]]), "softmax")
    assert kind == "softmax probabilities" and "at most one label" in notes[0]
    p, kind, notes = independent_probabilities(np.array([[0.2, 0.9, 0.4]]), None)
    assert kind == "probabilities" and "no final sigmoid" in notes[0]


def test_label_suspects_need_the_model_and_the_neighbours_to_agree() -> None:
    # Six images; label 0 on images 0-3, label 1 on 4-5.  Image 1 misses label 1 that its
    # neighbours carry and the model sees (missing); image 4 carries label 0 that no
    # neighbour carries and the model does not see (extra).
    truth = np.array([[1, 0], [1, 0], [1, 1], [1, 1], [1, 1], [0, 1]], np.int8)
    probs = np.array([[0.9, 0.1], [0.9, 0.8], [0.9, 0.9], [0.9, 0.9], [0.1, 0.9], [0.2, 0.9]])
    neighbours = np.array([[1, 2], [2, 3], [3, 1], [2, 1], [5, 5], [4, 4]])
    known = np.ones(6, bool)
    found = label_suspects(truth, known, probs, np.array([0.5, 0.5]), neighbours)
    got = [(s.row, s.label, s.kind) for s in found.suspects]
    assert (1, 1, "missing") in got
    assert (4, 0, "extra") in got
    assert found.missing == sum(k == "missing" for _, _, k in got) and found.checked == 6
    missing = next(s for s in found.suspects if s.kind == "missing")
    assert missing.score == pytest.approx(min(0.8, 1.0))
    # Image 0: the model says label 1 is absent, so no flag even if neighbours disagreed.
    assert all(s.row != 0 for s in found.suspects)
    # Unknown neighbours are not counted: image 1 with only unknown neighbours is not checked.
    known2 = known.copy()
    known2[[2, 3]] = False
    again = label_suspects(truth, known2, probs, np.array([0.5, 0.5]), neighbours)
    assert all(s.row != 1 for s in again.suspects)


# ------------------------------------------------------------------ audits


def _module(sigmoid: bool = True) -> Any:
    import torch
    from pixel_models import pixel_detectors

    detectors = pixel_detectors(WEIGHTS, [-0.2, -0.2, -0.2])

    class Tagger(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.detectors = detectors

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            z = self.detectors(x) - 3.0
            return torch.sigmoid(z) if sigmoid else z

    return Tagger().eval()


@pytest.fixture(scope="module")
def tagged(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """40 seeded pictures with patches of red, green and blue, their label sets, a
    sigmoid-ended tagger as ONNX and TorchScript, and a logits-ended one as ONNX."""
    import torch

    root = tmp_path_factory.mktemp("tagged")
    data = root / "data"
    (data / "img").mkdir(parents=True)
    rng = np.random.default_rng(3)
    sets: dict[str, list[str]] = {}
    corners = {"red": (1, 1), "green": (1, 17), "blue": (17, 9)}  # each colour in its own part of the picture
    for i in range(40):
        a = np.full((32, 32, 3), 128, np.uint8)
        labels = []
        for name, colour in COLOURS.items():
            if rng.random() < 0.45:
                side = int(rng.integers(2, 14))
                y, x = corners[name]
                a[y : y + side, x : x + side] = colour
                labels.append(name)
        if i == 5:
            y, x = corners["blue"]
            a[y : y + 12, x : x + 12] = COLOURS["blue"]  # a large blue patch the labels leave out
            labels = [n for n in labels if n != "blue"]
        if i == 6:
            labels = sorted({*labels, "green"})  # a green label on an image with no green
            a[np.all(a == COLOURS["green"], axis=2)] = 128
        file = f"img/{i:02d}.png"
        Image.fromarray(a).save(data / file)
        sets[file] = labels
    models = {}
    for name, sigmoid in (("sigmoid", True), ("logits", False)):
        module = _module(sigmoid)
        path = root / f"{name}.onnx"
        torch.onnx.export(
            module, (torch.zeros(1, 3, 32, 32),), str(path), input_names=["x"], output_names=["y"],
            dynamic_axes={"x": {0: "n"}, "y": {0: "n"}}, dynamo=False,
        )  # fmt: skip
        models[name] = path
    models["torchscript"] = root / "sigmoid.ts"
    torch.jit.trace(_module(True), torch.zeros(1, 3, 32, 32)).save(str(models["torchscript"]))
    (root / "classes.txt").write_text("\n".join(NAMES) + "\n")
    # The model's own probabilities, computed here on the decoded pictures.
    files = sorted(sets)
    x = np.stack([np.asarray(Image.open(data / f).convert("RGB"), np.float32) / 255.0 for f in files])
    with torch.no_grad():
        probs = _module(True)(torch.from_numpy(x).permute(0, 3, 1, 2)).numpy()
    with open(data / "manifest.jsonl", "w") as out:
        for f in files:
            out.write(json.dumps({"path": f, "labels": sets[f], "site": f"s{int(f[4:6]) % 3}"}) + "\n")
    return {"root": root, "data": data, "models": models, "classes": root / "classes.txt", "sets": sets,
            "files": files, "probs": probs}  # fmt: skip


def _audit(model: Path, data: Path, out: Path, *extra: str | Path) -> dict[str, Any]:
    result = run_cli("audit", model, data, "-o", out, *FAST, *extra)
    assert_no_traceback(result)
    assert result.code == 0, result.err
    return load_json(out)


def _truth(tagged: dict[str, Any]) -> np.ndarray:
    return np.array([[name in tagged["sets"][f] for name in NAMES] for f in tagged["files"]], int)


def test_a_multi_label_manifest_gets_scikit_learn_s_figures_and_per_label_maps(
    tagged: dict[str, Any], tmp_path: Path
) -> None:
    out = tmp_path / "r.html"
    got = _audit(
        tagged["models"]["sigmoid"], tagged["data"] / "manifest.jsonl", out, "--labels", tagged["classes"],
        "--gallery-size", "2",
    )  # fmt: skip
    assert got["dataset"]["multi_label"] is True and got["model"]["output_kind"] == "sigmoid probabilities"
    assert got["cam"]["explains"] == "logits before sigmoid" and got["cam"]["method"] == "gradcam"
    y, p = _truth(tagged), tagged["probs"]
    ml = got["multilabel"]
    assert ml["n_evaluated"] == 40
    for j, s in enumerate(ml["per_label"]):
        assert s["label"] == NAMES[j]
        assert s["average_precision"] == pytest.approx(average_precision_score(y[:, j], p[:, j]), abs=1e-5)
        expected = precision_recall_fscore_support(y[:, j], p[:, j] >= 0.5, average="binary", zero_division=0)
        assert (s["precision"], s["recall"], s["f1"]) == pytest.approx(expected[:3], abs=1e-5)
        assert s["support"] == y[:, j].sum()
    assert ml["mean_average_precision"] == pytest.approx(average_precision_score(y, p, average="macro"), abs=1e-5)
    assert got["mean_average_precision"] == ml["mean_average_precision"]
    assert ml["micro_f1"] == pytest.approx(f1_score(y, p >= 0.5, average="micro"), abs=1e-5)
    assert got["accuracy"] is None and got["per_class"] is None
    co = got["label_cooccurrence"]
    assert co["cooccurrence"] == (y.T @ y).tolist()
    assert co["true_counts"] == np.bincount(y.sum(axis=1)).tolist()
    given = (p >= 0.5).astype(int)
    assert co["predicted_cooccurrence"] == (given.T @ given).tolist()
    # The parts that read one class per image are not made; the metadata breakdown
    # grades exact label sets.
    assert "class_balance" not in got and "suspected_mislabels" not in got
    exact = np.all((p >= 0.5) == y.astype(bool), axis=1)
    (site,) = got["metadata_breakdown"]
    for group in site["groups"]:
        members = [i for i, f in enumerate(tagged["files"]) if f"s{int(f[4:6]) % 3}" == group["value"]]
        assert group["n"] == len(members)
        assert group["accuracy"] == pytest.approx(exact[members].mean(), abs=1e-6)
    # The planted label errors, found by the neighbours and the model together.
    suspects = {(s["file"], s["label"], s["kind"]) for s in got["label_suspects"]["suspects"]}
    assert ("img/05.png", "blue", "missing") in suspects
    assert ("img/06.png", "green", "extra") in suspects
    # Galleries per label: max among the images that carry it, wrong among those that do not.
    for j, name in enumerate(NAMES):
        gallery = got["galleries"][name]
        assert all(name in tagged["sets"][t["file"]] for t in gallery["max"])
        assert all(name not in tagged["sets"][t["file"]] for t in gallery["wrong"])
        best = max(
            (f for f in tagged["files"] if name in tagged["sets"][f]), key=lambda f: p[tagged["files"].index(f), j]
        )
        assert p[tagged["files"].index(gallery["max"][0]["file"]), j] == pytest.approx(
            p[tagged["files"].index(best), j], abs=1e-6
        )
    row = next(r for r in got["predictions"] if r["file"] == "img/05.png")
    assert set(row["labels"]) == set(tagged["sets"]["img/05.png"])
    assert "blue" in row["predicted"]
    page = out.read_text()
    for heading in ("Per-label metrics", "Label co-occurrence", "Missing and extra labels"):
        assert heading in page


def test_every_input_kind_and_model_format_gives_the_same_label_figures(tagged: dict[str, Any], tmp_path: Path) -> None:
    """A CSV of |-separated labels, a long table (one row per label), TorchScript, and a
    model without a final sigmoid (its logits go through one) all give the JSONL's figures."""
    base = _audit(
        tagged["models"]["sigmoid"], tagged["data"] / "manifest.jsonl", tmp_path / "a.html",
        "--labels", tagged["classes"],
    )["multilabel"]  # fmt: skip
    data = tagged["data"]
    with open(data / "wide.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["file", "tags"])
        for file in tagged["files"]:
            w.writerow([file, "|".join(tagged["sets"][file]) if tagged["sets"][file] else "[]"])
    with open(data / "long.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["path", "label"])
        for file in tagged["files"]:
            for name in tagged["sets"][file] or ["[]"]:
                w.writerow([file, name])
    runs = {
        "csv": (tagged["models"]["sigmoid"], data / "wide.csv", ["--multi-label", "--label-column", "tags"]),
        "long": (tagged["models"]["sigmoid"], data / "long.csv", ["--multi-label"]),
        "torchscript": (tagged["models"]["torchscript"], data / "manifest.jsonl", []),
        "logits": (tagged["models"]["logits"], data / "manifest.jsonl", []),
    }
    for name, (model, manifest, extra) in runs.items():
        got = _audit(model, manifest, tmp_path / f"{name}.html", "--labels", tagged["classes"], *extra)
        expected_kind = "logits" if name == "logits" else "sigmoid probabilities"
        assert got["model"]["output_kind"] == expected_kind, name
        for key in ("mean_average_precision", "micro_f1", "samples_f1", "subset_accuracy"):
            assert got["multilabel"][key] == pytest.approx(base[key], abs=1e-5), (name, key)
        assert [s["support"] for s in got["multilabel"]["per_label"]] == [s["support"] for s in base["per_label"]]


def test_thresholds_decide_the_predicted_labels(tagged: dict[str, Any], tmp_path: Path) -> None:
    thresholds = tmp_path / "t.csv"
    thresholds.write_text("label,threshold\nred,0.05\ncyan,0.3\n")
    got = _audit(
        tagged["models"]["sigmoid"], tagged["data"] / "manifest.jsonl", tmp_path / "r.html",
        "--labels", tagged["classes"], "--thresholds", thresholds, "--threshold", "0.9",
    )  # fmt: skip
    p = tagged["probs"]
    per = {s["label"]: s for s in got["multilabel"]["per_label"]}
    assert per["red"]["threshold"] == 0.05 and per["green"]["threshold"] == 0.9
    assert per["red"]["predicted"] == int((p[:, 0] >= 0.05).sum())
    assert per["blue"]["predicted"] == int((p[:, 2] >= 0.9).sum())
    assert any("cyan" in w for w in got["warnings"])
    thresholds.write_text("red,1.5\n")
    bad = run_cli(
        "audit", tagged["models"]["sigmoid"], tagged["data"] / "manifest.jsonl", "-o", tmp_path / "b.html",
        *FAST, "--labels", tagged["classes"], "--thresholds", thresholds,
    )  # fmt: skip
    assert bad.code != 0 and "between 0 and 1" in bad.err
    assert_no_traceback(bad)


def test_a_saved_dataset_with_a_list_of_class_labels_is_multi_label(tagged: dict[str, Any], tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    files = tagged["files"]
    features = datasets.Features(
        {"image": datasets.Image(), "labels": datasets.Sequence(datasets.ClassLabel(names=NAMES))}
    )
    ds = datasets.Dataset.from_dict(
        {
            "image": [str(tagged["data"] / f) for f in files],
            "labels": [[NAMES.index(n) for n in tagged["sets"][f]] for f in files],
        },
        features=features,
    )
    ds.save_to_disk(str(tmp_path / "saved"))
    got = _audit(tagged["models"]["sigmoid"], tmp_path / "saved", tmp_path / "r.html", "--labels", tagged["classes"])
    assert got["dataset"]["multi_label"] is True
    y, p = _truth(tagged), tagged["probs"]
    assert got["multilabel"]["mean_average_precision"] == pytest.approx(
        average_precision_score(y, p, average="macro"), abs=1e-5
    )


def test_thresholds_without_several_labels_are_refused(tmp_path: Path) -> None:
    from conftest import SAMPLE

    result = run_cli("audit", SAMPLE / "model.onnx", SAMPLE / "images", "-o", tmp_path / "r.html", "--threshold", "0.3")
    assert result.code == 2 and "multi-label run" in result.err
    assert_no_traceback(result)


def test_chunked_counts_equal_a_direct_computation(monkeypatch: pytest.MonkeyPatch) -> None:
    """Co-occurrence summed over row chunks, and suspects read in chunks of 4,096 rows,
    equal the whole-matrix computation (5,000 rows, every label, unknown neighbours)."""
    from reportgen.analyses import multilabel
    from reportgen.analyses.multilabel import MAX_LABEL_SUSPECTS, cooccurrence

    rng = np.random.default_rng(5)
    n, k = 5000, 4
    truth = (rng.random((n, k)) < 0.3).astype(np.int8)
    assert np.array_equal(cooccurrence(truth, chunk=7).toarray(), truth.T.astype(int) @ truth.astype(int))
    # Past DENSE_LABELS the sparse route: the same counts.
    monkeypatch.setattr(multilabel, "DENSE_LABELS", 3)
    assert np.array_equal(cooccurrence(truth, chunk=7).toarray(), truth.T.astype(int) @ truth.astype(int))
    probs = rng.random((n, k))
    known = rng.random(n) < 0.9
    neighbours = rng.integers(-1, n, (n, 5))
    thresholds = np.full(k, 0.5)
    found = label_suspects(truth, known, probs, thresholds, neighbours)
    expected = []
    for i in range(n):
        nb = [j for j in neighbours[i] if j >= 0 and known[j]]
        if not known[i] or not nb:
            continue
        share = truth[nb].mean(axis=0)
        for j in range(k):
            if truth[i, j] == 0 and probs[i, j] >= 0.5 and share[j] >= 0.5:
                expected.append((min(probs[i, j], share[j]), i, j, "missing"))
            if truth[i, j] == 1 and probs[i, j] < 0.5 and share[j] <= 0.1:
                expected.append((min(1 - probs[i, j], 1 - share[j]), i, j, "extra"))
    assert found.missing == sum(e[3] == "missing" for e in expected)
    assert found.extra == sum(e[3] == "extra" for e in expected)
    expected.sort(key=lambda e: (-e[0], e[1], e[2]))
    got = [(s.row, s.label, s.kind) for s in found.suspects]
    assert got == [(i, j, kind) for _, i, j, kind in expected[:MAX_LABEL_SUSPECTS]]


def test_compare_reads_label_sets_from_the_json_and_from_the_csv(
    tagged: dict[str, Any], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two audits of the tagger at thresholds 0.5 and 0.2, of the same pictures listed two
    ways (JSON Lines; a CSV of |-separated labels, as if large: its predictions in the
    predictions CSV): exact-set accuracy, per-label F1 and the changed sets equal a direct
    computation, and the flips' pictures are found; a multi-label audit against a
    single-label one is refused."""
    from reportgen import cli
    from reportgen.sections import predictions

    manifest, classes = tagged["data"] / "manifest.jsonl", tagged["classes"]
    old = tmp_path / "old" / "r.html"
    _audit(tagged["models"]["sigmoid"], manifest, old, "--labels", classes)
    monkeypatch.setattr(predictions, "PREDICTIONS_INLINE", 10)
    new = tmp_path / "new" / "r.html"
    listed = tagged["data"] / "listed.csv"
    listed.write_text("path,label\n" + "".join(f"{f},{'|'.join(tagged['sets'][f]) or '[]'}\n" for f in tagged["files"]))
    args = ["audit", str(tagged["models"]["sigmoid"]), str(listed), "-o", str(new), *FAST, "--labels", str(classes)]
    assert cli.main([*args, "--multi-label", "--threshold", "0.2"]) == 0
    assert load_json(new)["predictions"] is None
    result = run_cli("compare", old, new, "-o", tmp_path / "c.html")
    assert result.code == 0, result.err
    got = load_json(tmp_path / "c.html")
    assert not any("moved" in w for w in got["warnings"])  # one folder, whatever lists its pictures
    assert "is not here" not in result.err and 'data-thumb="a:img/' in (tmp_path / "c.html").read_text()
    y, p = _truth(tagged).astype(bool), tagged["probs"]
    before, after = p >= 0.5, p >= 0.2
    assert got["multi_label"] is True
    assert got["accuracy"]["old"]["value"] == pytest.approx(np.mean(np.all(before == y, axis=1)), abs=1e-6)
    assert got["accuracy"]["new"]["value"] == pytest.approx(np.mean(np.all(after == y, axis=1)), abs=1e-6)
    assert got["changed_predictions"] == int(np.any(before != after, axis=1).sum()) > 0
    for d in got["per_class"]:
        j = NAMES.index(d["class"])
        assert d["f1"]["old"] == pytest.approx(f1_score(y[:, j], before[:, j], zero_division=0), abs=1e-6)
        assert d["f1"]["new"] == pytest.approx(f1_score(y[:, j], after[:, j], zero_division=0), abs=1e-6)
    flips = got["flips"]
    assert sum(len(v) for v in flips.values()) == got["changed_predictions"]
    right_before = {f for f, ok in zip(tagged["files"], np.all(before == y, axis=1), strict=True) if ok}
    assert all(f["file"] in right_before for f in flips["regressions"])
    assert got["mean_average_precision"]["delta"] == pytest.approx(0.0, abs=1e-9)
    assert {m["column"] for m in got["metadata"]} == {"site"}
    single = tmp_path / "single" / "r.html"
    (tagged["data"] / "paths.csv").write_text("path\n" + "".join(f"{f}\n" for f in tagged["files"]))
    _audit(tagged["models"]["sigmoid"], tagged["data"] / "paths.csv", single)  # one class per image, unlabelled
    refused = run_cli("compare", old, single, "-o", tmp_path / "d.html")
    assert refused.code == 2 and "multi-label and the other is not" in refused.err
    assert_no_traceback(refused)


def test_a_hostile_multi_label_audit_json_is_refused_in_one_line(tmp_path: Path) -> None:
    """Label lists that hold objects, unknown names or too many entries: refused by
    compare in one line, never a traceback."""
    from reportgen.compare import load_audit
    from reportgen.errors import UserError

    base = {
        "schema_version": 2,
        "model": {"path": "m.onnx", "format": "onnx", "sha256": "0" * 64},
        "dataset": {"root": "/data", "n_images": 1, "multi_label": True},
        "classes": ["a", "b"],
        "skipped": [],
        "preprocessing": {},
    }
    for bad in ([{}], ["c"], ["a", "b", "a"], "a"):
        data = {**base, "predictions": [{"file": "x.png", "label": None, "pred": "a", "score": 0.5, "labels": None,
                                         "predicted": bad}]}  # fmt: skip
        path = tmp_path / "bad.json"
        path.write_text(json.dumps(data))
        with pytest.raises(UserError, match="predicted"):
            load_audit(path)
