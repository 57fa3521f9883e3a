"""Spatial layers pooled to a grid of means: the rule, both runtimes against the raw maps,
and the case the grid exists for (classes told apart by where things are)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from architectures import FAMILIES, SIZE, build, export
from conftest import NO_RERUNS, assert_no_traceback, load_json, run_cli
from onnx_models import tiny_cnn
from PIL import Image

from reportgen.models import load_model
from reportgen.models.base import LayerInfo, cell_weights, channel_means, downsample_pixels, pool_cells
from reportgen.models.torch_adapter import _pool


def _grid_means(maps: np.ndarray, row_edges: list[int], col_edges: list[int]) -> np.ndarray:
    """(N, C, H, W) -> (N, C * cells), channel-major, by explicit loops over the cells."""
    n, c = maps.shape[:2]
    out = np.zeros((n, c, len(row_edges) - 1, len(col_edges) - 1), np.float64)
    for i in range(len(row_edges) - 1):
        for j in range(len(col_edges) - 1):
            block = maps[:, :, row_edges[i] : row_edges[i + 1], col_edges[j] : col_edges[j + 1]]
            out[:, :, i, j] = block.astype(np.float64).mean(axis=(2, 3))
    return out.reshape(n, -1)


def _edges(size: int, cells: int) -> list[int]:
    """The cut rule written out: cell i covers [floor(i * size / cells), floor((i+1) * size / cells))."""
    return [i * size // cells for i in range(cells + 1)]


def test_cells_follow_the_budget_and_the_resolution() -> None:
    def cells(shape: tuple[int, ...], layout: str, budget: int = 1024, **kw: object) -> tuple[int, int] | None:
        return pool_cells(LayerInfo("t", shape, layout=layout, **kw), budget)  # type: ignore[arg-type]

    assert cells((16, 32, 32), "chw") == (8, 8)  # capped at 8x8
    assert cells((64, 56, 56), "chw") == (4, 4)  # 64 x 16 = 1024
    assert cells((128, 28, 28), "chw") == (2, 2)  # 128 x 4 = 512; 3x3 would be 1152
    assert cells((512, 7, 7), "chw") is None  # one cell: the global mean
    assert cells((16, 3, 40), "chw") == (3, 8)  # never finer than the map
    assert cells((7, 7, 96), "hwc") == (3, 3)
    assert cells((50, 96), "tokens", grid=(7, 7), prefix=1) is None  # the class token
    assert cells((49, 96), "tokens", grid=(7, 7)) == (3, 3)
    assert cells((16, 32, 32), "chw", budget=0) is None
    assert cells((64,), "vector") is None
    for budget in (64, 300, 1024, 4096):
        for c in (1, 3, 16, 40, 64, 100):
            got = cells((c, 30, 30), "chw", budget)
            if got is not None:
                assert c * got[0] * got[1] <= budget


def test_weights_and_channel_means_against_loops() -> None:
    rng = np.random.default_rng(0)
    maps = rng.standard_normal((4, 3, 7, 5)).astype(np.float32)
    expected = _grid_means(maps, [0, 2, 4, 7], [0, 2, 5])
    got = maps.reshape(4, 3, 35) @ cell_weights((7, 5), (3, 2))
    np.testing.assert_allclose(got.reshape(4, -1), expected, rtol=1e-5, atol=1e-6)
    layer = LayerInfo("t", (3, 7, 5), layout="chw", cells=(3, 2))
    assert layer.dim == 18 and layer.channels == 3
    np.testing.assert_allclose(channel_means(got.reshape(4, -1), layer), maps.mean(axis=(2, 3)), atol=1e-6)


@pytest.mark.parametrize("shape", [(3, 3, 32, 32), (2, 3, 224, 160), (2, 1, 20, 20), (2, 3, 30, 47), (2, 3, 8, 8)])
def test_pixel_layer_is_the_mean_of_each_cell(shape: tuple[int, int, int, int]) -> None:
    x = np.random.default_rng(0).random(shape, dtype=np.float32)
    n, c, h, w = shape
    gh, gw = min(16, h), min(16, w)
    rows, cols = np.linspace(0, h, gh + 1).astype(int), np.linspace(0, w, gw + 1).astype(int)
    expected = np.empty((n, c, gh, gw))
    for i in range(gh):
        for j in range(gw):
            expected[:, :, i, j] = (
                x[:, :, rows[i] : rows[i + 1], cols[j] : cols[j + 1]].astype(np.float64).mean(axis=(2, 3))
            )
    got = downsample_pixels(x)
    assert got.dtype == np.float32 and got.shape == (n, c * gh * gw)
    np.testing.assert_allclose(got, expected.reshape(n, -1), rtol=1e-6)
    nhwc = np.ascontiguousarray(x.transpose(0, 2, 3, 1))
    np.testing.assert_array_equal(downsample_pixels(nhwc, channels_last=True), got)


@pytest.mark.parametrize("layout", ["chw", "hwc", "tokens"])
def test_torch_pooling_of_every_layout(layout: str) -> None:
    rng = np.random.default_rng(1)
    maps = rng.standard_normal((2, 6, 9, 10)).astype(np.float32)  # the same values, laid out three ways
    if layout == "chw":
        t, layer = maps, LayerInfo("t", (6, 9, 10), layout="chw")
    elif layout == "hwc":
        t, layer = maps.transpose(0, 2, 3, 1), LayerInfo("t", (9, 10, 6), layout="hwc")
    else:
        t = maps.transpose(0, 2, 3, 1).reshape(2, 90, 6)
        layer = LayerInfo("t", (90, 6), layout="tokens", grid=(9, 10))
    got = _pool(torch.from_numpy(np.ascontiguousarray(t)), layer, (4, 3)).numpy()
    np.testing.assert_allclose(got, _grid_means(maps, _edges(9, 4), _edges(10, 3)), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("side", [30, 32])
def test_onnx_grid_pooling_equals_the_raw_maps(side: int, tmp_path: Path) -> None:
    # 30x30: the first ReLU's 8x8 cells have uneven sides (3 and 4 pixels), pooled by a
    # MatMul; 32x32: equal cells, pooled by AveragePool.
    adapter = load_model(tiny_cnn(tmp_path / "m.onnx", size=(side, side)), device="cpu")
    adapter.prepare((side, side))
    info = {layer.name: layer for layer in adapter.layers()}
    names = ["relu1/out", "relu2/out"]
    cells = {name: pool_cells(info[name]) for name in names}
    assert cells == {"relu1/out": (8, 8), "relu2/out": (8, 8)}
    x = np.random.default_rng(2).standard_normal((3, 3, side, side)).astype(np.float32)
    _, feats = adapter.extract(x, names, cells)
    raw = adapter.tensors(x, names)
    for name, maps in zip(names, raw, strict=True):
        h, w = maps.shape[2:]
        expected = _grid_means(maps, _edges(h, 8), _edges(w, 8))
        np.testing.assert_allclose(feats[name], expected, rtol=1e-4, atol=1e-5)
    # Without cells, the global mean as before.
    _, plain = adapter.extract(x, names)
    np.testing.assert_allclose(plain["relu1/out"], raw[0].mean(axis=(2, 3)), rtol=1e-4, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("fmt", ["onnx", "torch.export"])
def test_channels_last_maps_pooled_like_their_channels_first_view(fmt: str, tmp_path: Path) -> None:
    family = next(f for f in FAMILIES if f.name == "swin")
    adapter = load_model(export(build(family), fmt, tmp_path), device="cpu")
    adapter.prepare((SIZE, SIZE))
    layer = next(layer for layer in adapter.layers() if layer.layout == "hwc" and pool_cells(layer) is not None)
    cells = pool_cells(layer)
    assert cells is not None
    x = np.random.default_rng(3).standard_normal((2, 3, SIZE, SIZE)).astype(np.float32)
    _, feats = adapter.extract(x, [layer.name], {layer.name: cells})
    maps, _ = adapter.split(layer.name).body(x)  # (N, C, H, W), whatever the layout
    h, w = maps.shape[2:]
    expected = _grid_means(maps, _edges(h, cells[0]), _edges(w, cells[1]))
    np.testing.assert_allclose(feats[layer.name], expected, rtol=1e-4, atol=1e-4)


def _position_classes(root: Path, per_class: int = 30) -> None:
    """Four classes that differ only in where a bright square sits (one quadrant each),
    on noise: a global average of a convolution's output is blind to that by design."""
    rng = np.random.default_rng(0)
    corners = {"nw": (4, 4), "ne": (4, 20), "sw": (20, 4), "se": (20, 20)}
    for name, (top, left) in corners.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            img = rng.integers(0, 90, (32, 32, 3)).astype(np.uint8)
            dy, dx = rng.integers(-2, 3, 2)
            img[top + dy : top + dy + 8, left + dx : left + dx + 8] = 230
            Image.fromarray(img).save(root / name / f"{i:03d}.png")


@pytest.mark.slow
def test_a_spatial_layer_keeps_the_layout_the_pixels_have(tmp_path: Path) -> None:
    images = tmp_path / "images"
    _position_classes(images)
    model = tiny_cnn(tmp_path / "m.onnx", size=(32, 32))
    out = tmp_path / "out" / "report.html"
    fast = ["--no-tsne", *NO_RERUNS, "--layers"]
    layers = "input,relu1/out,relu2/out,logits"
    first = run_cli("audit", str(model), str(images), "-o", str(out), "-q", *fast, layers)
    assert_no_traceback(first)
    grid = {layer["name"]: layer for layer in load_json(out)["layers"]}
    second = run_cli("audit", str(model), str(images), "-o", str(out), "-q", "--pool-values", "0", *fast, layers)
    assert_no_traceback(second)
    report = load_json(out)
    assert report["features_from_cache"] is False  # another pooling is another extraction
    mean = {layer["name"]: layer for layer in report["layers"]}

    pixels = grid["input"]["knn_accuracy"]
    assert pixels >= 0.9
    for name in ("relu1/out", "relu2/out"):
        assert grid[name]["dim"] == (8 if name == "relu1/out" else 16) * 64
        assert grid[name]["pooling"] == "8x8 grid of map means"
        assert grid[name]["knn_accuracy"] >= pixels - 0.1
        # The classic global mean is near chance (0.25) here; the report says so beside
        # the grid's figure, computed from the cells, equal to a run that averages in-graph.
        assert mean[name]["knn_accuracy"] <= 0.5
        assert mean[name]["pooling"] == "spatial mean"
        assert abs(grid[name]["knn_accuracy_global_mean"] - mean[name]["knn_accuracy"]) <= 1 / 120
