"""The torch adapter: TorchScript, torch.export, state_dict + --arch, and pickles."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from reportgen.errors import UserError
from reportgen.models import default_layers, last_spatial_layer, load_model


@pytest.fixture(scope="module")
def resnet(tmp_path_factory: pytest.TempPathFactory) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    model = torchvision.models.resnet18(num_classes=5).eval()
    base = tmp_path_factory.mktemp("resnet")
    return model, base


def _x(n: int = 3, size: int = 64) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, 3, size, size)).astype(np.float32)


def _eager_pooled(model: torch.nn.Module, x: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Stage outputs of a torchvision ResNet from forward hooks: an independent reference."""
    taps: dict[str, np.ndarray] = {}
    hooks = [
        getattr(model, name).register_forward_hook(
            lambda m, i, o, name=name: taps.__setitem__(name, o.mean((2, 3)).numpy())
        )
        for name in ("relu", "layer1", "layer2", "layer3", "layer4")
    ]
    with torch.no_grad():
        out = model(torch.from_numpy(x)).numpy()
    for h in hooks:
        h.remove()
    return out, taps


def _check_against_eager(adapter, model: torch.nn.Module) -> None:
    adapter.prepare((64, 64))
    layers = adapter.layers()
    chosen = default_layers(layers, adapter.num_outputs)
    assert len(chosen) == 8  # input, 5 stage ends, penultimate, logits
    x = _x()
    scores, feats = adapter.extract(x, chosen[1:-1])
    ref_out, ref = _eager_pooled(model, x)
    assert np.allclose(scores, ref_out, atol=1e-4)
    for name, stage in zip(chosen[1:6], ("relu", "layer1", "layer2", "layer3", "layer4"), strict=True):
        assert np.allclose(feats[name], ref[stage], atol=1e-4), name
    assert np.allclose(feats[chosen[6]], ref["layer4"], atol=1e-4)  # penultimate = pooled layer4
    assert last_spatial_layer(layers) == chosen[5]


def test_state_dict_with_arch(resnet: tuple[torch.nn.Module, Path]) -> None:
    model, base = resnet
    path = base / "weights.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in model.state_dict().items()}}, path)
    with pytest.raises(UserError, match="--arch"):
        load_model(path, device="cpu")
    with pytest.raises(UserError, match="unknown --arch"):
        load_model(path, device="cpu", arch="resnet_nope")
    with pytest.raises(UserError, match="does not fit"):
        load_model(path, device="cpu", arch="resnet34")
    adapter = load_model(path, device="cpu", arch="resnet18")
    assert adapter.info.format == "state_dict" and adapter.info.input_size_hint == (224, 224)
    _check_against_eager(adapter, model)


def test_torchscript_traced(resnet: tuple[torch.nn.Module, Path]) -> None:
    model, base = resnet
    path = base / "traced.pt"
    torch.jit.save(torch.jit.trace(model, torch.from_numpy(_x(2))), str(path))
    adapter = load_model(path, device="cpu")
    assert adapter.info.format == "torchscript"
    _check_against_eager(adapter, model)


def test_torch_export_program(resnet: tuple[torch.nn.Module, Path]) -> None:
    model, base = resnet
    path = base / "prog.pt2"
    program = torch.export.export(
        model, (torch.from_numpy(_x(2)),), dynamic_shapes=({0: torch.export.Dim("b", min=1, max=64)},)
    )
    torch.export.save(program, str(path))
    adapter = load_model(path, device="cpu")
    assert adapter.info.format == "torch.export" and adapter.info.input_size_hint == (64, 64)
    _check_against_eager(adapter, model)


def test_static_batch_program_runs_any_batch(resnet: tuple[torch.nn.Module, Path]) -> None:
    model, base = resnet
    path = base / "static.pt2"
    torch.export.save(torch.export.export(model, (torch.from_numpy(_x(2)),)), str(path))
    adapter = load_model(path, device="cpu")
    assert adapter.info.fixed_batch == 2
    adapter.prepare((64, 64))
    x = _x(5)
    scores, _ = adapter.extract(x, [])
    with torch.no_grad():
        assert np.allclose(scores, model(torch.from_numpy(x)).numpy(), atol=1e-4)


class _Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 3)
        self.fc = torch.nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.relu(self.conv(x)).mean((2, 3)))


def test_pickled_module_needs_trust_pickle(tmp_path: Path) -> None:
    path = tmp_path / "whole.pt"
    torch.save(_Tiny().eval(), path)
    with pytest.raises(UserError, match="--trust-pickle"):
        load_model(path, device="cpu")
    adapter = load_model(path, device="cpu", trust_pickle=True)
    assert adapter.info.format == "pickle"
    adapter.prepare((16, 16))
    scores, _ = adapter.extract(np.zeros((2, 3, 16, 16), np.float32), [])
    assert scores.shape == (2, 2)


def test_unrecognised_file(tmp_path: Path) -> None:
    path = tmp_path / "model.bin"
    path.write_bytes(b"hello")
    with pytest.raises(UserError, match="cannot tell"):
        load_model(path)
