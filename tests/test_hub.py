"""Models from the hubs: timm and Hugging Face transformers, exported as their users export
them (ONNX by both of torch's exporters, named as optimum names them; a TorchScript trace;
``torch.export``).

Small seeded members of each family, built here (no download): the default layers are
few and of known layout, one module path names the same layer on every format, and the
default map equals the ``grad-cam`` package's at its recommended target (with its
reshape transform).  Then what the hub files beside a model say, a model that returns
``ImageClassifierOutput``, and a graph whose thread reportgen loses.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import NO_RERUNS, assert_no_traceback, load_json, make_image, run_cli
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from reportgen.analyses.cam import compute_cam
from reportgen.models import INPUT_LAYER, LOGITS_LAYER, default_cam_layer, default_layers, graph_gap, load_model

timm = pytest.importorskip("timm")
transformers = pytest.importorskip("transformers")

FORMATS = ["onnx", "onnx-dynamo", "torchscript", "torch.export"]
SUFFIX = {"onnx": ".onnx", "onnx-dynamo": ".onnx", "torchscript": ".ts", "torch.export": ".pt2"}


def _tokens(prefix: int, side: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """grad-cam's reshape transform for a ViT: prefix tokens dropped, patches on their grid."""

    def transform(t: torch.Tensor) -> torch.Tensor:
        return t[:, prefix:, :].reshape(t.shape[0], side, side, t.shape[2]).permute(0, 3, 1, 2)

    return transform


class _Logits(torch.nn.Module):
    """A transformers classifier as grad-cam calls it: a tensor of logits out."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x).logits


def _hf(model: str, config: str, **options: object) -> Callable[[], torch.nn.Module]:
    """A small transformers classifier of three labels, built from its config class."""
    return lambda: getattr(transformers, model)(getattr(transformers, config)(num_labels=3, **options))


_HF_VIT = {"image_size": 64, "hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2}
_HF_STAGES = {"hidden_sizes": [16, 32, 48, 64], "depths": [1, 1, 1, 1]}


@dataclass
class Hub:
    name: str
    build: Callable[[], torch.nn.Module]
    size: int
    target: Callable[[torch.nn.Module], torch.nn.Module]  # grad-cam's recommended target
    reshape: Callable[[torch.Tensor], torch.Tensor] | None = None
    formats: tuple[str, ...] = tuple(FORMATS)  # the formats the model exports to
    # reportgen cannot follow the graph on any format (LeViT): it must say so everywhere,
    # and pick no default map.
    lost: bool = False


FAMILIES = [
    Hub(
        "deit-distilled",
        lambda: timm.create_model("deit_tiny_distilled_patch16_224", img_size=64, depth=3, num_classes=3),
        64,
        lambda m: m.blocks[-1].norm1,
        _tokens(2, 4),
    ),
    Hub(
        "dinov2-registers",
        lambda: timm.create_model(
            "vit_small_patch14_reg4_dinov2", img_size=56, depth=3, embed_dim=96, num_heads=3, num_classes=3
        ),
        56,
        lambda m: m.blocks[-1].norm1,
        _tokens(5, 4),
    ),
    Hub(
        "convnext",
        lambda: timm.create_model("convnext_atto", num_classes=3),
        64,
        lambda m: m.stages[-1],
    ),
    Hub(
        "swin",
        lambda: timm.create_model(
            "swin_tiny_patch4_window7_224", depths=(1, 1, 1, 1), embed_dim=32, num_heads=(1, 2, 4, 8), num_classes=3
        ),
        224,
        lambda m: m.norm,
        lambda t: t.permute(0, 3, 1, 2),
    ),
    Hub(
        "convnext-v2",
        lambda: timm.create_model("convnextv2_atto", num_classes=3),
        64,
        lambda m: m.stages[-1],
    ),
    Hub("efficientnet", lambda: timm.create_model("efficientnet_b0", num_classes=3), 64, lambda m: m.bn2),
    # RegNet strides in each stage's first block's second convolution: the stage ends
    # before that block, not at its first 1x1 convolution (still at the old resolution).
    Hub("regnet", lambda: timm.create_model("regnetx_002", num_classes=3), 64, lambda m: m.s4),
    Hub("resnet-d", lambda: timm.create_model("resnet18d", num_classes=3), 64, lambda m: m.layer4[-1]),
    Hub(
        "swin-v2",
        lambda: timm.create_model(
            "swinv2_cr_tiny_ns_224", depths=(1, 1, 1, 1), embed_dim=32, num_heads=(1, 2, 4, 8), num_classes=3
        ),
        224,
        lambda m: m.stages[-1],
    ),
    # MaxViT and CoAtNet: the last spatial tensor is the final norm after the stages.
    Hub(
        "maxvit",
        lambda: timm.create_model("maxvit_rmlp_pico_rw_256", img_size=64, num_classes=3),
        64,
        lambda m: m.norm,
        # torch's dynamo exporter fails on it; its TorchScript reads the same (checked here
        # once: 230 s of conversion on a 2-core machine, too much for every CI run).
        formats=("onnx", "torch.export"),
    ),
    Hub(
        "coatnet",
        lambda: timm.create_model("coatnet_nano_rw_224", img_size=64, num_classes=3),
        64,
        lambda m: m.norm,
    ),
    Hub("mobilevit", lambda: timm.create_model("mobilevit_xxs", num_classes=3), 64, lambda m: m.final_conv),
    # MobileNetV3: the flatten before the classifier is a view that torch's decomposition
    # records inside the classifier.  reportgen stamps each node's module before it
    # decomposes a torch program, so torch.export names it ``flatten`` as TorchScript and
    # ONNX do; the dynamo exporter writes the wrong scope into the ONNX file itself
    # (``classifier``), so that format is left out here (see the README's table).
    Hub(
        "mobilenetv3",
        lambda: timm.create_model("mobilenetv3_small_050", num_classes=3),
        64,
        lambda m: m.blocks[-1],
        formats=("onnx", "torchscript", "torch.export"),
    ),
    # BEiT: the dynamo exporter fails on it with the parameters trainable, not frozen
    # (see _export); torch's TorchScript-based ONNX exporter fails on EVA-02's attention.
    Hub(
        "beit",
        lambda: timm.create_model(
            "beit_base_patch16_224", img_size=64, depth=2, embed_dim=64, num_heads=2, num_classes=3
        ),
        64,
        lambda m: m.blocks[-1].norm1,
        _tokens(1, 4),
    ),
    # EVA-02's SwiGLU MLP splits its first projection in two (ONNX: one Split of two
    # outputs): followed, so the MLP is not taken for an attention.
    Hub(
        "eva02",
        lambda: timm.create_model("eva02_tiny_patch14_224", img_size=56, depth=2, num_classes=3),
        56,
        lambda m: m.blocks[-1].norm1,
        _tokens(1, 4),
        formats=("onnx-dynamo", "torchscript", "torch.export"),
    ),
    # MLP-Mixer: tokens without a class token, mixed by an MLP across them (the token
    # mixing counts as its attention: the target is the last block's norm1, as in a ViT).
    Hub(
        "mixer",
        lambda: timm.models.mlp_mixer.MlpMixer(img_size=64, patch_size=16, num_blocks=2, embed_dim=64, num_classes=3),
        64,
        lambda m: m.blocks[-1].norm1,
        _tokens(0, 4),
    ),
    Hub("fastvit", lambda: timm.create_model("fastvit_t8", num_classes=3), 64, lambda m: m.final_conv),
    # LeViT: the tokens after its first attention downsampling come out of an attention
    # product (no residual stream carries them): reportgen says it lost the thread there.
    Hub(
        "levit",
        lambda: timm.create_model("levit_128s", img_size=64, num_classes=3),
        64,
        lambda m: m.stages[0],  # no reference: the grad-cam package needs a reshape there too
        lost=True,
        formats=("onnx", "torch.export"),
    ),
    Hub(
        "hf-vit",
        _hf("ViTForImageClassification", "ViTConfig", intermediate_size=128, patch_size=16, **_HF_VIT),
        64,
        lambda m: m.model.vit.layers[-1].layernorm_before,
        _tokens(1, 4),
    ),
    Hub(
        "hf-deit",
        _hf("DeiTForImageClassification", "DeiTConfig", intermediate_size=128, **_HF_VIT),
        64,
        lambda m: m.model.deit.layers[-1].layernorm_before,
        _tokens(2, 4),
    ),
    Hub(
        "hf-beit",
        _hf("BeitForImageClassification", "BeitConfig", intermediate_size=128, **_HF_VIT),
        64,
        lambda m: m.model.beit.layers[-1].layernorm_before,
        _tokens(1, 4),
    ),
    Hub(
        "hf-dinov2",
        _hf("Dinov2ForImageClassification", "Dinov2Config", **{**_HF_VIT, "image_size": 56, "patch_size": 14}),
        56,
        lambda m: m.model.dinov2.encoder.layer[-1].norm1,
        _tokens(1, 4),
    ),
    # transformers' ConvNeXt stage holds two ModuleLists (``downsampling_layer``,
    # ``layers``) iterated in Python: a TorchScript scope names neither, the class does.
    Hub(
        "hf-convnext",
        _hf("ConvNextForImageClassification", "ConvNextConfig", **_HF_STAGES),
        64,
        lambda m: m.model.convnext.encoder.stages[-1],
    ),
    Hub(
        "hf-convnext-v2",
        _hf("ConvNextV2ForImageClassification", "ConvNextV2Config", **_HF_STAGES),
        64,
        lambda m: m.model.convnextv2.encoder.stages[-1],
    ),
    Hub(
        "hf-regnet",
        _hf("RegNetForImageClassification", "RegNetConfig", embedding_size=16, groups_width=8, **_HF_STAGES),
        64,
        lambda m: m.model.regnet.encoder.stages[-1],
    ),
    Hub(
        "hf-resnet",
        _hf("ResNetForImageClassification", "ResNetConfig", embedding_size=16, **_HF_STAGES),
        64,
        lambda m: m.model.resnet.encoder.stages[-1],
    ),
    # transformers' Swin: tokens (not channels-last maps as in timm), pooled by a 1-D
    # average pooling of the transposed tokens; the target is the last block's
    # layernorm_before, the grad-cam package's choice for a Swin.
    Hub(
        "hf-swin",
        _hf(
            "SwinForImageClassification",
            "SwinConfig",
            image_size=64,
            embed_dim=16,
            depths=[1, 1, 1],
            num_heads=[1, 2, 2],
            window_size=2,
        ),
        64,
        lambda m: m.model.swin.encoder.layers[-1].blocks[-1].layernorm_before,
        lambda t: t.reshape(t.shape[0], 4, 4, t.shape[2]).permute(0, 3, 1, 2),
    ),
    # Swin V2 normalises after the attention (post-norm): the attention reads the residual
    # stream itself, so there is no attention input of its own; the target is the final
    # layernorm over the last stage's tokens.
    Hub(
        "hf-swin-v2",
        _hf(
            "Swinv2ForImageClassification",
            "Swinv2Config",
            image_size=64,
            embed_dim=16,
            depths=[1, 1, 1],
            num_heads=[1, 2, 2],
            window_size=2,
        ),
        64,
        lambda m: m.model.swinv2.layernorm,
        lambda t: t.reshape(t.shape[0], 4, 4, t.shape[2]).permute(0, 3, 1, 2),
    ),
]


HF_VIT = next(hub for hub in FAMILIES if hub.name == "hf-vit")


def _build(hub: Hub) -> torch.nn.Module:
    torch.manual_seed(0)
    model = hub.build().eval()
    if hub.name.startswith("hf-"):
        model = _Logits(model).eval()
    for p in model.parameters():  # timm and transformers start some heads at zero
        if p.ndim == 2 and not p.abs().sum():
            torch.nn.init.normal_(p, std=0.5)
    return model


def _export(model: torch.nn.Module, fmt: str, size: int, folder: Path) -> Path:
    """As a user exports: the transformers model itself (its ``ImageClassifierOutput`` and
    all), not the wrapper grad-cam needs."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"model{SUFFIX[fmt]}"
    inner = model.model if isinstance(model, _Logits) else model
    x = torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(1))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if fmt == "onnx":
            # Named as optimum names them: ``pixel_values`` in, ``logits`` out.
            torch.onnx.export(inner, (x,), str(path), dynamo=False, input_names=["pixel_values"],
                              output_names=["logits"], dynamic_axes={"pixel_values": {0: "n"}, "logits": {0: "n"}},
                              opset_version=17)  # fmt: skip
        elif fmt == "onnx-dynamo":
            # With trainable parameters the exporter's decomposition fails on BEiT's and
            # transformers' Swin's attention (a view of strides it did not expect); a
            # user exports a frozen model, as the README says.
            inner.requires_grad_(False)
            batch = torch.export.Dim("batch", min=1, max=1024)
            torch.onnx.export(inner, (x,), str(path), dynamo=True, input_names=["pixel_values"],
                              output_names=["logits"], dynamic_shapes=({0: batch},), verbose=False)  # fmt: skip
        elif fmt == "torchscript":
            # transformers' models trace to a tuple of outputs (their ``torchscript`` mode).
            traced = torch.jit.trace(inner, x, strict=False, check_trace=False)
            torch.jit.save(traced, str(path))
        else:
            batch = torch.export.Dim("batch", min=1, max=1024)
            torch.export.save(torch.export.export(inner, (x,), dynamic_shapes=({0: batch},)), str(path))
    return path


@pytest.fixture(scope="module", params=FAMILIES, ids=[f.name for f in FAMILIES])
def family(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> dict:
    """One family: the grad-cam package's maps at its target, and reportgen's reading of
    every format."""
    hub: Hub = request.param
    model = _build(hub)
    x = np.random.default_rng(0).standard_normal((3, 3, hub.size, hub.size)).astype(np.float32)
    with torch.no_grad():
        targets = model(torch.from_numpy(x)).argmax(1).numpy()
    reference = None
    if not hub.lost:
        with GradCAM(model=model, target_layers=[hub.target(model)], reshape_transform=hub.reshape) as cam:
            reference = cam(input_tensor=torch.from_numpy(x), targets=[ClassifierOutputTarget(int(t)) for t in targets])
    readings = {}
    for fmt in hub.formats:
        folder = tmp_path_factory.mktemp(f"{hub.name}-{fmt.replace('.', '-')}")
        adapter = load_model(_export(model, fmt, hub.size, folder), device="cpu")
        adapter.prepare((hub.size, hub.size))
        layers = adapter.layers()
        by_name = {layer.name: layer for layer in layers}
        chosen = default_layers(layers, adapter.num_outputs)
        target = default_cam_layer(adapter)
        maps = compute_cam("gradcam", adapter.split(target), x, targets, (hub.size, hub.size)).maps if target else None
        _, features = adapter.extract(x, chosen[1:-1])
        readings[fmt] = {
            "gap": graph_gap(layers),
            "defaults": [(n, by_name[n].module, by_name[n].layout) for n in chosen[1:-1]],
            "ends": (chosen[0], chosen[-1]),
            "target": None if target is None else by_name[target].module,
            "maps": maps,
            "features": [features[n] for n in chosen[1:-1]],
        }
    return {"hub": hub, "reference": reference, "readings": readings}


def _corr(a: np.ndarray, b: np.ndarray) -> float:
    return min(float(np.corrcoef(u.ravel(), v.ravel())[0, 1]) for u, v in zip(a, b, strict=True))


@pytest.mark.slow
def test_the_family_reads_the_same_on_every_format(family: dict) -> None:
    readings = dict(family["readings"])
    if family["hub"].lost:
        for fmt, r in readings.items():
            assert "could not follow" in r["gap"] and r["target"] is None, (fmt, r["gap"])
            assert all(layout for _, _, layout in r["defaults"]), (fmt, r["defaults"])
        assert len({tuple((m, lay) for _, m, lay in r["defaults"]) for r in readings.values()}) == 1
        return
    for fmt, r in readings.items():
        assert r["gap"] == "", (fmt, r["gap"])
        assert r["ends"] == (INPUT_LAYER, LOGITS_LAYER)
        assert 3 <= len(r["defaults"]) + 2 <= 10, (fmt, r["defaults"])
        assert all(layout for _, _, layout in r["defaults"]), (fmt, r["defaults"])  # no unknown layout
        assert r["target"], fmt
    # One module path names the same layer on every format: the same defaults, holding the
    # same values, and the same target.  torch's ONNX exporter folds a batch norm into the
    # convolution before it, so there that tensor is the convolution's (``conv_pw`` for
    # ``bn2``): a module of the same parent.
    (first, a), *rest = readings.items()
    for fmt, b in rest:
        assert len(a["defaults"]) == len(b["defaults"]), (first, a["defaults"], fmt, b["defaults"])
        for (_, ma, _), (_, mb, _), fa, fb in zip(
            a["defaults"], b["defaults"], a["features"], b["features"], strict=True
        ):
            folded = any(f.startswith("onnx") for f in (first, fmt)) and ma.rpartition(".")[0] == mb.rpartition(".")[0]
            assert ma == mb or folded, (ma, mb)
            assert np.allclose(fa, fb, rtol=1e-3, atol=1e-3 * np.abs(fb).max()), (ma, fmt)
    assert len({r["target"] for r in readings.values()}) == 1, {f: r["target"] for f, r in readings.items()}


@pytest.mark.slow
def test_the_default_map_is_the_grad_cam_package_s(family: dict) -> None:
    for fmt, r in family["readings"].items():
        if family["hub"].lost:
            continue  # no default map there (see above)
        assert _corr(r["maps"], family["reference"]) >= (0.98 if fmt.startswith("onnx") else 0.99), fmt


def test_hub_files_beside_the_model_name_classes_and_preprocessing(tmp_path: Path) -> None:
    """An optimum-style folder: model.onnx, config.json (id2label), preprocessor_config.json
    (mean, std, size, centre crop).  Class names, normalisation, size and crop come from
    them; command-line options still win; the cache notices when they change."""
    model = _build(HF_VIT)
    folder = tmp_path / "hub"
    folder.mkdir()
    path = _export(model, "onnx", 64, folder)
    (folder / "config.json").write_text(json.dumps({"id2label": {"0": "cat", "1": "dog", "2": "fox"}}))
    (folder / "preprocessor_config.json").write_text(json.dumps({
        "image_mean": [0.5, 0.5, 0.5], "image_std": [0.25, 0.25, 0.25], "do_center_crop": True,
        "crop_size": {"height": 64, "width": 64}, "size": {"shortest_edge": 72}, "crop_pct": 0.9,
    }))  # fmt: skip
    images = tmp_path / "images"
    for i, name in enumerate(("cat", "dog", "fox")):
        for j in range(3):
            make_image(images / name / f"{j}.png", (70, 50), (40 * i + 10 * j, 90, 200 - 40 * i))
    out = tmp_path / "o" / "r.html"
    result = run_cli("audit", path, images, "-o", out, "-q", "--no-tsne", *NO_RERUNS)
    assert result.code == 0, result.err
    data = load_json(out)
    assert data["classes"] == ["cat", "dog", "fox"]
    assert data["class_source"] == "config.json, preprocessor_config.json beside the model"
    assert data["preprocessing"]["mean"] == [0.5, 0.5, 0.5] and data["preprocessing"]["std"] == [0.25, 0.25, 0.25]
    assert data["preprocessing"]["resize"] == "crop" and data["preprocessing"]["size"] == [64, 64]
    assert any("crops 0.9 of the shorter side" in w for w in data["warnings"])
    assert "config.json" in data["model"]["properties"]["hints from"]
    # Options win over the hints; a changed hub file is a changed cache key.
    again = run_cli("audit", path, images, "-o", out, "--no-tsne", *NO_RERUNS, "--mean", "0.4", "--resize", "stretch")
    assert again.code == 0 and load_json(out)["preprocessing"]["mean"] == [0.4] * 3
    assert load_json(out)["preprocessing"]["resize"] == "stretch"
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": [0.3] * 3, "image_std": [0.3] * 3}))
    third = run_cli("audit", path, images, "-o", out, "--no-tsne", *NO_RERUNS)
    assert third.code == 0 and "not reusing the features cache" in third.err
    assert load_json(out)["preprocessing"]["mean"] == [0.3] * 3


def test_hostile_hub_files_are_dropped(tmp_path: Path) -> None:
    """Wrong types, holes in id2label, a huge file: dropped, the audit goes on."""
    model = _build(HF_VIT)
    folder = tmp_path / "hub"
    folder.mkdir()
    path = _export(model, "onnx", 64, folder)
    (folder / "config.json").write_text(json.dumps({"id2label": {"0": "a", "2": "c", "3": "d"}}))
    (folder / "preprocessor_config.json").write_text(json.dumps({"image_mean": "red", "image_std": [0, 0, 0]}))
    layers = run_cli("layers", path)
    assert layers.code == 0, layers.err
    adapter = load_model(path, device="cpu")
    assert adapter.info.embedded.classes is None and adapter.info.embedded.mean is None
    assert adapter.info.embedded.std is None
    (folder / "config.json").write_bytes(b"{" + b" " * (9 << 20) + b"}")
    assert load_model(path, device="cpu").info.embedded.classes is None


@pytest.mark.parametrize("fmt", ["torch.export", "torchscript"])
def test_a_transformers_model_is_read_by_its_logits(tmp_path: Path, fmt: str) -> None:
    """A transformers model returns ``ImageClassifierOutput`` (a dict of outputs): its
    torch.export program loads in the CLI's process, which never imports transformers,
    and on every format the logits are what reportgen reads."""
    model = _build(HF_VIT)
    path = _export(model, fmt, 64, tmp_path)
    image = tmp_path / "a.png"
    make_image(image, (64, 64), (200, 30, 90))
    result = run_cli("cam", path, image, "-o", tmp_path / "m.npy", "--size", "64")
    assert_no_traceback(result)
    assert result.code == 0, result.err
    adapter = load_model(path, device="cpu")
    adapter.prepare((64, 64))
    x = np.random.default_rng(1).standard_normal((2, 3, 64, 64)).astype(np.float32)
    scores, _ = adapter.extract(x, [])
    with torch.no_grad():
        expected = model(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(scores, expected, atol=1e-4)


class _Unfollowable(torch.nn.Module):
    """A CNN whose feature map goes through reshapes the layout rules do not follow
    ((C, H, W) -> (C*H, W), transposed, -> (C, H, W) again: the values scrambled, so not
    even a copy of the map): every tensor after it has unknown axes."""

    def __init__(self, scramble: bool = True) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.body = torch.nn.Conv2d(8, 16, 3, padding=1, stride=2)
        self.head = torch.nn.Linear(16, 3)
        self.scramble = scramble

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = torch.relu(self.stem(x))
        n, c, h, w = a.shape
        a = a.reshape(n, c * h, w)
        a = (a.transpose(1, 2) if self.scramble else a).reshape(n, c, h, w)
        return self.head(torch.relu(self.body(a)).mean(dim=(2, 3)))


def test_a_graph_whose_thread_is_lost_says_so(tmp_path: Path) -> None:
    """No default Grad-CAM target is picked from before the cut: `layers` warns, the
    audit says why its galleries have no maps, and --cam-layer still works."""
    torch.manual_seed(0)
    path = _export(_Unfollowable().eval(), "onnx", 32, tmp_path)
    listing = run_cli("layers", path)
    assert listing.code == 0, listing.err
    assert "# warning: reportgen could not follow what the axes of this graph mean past" in listing.out
    assert "c " not in "".join(line[:3] for line in listing.out.splitlines() if not line.startswith("#"))
    images = tmp_path / "images"
    for i, name in enumerate(("a", "b", "c")):
        for j in range(3):
            make_image(images / name / f"{j}.png", (32, 32), (80 * i, 20 * j, 100))
    out = tmp_path / "o" / "r.html"
    result = run_cli("audit", path, images, "-o", out, "-q", "--no-tsne", "--gallery-size", "1", "--channels", "0",
                     "--shortcut-images", "0")  # fmt: skip
    assert result.code == 0, result.err
    data = load_json(out)
    assert data["cam"]["method"] is None and "could not follow" in data["cam"]["note"]
    assert any("could not follow" in w for w in data["warnings"])
    named = run_cli("cam", path, next(images.rglob("*.png")), "-o", tmp_path / "m.npy", "--layer", "stem")
    assert named.code == 0, named.err
    plain = run_cli("cam", path, next(images.rglob("*.png")), "-o", tmp_path / "n.npy")
    assert plain.code == 2 and "--layer" in plain.err
    # Without the transpose the round trip gives the map back bit for bit: the probe shows
    # it, and the tensor after it is that map (no gap; the body's map is the target).
    torch.manual_seed(0)
    adapter = load_model(_export(_Unfollowable(scramble=False).eval(), "onnx", 32, tmp_path / "same"), device="cpu")
    adapter.prepare((32, 32))
    assert graph_gap(adapter.layers()) == ""
    target = default_cam_layer(adapter)
    assert target is not None and {layer.name: layer.shape for layer in adapter.layers()}[target] == (16, 16, 16)


class _ConvBn(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = torch.nn.Sequential()
        self.block.add_module("conv", torch.nn.Conv2d(3, 8, 3, padding=1))
        self.block.add_module("bn", torch.nn.BatchNorm2d(8))
        self.head = torch.nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.block(x).mean(dim=(2, 3)))


def test_a_module_the_onnx_export_folded_away_is_named_by_its_block(tmp_path: Path) -> None:
    """torch's ONNX exporter folds the batch norm into the convolution: ``block.bn`` is
    not in that graph.  The error says why and what the block holds; the block's name
    selects the same tensor (the same values) on the ONNX and the torch.export file."""
    torch.manual_seed(0)
    model = _ConvBn().eval()
    with torch.no_grad():  # a batch norm that changes its input, so the fold is visible
        model.block.bn.running_mean.uniform_(-1, 1)
        model.block.bn.running_var.uniform_(0.5, 2)
    x = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    values = {}
    for fmt in ("onnx", "torch.export"):
        adapter = load_model(_export(model, fmt, 16, tmp_path / fmt), device="cpu")
        adapter.prepare((16, 16))
        _, features = adapter.extract(x, [adapter.resolve("block")])
        values[fmt] = features[adapter.resolve("block")]
    np.testing.assert_allclose(values["onnx"], values["torch.export"], rtol=1e-4, atol=1e-5)
    image = tmp_path / "a.png"
    make_image(image, (16, 16), (10, 200, 30))
    result = run_cli("cam", tmp_path / "onnx" / "model.onnx", image, "-o", tmp_path / "m.npy", "--layer", "block.bn")
    assert_no_traceback(result)
    assert result.code == 2
    assert "folds a batch norm into its convolution" in result.err and "'block' holds block.conv" in result.err
