"""Robustness: the corruption recipes against independent computations, and the audit's
accuracies against the model run by hand on the same corrupted pictures."""

from __future__ import annotations

import colorsys
import io
from pathlib import Path

import numpy as np
import pytest
from conftest import SAMPLE, load_json, run_cli
from PIL import Image
from scipy import ndimage

from reportgen.analyses import robustness as rb


@pytest.fixture(scope="module")
def picture() -> np.ndarray:
    rng = np.random.default_rng(4)
    pic = rng.integers(0, 256, size=(20, 24, 3), dtype=np.uint8)
    pic[:3, :3] = 0  # black pixels: HSV value 0
    return pic


def test_brightness_raises_the_hsv_value(picture: np.ndarray) -> None:
    x = picture / 255.0
    out = rb.brightness(x, 0.3)
    for y, xx in [(0, 0), (5, 7), (19, 23), (10, 3)]:
        h, s, v = colorsys.rgb_to_hsv(*x[y, xx])
        expected = colorsys.hsv_to_rgb(h, s, min(v + 0.3, 1.0))
        assert out[y, xx] == pytest.approx(expected, abs=1e-9)


def test_contrast_noise_blur_jpeg_pixelate(picture: np.ndarray) -> None:
    x = picture / 255.0
    mean = x.reshape(-1, 3).mean(axis=0)
    assert rb.contrast(x, 0.2) == pytest.approx(np.clip((x - mean) * 0.2 + mean, 0, 1), abs=1e-12)
    noise = np.random.default_rng(9).normal(0.0, 0.18, size=x.shape)
    assert rb.gaussian_noise(x, 0.18, np.random.default_rng(9)) == pytest.approx(np.clip(x + noise, 0, 1), abs=1e-12)
    # Defocus by FFT against a direct convolution, edges mirrored the same way.
    kernel = rb.disk_kernel(3.5, 0.5)
    assert kernel.sum() == pytest.approx(1.0)
    direct = np.stack([ndimage.convolve(x[:, :, c], kernel, mode="reflect") for c in range(3)], axis=2)
    assert rb.defocus_blur(x, 3.5, 0.5) == pytest.approx(np.clip(direct, 0, 1), abs=1e-9)
    buf = io.BytesIO()
    Image.fromarray(picture).save(buf, "JPEG", quality=15)
    assert rb.jpeg(x, 15) == pytest.approx(np.asarray(Image.open(buf)) / 255.0, abs=1e-12)
    small = Image.fromarray(picture).resize((9, 8), Image.Resampling.BOX)  # 0.4 of 24 x 20
    back = np.asarray(small.resize((24, 20), Image.Resampling.BOX)) / 255.0
    assert rb.pixelate(x, 0.4) == pytest.approx(back, abs=1e-12)


def test_corrupt_keeps_the_shape_and_the_seed(picture: np.ndarray) -> None:
    noise = next(c for c in rb.CORRUPTIONS if c.name == "gaussian noise")
    a, b, c = (rb.corrupt(picture, noise, seed) for seed in (1, 1, 2))
    assert a.dtype == np.uint8 and a.shape == picture.shape
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    grey = rb.corrupt(picture[:, :, 0], noise, 1)
    assert grey.shape == picture.shape[:2]
    assert [(k.name, k.severity) for k in rb.CORRUPTIONS][:3] == [
        ("brightness", 1),
        ("brightness", 3),
        ("brightness", 5),
    ]
    assert len(rb.CORRUPTIONS) == 18


def test_the_audit_s_accuracies_are_the_model_s_on_the_corrupted_pictures(tmp_path: Path) -> None:
    import onnxruntime as ort

    out = tmp_path / "r.html"
    result = run_cli(
        "audit", SAMPLE / "model.onnx", SAMPLE / "images", "-o", out, "-q", "--no-tsne", "--no-cache",
        "--gallery-size", "0", "--faithfulness-images", "0", "--channels", "0", "--shortcut-images", "0", "--robustness-images", "1000",
    )  # fmt: skip
    assert result.code == 0, result.err
    data = load_json(out)
    robustness = data["robustness"]
    assert robustness["images"] == data["n_evaluated"] == len(data["predictions"])  # 1000 > 274: every image
    # pixelate at severity 3 (0.4 of the side), by hand: PIL, then onnxruntime.
    session = ort.InferenceSession(str(SAMPLE / "model.onnx"), providers=["CPUExecutionProvider"])
    mean, std = np.array(data["preprocessing"]["mean"]), np.array(data["preprocessing"]["std"])
    classes = data["classes"]
    right = 0
    for p in data["predictions"]:
        img = Image.open(SAMPLE / "images" / p["file"]).convert("RGB")
        assert img.size == (64, 64)  # the model's input size: no resizing before the corruption
        img = img.resize((25, 25), Image.Resampling.BOX).resize((64, 64), Image.Resampling.BOX)
        x = ((np.asarray(img, np.float32) / 255.0 - mean) / std).transpose(2, 0, 1)[None].astype(np.float32)
        logits = session.run(None, {session.get_inputs()[0].name: x})[0][0]
        right += classes[int(np.argmax(logits))] == p["label"]
    reported = {(c["name"], c["severity"]): c["accuracy"] for c in robustness["corruptions"]}
    assert reported[("pixelate", 3)] == pytest.approx(right / len(data["predictions"]), abs=1e-6)
    clean = np.mean([p["pred"] == p["label"] for p in data["predictions"]])
    assert robustness["clean_accuracy"] == pytest.approx(clean, abs=1e-6)
    assert robustness["mean_drop"] == pytest.approx(clean - np.mean(list(reported.values())), abs=1e-5)
    html = out.read_text(encoding="utf-8")
    assert 'id="robustness"' in html and 'href="#robustness"' in html
    for flip in robustness["first_flips"]:
        assert flip["severity"] == 1 and flip["pred"] != flip["corrupted_pred"]
    # Off with 0.
    off = run_cli(
        "audit", SAMPLE / "model.onnx", SAMPLE / "images", "-o", tmp_path / "off" / "r.html", "-q", "--no-tsne",
        "--no-cache", "--gallery-size", "0", "--faithfulness-images", "0", "--channels", "0", "--shortcut-images", "0", "--robustness-images", "0",
    )  # fmt: skip
    assert off.code == 0 and load_json(tmp_path / "off" / "r.html")["robustness"] is None
