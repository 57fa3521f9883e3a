"""Which ONNX Runtime provider runs an ONNX model, and what the report says about it.

CI's onnxruntime is the CPU build, so a GPU build whose CUDA provider cannot start is
simulated: the provider list is made to include CUDA, and either its library "fails to
load" (the preflight) or the session quietly lands on the CPU (what ONNX Runtime does
when the provider loads but cannot take the session).  The real CUDA run is in
``test_cuda.py``, on a GPU machine.
"""

from __future__ import annotations

import numpy as np
import onnxruntime
import pytest
from conftest import SAMPLE, assert_no_traceback, run_cli

from reportgen.errors import UserError
from reportgen.models import onnx_adapter
from reportgen.models.onnx_adapter import load_onnx_model

CPU_BUILD = "CUDAExecutionProvider" not in onnxruntime.get_available_providers()
MISSING = "libcudnn.so.9: cannot open shared object file: No such file or directory"


@pytest.fixture
def listed_cuda(monkeypatch: pytest.MonkeyPatch) -> None:
    """ONNX Runtime lists a CUDA provider (the GPU build is installed)."""
    if not CPU_BUILD:
        pytest.skip("this onnxruntime has a real CUDA provider: test_cuda.py covers it")
    monkeypatch.setattr(
        onnxruntime, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"]
    )


@pytest.mark.skipif(not CPU_BUILD, reason="onnxruntime here has a CUDA provider")
def test_cuda_asked_without_gpu_build_is_one_line() -> None:
    result = run_cli("audit", SAMPLE / "model.onnx", SAMPLE / "images", "-o", "/nonexistent/r.html", "--device", "cuda")
    assert result.code != 0
    assert_no_traceback(result)
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1 and "no CUDA provider" in lines[0] and "reportgen[gpu]" in lines[0], result.err


def test_provider_that_cannot_load_falls_back_and_says_why(listed_cuda: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(onnx_adapter, "cuda_provider_problem", lambda: MISSING)
    adapter = load_onnx_model(SAMPLE / "model.onnx", device="auto")
    assert adapter.info.device == "cpu" and adapter.providers == ["CPUExecutionProvider"]
    assert "CPUExecutionProvider" in adapter.info.runtime
    assert any(MISSING in n and "ran on the CPU" in n for n in adapter.info.notes), adapter.info.notes
    with pytest.raises(UserError, match="cannot start: libcudnn"):
        load_onnx_model(SAMPLE / "model.onnx", device="cuda")


def test_session_that_lands_on_cpu_is_said(listed_cuda: None, monkeypatch: pytest.MonkeyPatch) -> None:
    # The provider library loads, but the session is given to the CPU (ONNX Runtime's
    # own fallback): the device, the runtime line and the notes follow what ran.
    monkeypatch.setattr(onnx_adapter, "cuda_provider_problem", lambda: None)
    adapter = load_onnx_model(SAMPLE / "model.onnx", device="auto")
    assert adapter.info.device == "cuda" and adapter.providers[0] == "CUDAExecutionProvider"
    adapter.prepare((32, 32))
    assert adapter.info.device == "cpu" and adapter.providers == ["CPUExecutionProvider"]
    assert adapter.info.runtime.endswith("(CPUExecutionProvider)")
    assert any("could not start CUDAExecutionProvider" in n for n in adapter.info.notes), adapter.info.notes
    # It still runs, and gives what a plain CPU adapter gives.
    plain = load_onnx_model(SAMPLE / "model.onnx", device="cpu")
    plain.prepare((32, 32))
    x = np.random.default_rng(0).standard_normal((2, 3, 32, 32)).astype(np.float32)
    name = plain.layers()[-2].name
    (scores, feats), (plain_scores, plain_feats) = adapter.extract(x, [name]), plain.extract(x, [name])
    np.testing.assert_array_equal(scores, plain_scores)
    np.testing.assert_array_equal(feats[name], plain_feats[name])

    strict = load_onnx_model(SAMPLE / "model.onnx", device="cuda")
    with pytest.raises(UserError, match="could not start CUDAExecutionProvider"):
        strict.prepare((32, 32))


def test_provider_problem_is_none_or_one_line() -> None:
    # On this machine's build there is no CUDA library: nothing to say, or (a GPU build
    # without its libraries) the loader's complaint on one line.
    why = onnx_adapter.cuda_provider_problem()
    assert why is None or ("\n" not in why and why)


def test_twin_gradient_at_a_cnn_cut_equals_central_differences() -> None:
    """On a GPU every ONNX cut takes its Grad-CAM gradient from the torch twin (the
    central differences' perturbed copies would each cross to the device); at a CNN's
    channels-first cut the two routes must give the same maps."""
    from reportgen.analyses.cam import compute_cam
    from reportgen.data import Preprocess, discover, load_one
    from reportgen.models import last_spatial_layer
    from reportgen.models.onnx_adapter import OnnxSplit, TwinGradientSplit

    pre = Preprocess((64, 64))
    dataset = discover(SAMPLE / "images")
    x = np.stack([load_one(dataset.root / r.file, pre)[0] for r in dataset.records[:10]])
    targets = np.arange(len(x)) % 6
    adapter = load_onnx_model(SAMPLE / "model.onnx", device="cpu")
    adapter.prepare(pre.size)
    layer = last_spatial_layer(adapter.layers())
    differences = adapter.split(layer)
    assert isinstance(differences, OnnxSplit)  # on the CPU: central differences
    twin = TwinGradientSplit(differences, adapter.differentiable())
    a = compute_cam("gradcam", differences, x, targets, pre.size)
    b = compute_cam("gradcam", twin, x, targets, pre.size)
    np.testing.assert_allclose(b.weights, a.weights, rtol=1e-2, atol=1e-4 * float(np.abs(a.weights).max()))
    np.testing.assert_array_equal(a.targets, b.targets)
    for p, q in zip(a.maps, b.maps, strict=True):
        assert (np.ptp(p) == 0 and np.ptp(q) == 0) or np.corrcoef(p.ravel(), q.ravel())[0, 1] > 0.999
