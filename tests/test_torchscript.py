"""TorchScript files: module paths from the trace's scopes, and sizes the trace computed
as tensors (Swin's window padding) folded so that torch's converter can export them."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from reportgen.models import load_model
from reportgen.models.torchscript import module_path_of_scope

SIZE = 30  # not a multiple of the window: the padding is not zero


class WindowPad(torch.nn.Module):
    """Pads H and W up to a multiple of 4 and shifts, as Swin's shifted windows do."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, _, h, w = x.shape
        pad_b = (4 - h % 4) % 4
        pad_r = (4 - w % 4) % 4
        x = F.pad(x, (0, pad_r, 0, pad_b))
        return torch.roll(x, shifts=(-1, -1), dims=(2, 3))


class Net(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
        self.window = WindowPad()
        self.body = torch.nn.Sequential(torch.nn.Conv2d(8, 16, 3, padding=1), torch.nn.ReLU())
        self.head = torch.nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.body(self.window(self.stem(x)))
        return self.head(x.mean(dim=(2, 3)))


def _traced(tmp_path: Path) -> tuple[torch.nn.Module, Path]:
    torch.manual_seed(0)
    model = Net().eval()
    path = tmp_path / "net.ts"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.jit.save(torch.jit.trace(model, torch.randn(2, 3, SIZE, SIZE)), str(path))
    return model, path


def test_scope_to_module_path() -> None:
    scope = (
        "torchvision.models.resnet.ResNet::/torch.nn.modules.container.Sequential::layer4/BasicBlock::1/Conv2d::conv2"
    )
    assert module_path_of_scope(scope) == "layer4.1.conv2"
    assert module_path_of_scope("ResNet::") == ""
    assert module_path_of_scope("") == ""
    # ModuleLists iterated in Python leave no scope: ``stages.1``'s block ``0`` is in
    # ``layers``, not in ``downsampling_layer`` (transformers' ConvNeXt); the scope's class
    # says which, and the rest of the chain when the classes agree.
    paths = {
        "stages": "ModuleList", "stages.1": "Stage", "stages.1.downsampling_layer": "ModuleList",
        "stages.1.downsampling_layer.0": "LayerNorm", "stages.1.layers": "ModuleList",
        "stages.1.layers.0": "Layer", "stages.1.layers.0.conv": "Conv2d",
    }  # fmt: skip
    assert module_path_of_scope("Net::/a.Stage::1/a.Layer::0", paths) == "stages.1.layers.0"
    assert module_path_of_scope("Net::/a.Stage::1/a.LayerNorm::0", paths) == "stages.1.downsampling_layer.0"
    assert module_path_of_scope("Net::/a.Stage::1/Other::0/Conv2d::conv", paths) == "stages.1.layers.0.conv"


def test_traced_padding_runs_at_every_batch_with_module_names(tmp_path: Path) -> None:
    model, path = _traced(tmp_path)
    adapter = load_model(path, device="cpu")
    adapter.prepare((SIZE, SIZE))
    # The padded, shifted map is 32 x 32 whatever the batch; the logits equal the eager model's.
    by_module = {layer.module: layer for layer in adapter.layers() if layer.module}
    assert by_module["window"].shape == (8, 32, 32)
    rng = np.random.default_rng(0)
    for batch in (1, 2, 3, 5):
        x = rng.standard_normal((batch, 3, SIZE, SIZE)).astype(np.float32)
        outputs, feats = adapter.extract(x, [adapter.resolve("body")])
        with torch.no_grad():
            expected = model(torch.from_numpy(x)).numpy()
            body = model.body(model.window(model.stem(torch.from_numpy(x)))).mean(dim=(2, 3)).numpy()
        assert np.allclose(outputs, expected, atol=1e-5)
        assert np.allclose(feats[adapter.resolve("body")], body, atol=1e-5)
    # A second preparation (another size) converts a fresh copy: the names survive it.
    adapter.prepare((SIZE + 4, SIZE + 4))
    assert {layer.module for layer in adapter.layers()} >= {"stem", "window", "body.0", "body.1"}
