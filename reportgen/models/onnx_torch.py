"""A differentiable twin of an ONNX graph: its nodes executed with torch operators.

ONNX Runtime computes no gradients.  Feature visualisation needs the gradient of a unit
with respect to the *input* (thousands of dimensions, out of reach of finite
differences), so ONNX models get this interpreter: every node of the graph is run by the
torch function with the same semantics, on the graph's own weights.  The twin is
checked against ONNX Runtime on a probe input before it is used, so a silent mismatch
cannot slip through; an operator it does not know makes it refuse, with the operator's
name (the report then says the model cannot be differentiated).

Only common classifier operators are covered: convolutions, pooling, normalisation,
activations, linear algebra, elementwise arithmetic, and the shape plumbing exporters
emit around them.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from onnx import numpy_helper

from reportgen.errors import UserError
from reportgen.models.base import LOGITS_LAYER, Differentiable, run_in_batches_of
from reportgen.models.torch_grad import GuidedRelu, unit_gradients


class NotDifferentiable(Exception):
    """The graph holds an operator the torch twin cannot run."""


def _attrs(node: onnx.NodeProto) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for a in node.attribute:
        value = onnx.helper.get_attribute_value(a)
        if isinstance(value, bytes):
            value = value.decode()
        elif isinstance(value, onnx.TensorProto):
            value = numpy_helper.to_array(value)
        out[a.name] = value
    return out


def _ints(t: torch.Tensor | list[int] | None) -> list[int] | None:
    if t is None:
        return None
    if isinstance(t, torch.Tensor):
        return [int(v) for v in t.reshape(-1).tolist()]
    return [int(v) for v in t]


def _pads(pads: list[int] | None, spatial: int) -> list[int]:
    """ONNX pads [x1_begin, x2_begin, ..., x1_end, x2_end, ...] -> F.pad order."""
    pads = pads or [0] * (2 * spatial)
    begin, end = pads[:spatial], pads[spatial:]
    out: list[int] = []
    for b, e in zip(reversed(begin), reversed(end), strict=True):
        out += [b, e]
    return out


def _same_pads(size: list[int], kernel: list[int], stride: list[int], dilation: list[int], upper: bool) -> list[int]:
    begin, end = [], []
    for n, k, s, d in zip(size, kernel, stride, dilation, strict=True):
        out = -(-n // s)
        total = max(0, (out - 1) * s + (k - 1) * d + 1 - n)
        small, big = total // 2, total - total // 2
        begin.append(small if upper else big)
        end.append(big if upper else small)
    return begin + end


def _conv(env: list[Any], a: dict[str, Any]) -> torch.Tensor:
    x, w = env[0], env[1]
    b = env[2] if len(env) > 2 else None
    spatial = x.ndim - 2
    kernel = a.get("kernel_shape", list(w.shape[2:]))
    stride = a.get("strides", [1] * spatial)
    dilation = a.get("dilations", [1] * spatial)
    auto = a.get("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = _same_pads(list(x.shape[2:]), kernel, stride, dilation, auto == "SAME_UPPER")
    elif auto == "VALID":
        pads = [0] * (2 * spatial)
    else:
        pads = a.get("pads", [0] * (2 * spatial))
    x = F.pad(x, _pads(pads, spatial))
    fn = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}[spatial]
    return fn(x, w, b, stride=stride, dilation=dilation, groups=a.get("group", 1))


def _pool(env: list[Any], a: dict[str, Any], kind: str) -> torch.Tensor:
    x = env[0]
    spatial = x.ndim - 2
    kernel = a["kernel_shape"]
    stride = a.get("strides", [1] * spatial)
    dilation = a.get("dilations", [1] * spatial)
    auto = a.get("auto_pad", "NOTSET")
    if auto in ("SAME_UPPER", "SAME_LOWER"):
        pads = _same_pads(list(x.shape[2:]), kernel, stride, dilation, auto == "SAME_UPPER")
    else:
        pads = a.get("pads", [0] * (2 * spatial))
    ceil = bool(a.get("ceil_mode", 0))
    symmetric = pads[:spatial] == pads[spatial:] and all(
        p <= k // 2 for p, k in zip(pads[:spatial], kernel, strict=True)
    )
    if kind == "max":
        if symmetric:
            fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[spatial]
            return fn(x, kernel, stride, pads[:spatial], dilation, ceil_mode=ceil)
        x = F.pad(x, _pads(pads, spatial), value=float("-inf"))
        fn = {1: F.max_pool1d, 2: F.max_pool2d, 3: F.max_pool3d}[spatial]
        return fn(x, kernel, stride, 0, dilation, ceil_mode=ceil)
    include = bool(a.get("count_include_pad", 0))
    fn = {1: F.avg_pool1d, 2: F.avg_pool2d, 3: F.avg_pool3d}[spatial]
    if symmetric:
        return fn(x, kernel, stride, pads[:spatial], ceil_mode=ceil, count_include_pad=include)
    if include:
        return fn(F.pad(x, _pads(pads, spatial)), kernel, stride, 0, ceil_mode=ceil)
    ones = torch.ones_like(x[:, :1])
    total = fn(F.pad(x, _pads(pads, spatial)), kernel, stride, 0, ceil_mode=ceil)
    count = fn(F.pad(ones, _pads(pads, spatial)), kernel, stride, 0, ceil_mode=ceil)
    return total / count


def _softmax(env: list[Any], a: dict[str, Any], fn: Callable[..., torch.Tensor]) -> torch.Tensor:
    """Softmax as the graph's opset defines it: before opset 13 the input is flattened to
    2-D at ``axis`` (default 1) and normalised over everything after it; from 13 on,
    over the single ``axis`` (default -1)."""
    x = env[0]
    if a["__opset__"] < 13:
        axis = a.get("axis", 1) % x.ndim
        flat = x.reshape(int(np.prod(x.shape[:axis])), -1)
        return fn(flat, dim=1).reshape(x.shape)
    return fn(x, dim=a.get("axis", -1))


def _gemm(env: list[Any], a: dict[str, Any]) -> torch.Tensor:
    x, w = env[0], env[1]
    if a.get("transA", 0):
        x = x.t()
    if a.get("transB", 0):
        w = w.t()
    y = a.get("alpha", 1.0) * (x @ w)
    if len(env) > 2 and env[2] is not None:
        y = y + a.get("beta", 1.0) * env[2]
    return y


def _axes(env: list[Any], a: dict[str, Any], index: int = 1) -> list[int] | None:
    if "axes" in a:
        return list(a["axes"])
    if len(env) > index and env[index] is not None:
        return _ints(env[index])
    return None


def _reduce(fn: Callable[..., torch.Tensor]) -> Callable[[list[Any], dict[str, Any]], torch.Tensor]:
    def run(env: list[Any], a: dict[str, Any]) -> torch.Tensor:
        x = env[0]
        axes = _axes(env, a)
        keep = bool(a.get("keepdims", 1))
        if not axes:
            if a.get("noop_with_empty_axes", 0):
                return x
            axes = list(range(x.ndim))
        return fn(x, dim=tuple(axes), keepdim=keep)

    return run


def _reshape(env: list[Any], a: dict[str, Any]) -> torch.Tensor:
    x, shape = env[0], _ints(env[1])
    assert shape is not None
    if not a.get("allowzero", 0):
        shape = [x.shape[i] if s == 0 else s for i, s in enumerate(shape)]
    return x.reshape(shape)


def _unsqueeze(env: list[Any], a: dict[str, Any]) -> torch.Tensor:
    x = env[0]
    axes = sorted(a_ % (x.ndim + len(_axes(env, a) or [])) for a_ in (_axes(env, a) or []))
    for axis in axes:
        x = x.unsqueeze(axis)
    return x


def _squeeze(env: list[Any], a: dict[str, Any]) -> torch.Tensor:
    x = env[0]
    axes = _axes(env, a)
    if axes is None:
        return x.squeeze()
    for axis in sorted((ax % x.ndim for ax in axes), reverse=True):
        x = x.squeeze(axis)
    return x


def _slice(env: list[Any], a: dict[str, Any]) -> torch.Tensor:
    x = env[0]
    if "starts" in a:  # opset < 10
        starts, ends, axes, steps = a["starts"], a["ends"], a.get("axes"), None
    else:
        starts, ends = _ints(env[1]), _ints(env[2])
        axes = _ints(env[3]) if len(env) > 3 and env[3] is not None else None
        steps = _ints(env[4]) if len(env) > 4 and env[4] is not None else None
    assert starts is not None and ends is not None
    axes = axes or list(range(len(starts)))
    steps = steps or [1] * len(starts)
    index: list[Any] = [slice(None)] * x.ndim
    for s, e, ax, st in zip(starts, ends, axes, steps, strict=True):
        n = x.shape[ax]
        s = max(-n, min(n, s))
        e = max(-n - 1, min(n, e))
        if st < 0:
            raise NotDifferentiable("Slice with a negative step")
        index[ax] = slice(s, e, st)
    return x[tuple(index)]


def _pad(env: list[Any], a: dict[str, Any]) -> torch.Tensor:
    x = env[0]
    pads = a.get("pads") or _ints(env[1])
    value = float(a.get("value", 0.0))
    if len(env) > 2 and env[2] is not None and env[2].numel():
        value = float(env[2].reshape(-1)[0])
    mode = a.get("mode", "constant")
    assert pads is not None
    spatial = x.ndim
    torch_pads = _pads(pads, spatial)
    while len(torch_pads) > 2 and torch_pads[-2:] == [0, 0]:
        torch_pads = torch_pads[:-2]
    if mode == "constant":
        return F.pad(x, torch_pads, value=value)
    return F.pad(x, torch_pads, mode={"reflect": "reflect", "edge": "replicate"}[mode])


def _clip(env: list[Any], a: dict[str, Any]) -> torch.Tensor:
    lo = a.get("min", env[1] if len(env) > 1 else None)
    hi = a.get("max", env[2] if len(env) > 2 else None)
    return torch.clamp(env[0], None if lo is None else float(lo), None if hi is None else float(hi))


def _batchnorm(env: list[Any], a: dict[str, Any]) -> torch.Tensor:
    x, scale, bias, mean, var = env[:5]
    return F.batch_norm(x, mean, var, scale, bias, training=False, eps=a.get("epsilon", 1e-5))


def _lrn(env: list[Any], a: dict[str, Any]) -> torch.Tensor:
    return F.local_response_norm(env[0], a["size"], a.get("alpha", 1e-4), a.get("beta", 0.75), a.get("bias", 1.0))


def _constant(env: list[Any], a: dict[str, Any]) -> torch.Tensor:
    for key in ("value", "value_float", "value_floats", "value_int", "value_ints"):
        if key in a:
            return torch.as_tensor(np.array(a[key]))  # a copy: attribute arrays are read-only
    raise NotDifferentiable("Constant without a value")


def _constant_of_shape(env: list[Any], a: dict[str, Any]) -> torch.Tensor:
    value = a.get("value", np.zeros(1, np.float32))
    shape = _ints(env[0]) or []
    return torch.full(shape, float(np.asarray(value).reshape(-1)[0]), dtype=torch.from_numpy(np.array(value)).dtype)


def _resize(env: list[Any], a: dict[str, Any]) -> torch.Tensor:
    x = env[0]
    mode = a.get("mode", "nearest")
    sizes = _ints(env[3]) if len(env) > 3 and env[3] is not None and env[3].numel() else None
    scales = env[2] if len(env) > 2 and env[2] is not None and env[2].numel() else (env[1] if len(env) == 2 else None)
    if sizes is not None:
        size = sizes[2:]
        return F.interpolate(
            x,
            size=size,
            mode="nearest" if mode == "nearest" else "bilinear",
            align_corners=False if mode != "nearest" else None,
        )
    assert scales is not None
    factors = [float(s) for s in scales.reshape(-1).tolist()][2:]
    return F.interpolate(
        x,
        scale_factor=factors,
        mode="nearest" if mode == "nearest" else "bilinear",
        align_corners=False if mode != "nearest" else None,
    )


def _layer_norm(env: list[Any], a: dict[str, Any]) -> torch.Tensor:
    x, scale = env[0], env[1]
    bias = env[2] if len(env) > 2 else None
    axis = a.get("axis", -1) % x.ndim
    return F.layer_norm(x, tuple(x.shape[axis:]), scale, bias, a.get("epsilon", 1e-5))


def _scatter_nd(env: list[Any], a: dict[str, Any]) -> torch.Tensor:
    data, indices, updates = env[0], env[1].long(), env[2]
    out = data.clone()
    out[tuple(indices[..., i] for i in range(indices.shape[-1]))] = updates
    return out


def _relu(env: list[Any], a: dict[str, Any], guided: bool = False) -> torch.Tensor:
    return GuidedRelu.apply(env[0]) if guided else F.relu(env[0])


_ELEMENTWISE: dict[str, Callable[[list[Any], dict[str, Any]], Any]] = {
    "Add": lambda e, a: e[0] + e[1],
    "Sub": lambda e, a: e[0] - e[1],
    "Mul": lambda e, a: e[0] * e[1],
    "Div": lambda e, a: e[0] / e[1] if e[0].is_floating_point() else torch.div(e[0], e[1], rounding_mode="trunc"),
    "Pow": lambda e, a: torch.pow(e[0], e[1]),
    "Sqrt": lambda e, a: torch.sqrt(e[0]),
    "Exp": lambda e, a: torch.exp(e[0]),
    "Log": lambda e, a: torch.log(e[0]),
    "Neg": lambda e, a: -e[0],
    "Abs": lambda e, a: torch.abs(e[0]),
    "Reciprocal": lambda e, a: 1.0 / e[0],
    "Erf": lambda e, a: torch.erf(e[0]),
    "Sigmoid": lambda e, a: torch.sigmoid(e[0]),
    "Tanh": lambda e, a: torch.tanh(e[0]),
    "LeakyRelu": lambda e, a: F.leaky_relu(e[0], a.get("alpha", 0.01)),
    "Elu": lambda e, a: F.elu(e[0], a.get("alpha", 1.0)),
    "Selu": lambda e, a: F.selu(e[0]),
    "Softplus": lambda e, a: F.softplus(e[0]),
    "HardSigmoid": lambda e, a: torch.clamp(a.get("alpha", 0.2) * e[0] + a.get("beta", 0.5), 0, 1),
    "HardSwish": lambda e, a: F.hardswish(e[0]),
    "Gelu": lambda e, a: F.gelu(e[0], approximate="tanh" if a.get("approximate", "none") == "tanh" else "none"),
    "Clip": _clip,
    "Sum": lambda e, a: sum(e[1:], e[0]),
    "Max": lambda e, a: torch.stack(torch.broadcast_tensors(*e)).amax(0),
    "Min": lambda e, a: torch.stack(torch.broadcast_tensors(*e)).amin(0),
    "Mean": lambda e, a: torch.stack(torch.broadcast_tensors(*e)).mean(0),
    "Where": lambda e, a: torch.where(e[0].bool(), e[1], e[2]),
    "Equal": lambda e, a: e[0] == e[1],
    "Greater": lambda e, a: e[0] > e[1],
    "Less": lambda e, a: e[0] < e[1],
    "Not": lambda e, a: ~e[0].bool(),
}

_OPS: dict[str, Callable[[list[Any], dict[str, Any]], Any]] = {
    **_ELEMENTWISE,
    "Identity": lambda e, a: e[0],
    "Dropout": lambda e, a: e[0],
    "Cast": lambda e, a: e[0].to(torch.from_numpy(np.zeros(0, onnx.helper.tensor_dtype_to_np_dtype(a["to"]))).dtype),
    "Constant": _constant,
    "ConstantOfShape": _constant_of_shape,
    "Shape": lambda e, a: torch.tensor(list(e[0].shape)[a.get("start", 0) : a.get("end", None)], dtype=torch.int64),
    "Size": lambda e, a: torch.tensor(e[0].numel(), dtype=torch.int64),
    "Gather": lambda e, a: torch.index_select(
        e[0], a.get("axis", 0) % e[0].ndim, e[1].reshape(-1).long() % e[0].shape[a.get("axis", 0)]
    ).reshape(
        [*e[0].shape[: a.get("axis", 0) % e[0].ndim], *e[1].shape, *e[0].shape[a.get("axis", 0) % e[0].ndim + 1 :]]
    ),
    "Concat": lambda e, a: torch.cat([t for t in e if t is not None], dim=a["axis"]),
    "Reshape": _reshape,
    "Flatten": lambda e, a: e[0].reshape(int(np.prod(e[0].shape[: a.get("axis", 1)])), -1),
    "Squeeze": _squeeze,
    "Unsqueeze": _unsqueeze,
    "Transpose": lambda e, a: e[0].permute(a.get("perm", list(range(e[0].ndim))[::-1])),
    "Expand": lambda e, a: e[0] * torch.ones(_ints(e[1]) or [], dtype=e[0].dtype),
    "Tile": lambda e, a: e[0].repeat(_ints(e[1])),
    "Slice": _slice,
    "Pad": _pad,
    "Conv": _conv,
    "MaxPool": lambda e, a: _pool(e, a, "max"),
    "AveragePool": lambda e, a: _pool(e, a, "avg"),
    "GlobalAveragePool": lambda e, a: e[0].mean(dim=tuple(range(2, e[0].ndim)), keepdim=True),
    "GlobalMaxPool": lambda e, a: e[0].amax(dim=tuple(range(2, e[0].ndim)), keepdim=True),
    "BatchNormalization": _batchnorm,
    "LRN": _lrn,
    "Gemm": _gemm,
    "MatMul": lambda e, a: torch.matmul(e[0], e[1]),
    "Softmax": lambda e, a: _softmax(e, a, torch.softmax),
    "LogSoftmax": lambda e, a: _softmax(e, a, torch.log_softmax),
    "ReduceMean": _reduce(torch.mean),
    "ReduceSum": _reduce(torch.sum),
    "ReduceMax": _reduce(torch.amax),
    "ReduceMin": _reduce(torch.amin),
    "Resize": _resize,
    "Upsample": _resize,
    "LayerNormalization": _layer_norm,
    "Mod": lambda e, a: torch.fmod(e[0], e[1]) if a.get("fmod", 0) else torch.remainder(e[0], e[1]),
    "Range": lambda e, a: torch.arange(e[0].item(), e[1].item(), e[2].item(), dtype=e[0].dtype),
    "ScatterND": _scatter_nd,
}


class OnnxTorchTwin:
    """Runs an ONNX graph with torch operators: differentiable, optionally with guided
    ReLUs, with taps on any tensor."""

    def __init__(self, model: onnx.ModelProto, input_name: str, output_name: str, device: torch.device):
        graph = model.graph
        unknown = sorted(
            {n.op_type for n in graph.node if n.op_type not in _OPS and n.op_type != "Relu"}
            | {f"{n.domain}:{n.op_type}" for n in graph.node if n.domain not in ("", "ai.onnx")}
        )
        if unknown:
            raise NotDifferentiable(f"operator(s) {', '.join(unknown)} not supported by the differentiable route")
        if any(
            a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for n in graph.node for a in n.attribute
        ):
            raise NotDifferentiable("control flow (If/Loop/Scan) is not supported by the differentiable route")
        self.device = device
        self.input_name = input_name
        self.output_name = output_name
        # Float weights go to the device; integer constants (shapes, axes) stay on the CPU
        # with the shape arithmetic that reads them.
        self.constants = {}
        for init in graph.initializer:
            t = torch.from_numpy(numpy_helper.to_array(init).copy())
            self.constants[init.name] = t.to(device) if t.is_floating_point() else t
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
        # Operators whose defaults changed between opsets read the graph's opset from here.
        self.nodes = [(n.op_type, list(n.input), list(n.output), {**_attrs(n), "__opset__": opset}) for n in graph.node]

    def run(
        self, x: torch.Tensor, taps: set[str] = frozenset(), guided: bool = False, leaf: str | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Outputs and the tapped tensors; autograd is whatever the caller enabled.

        ``leaf`` names a tensor made a leaf that requires grad: gradients with respect
        to it flow from the output back to it and no further (Grad-CAM's cut)."""
        env: dict[str, Any] = dict(self.constants)
        env[self.input_name] = x
        captured: dict[str, torch.Tensor] = {}
        for op, inputs, outputs, attrs in self.nodes:
            args = [env[i] if i else None for i in inputs]
            if op == "Relu":
                value = _relu(args, attrs, guided)
            else:
                value = _OPS[op](args, attrs)
            if op == "BatchNormalization" or op == "Dropout":
                value = value if isinstance(value, torch.Tensor) else value[0]
            if outputs[0] == leaf:
                value = value.detach().requires_grad_(True)
            env[outputs[0]] = value
            if outputs[0] in taps:
                captured[outputs[0]] = value
        out = env[self.output_name]
        if out.ndim > 2 and all(s == 1 for s in out.shape[2:]):
            out = out.reshape(out.shape[0], out.shape[1])
        return out, captured


def _disagreement(got: torch.Tensor, expected: np.ndarray) -> float | None:
    """The largest difference between the twin's value and ONNX Runtime's, when it is
    larger than float rounding (relative to the tensor's scale); None when they agree."""
    got_np = got.detach().float().cpu().numpy()
    if got_np.size != expected.size:
        return float("inf")
    got_np = got_np.reshape(expected.shape)
    scale = float(np.abs(expected).max()) + 1e-6
    error = float(np.abs(got_np - expected).max())
    return error if error > 1e-3 * scale else None


class OnnxTwinDifferentiable(Differentiable):
    """``Differentiable`` for an ONNX adapter, through its torch twin.

    Before first use the twin's outputs, and before a tensor's first use as a tap that
    tensor, are compared with ONNX Runtime's on a seeded probe input; a disagreement
    larger than float rounding makes the model (or that tensor) count as not
    differentiable rather than give wrong pictures.
    """

    route = "reportgen's torch twin of the ONNX graph (checked against ONNX Runtime)"

    def __init__(self, adapter: Any):
        self.adapter = adapter
        self.device = torch.device(adapter.info.device)
        try:
            self.twin = OnnxTorchTwin(adapter.fixed, adapter.input_name, adapter.output_name, self.device)
        except NotDifferentiable as exc:
            raise UserError(f"this ONNX model cannot be differentiated: {exc}") from None
        batch = adapter.batch or 2
        shape = (batch, *adapter._shapes[adapter.input_name])
        self.probe = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
        self.checked: set[str] = set()
        expected, _ = adapter.extract(self.probe, [])
        try:
            with torch.inference_mode():
                got, _ = self.twin.run(torch.from_numpy(self.probe).to(self.device))
        except Exception as exc:  # noqa: BLE001 - any failure means no faithful twin
            raise UserError(f"this ONNX model cannot be differentiated: its torch twin fails ({exc})") from None
        error = _disagreement(got, expected)
        if error is not None:
            raise UserError(
                f"this ONNX model cannot be differentiated: its torch twin differs from ONNX Runtime by {error:.3g}"
            )

    def _check_tap(self, name: str) -> None:
        """Compare the twin's value of tensor ``name`` with ONNX Runtime's, once per tensor:
        maps and gradients are read there, so the outputs agreeing is not enough."""
        if name in self.checked:
            return
        (expected,) = self.adapter.tensors(self.probe, [name])
        with torch.inference_mode():
            _, captured = self.twin.run(torch.from_numpy(self.probe).to(self.device), {name})
        error = _disagreement(captured[name], expected)
        if error is not None:
            raise UserError(
                f"tensor {name!r} cannot be differentiated: the torch twin's value differs from ONNX Runtime's by {error:.3g}"
            )
        self.checked.add(name)

    def with_weights(self, weights: dict[str, np.ndarray], taps: list[str]) -> OnnxTwinDifferentiable:
        """A copy whose twin runs with ``weights`` (initializer name -> values) in place of
        the graph's.  The twin was checked against ONNX Runtime with the graph's own
        weights; ``taps`` and the scores are checked here, before the swap, since the copy
        has no ONNX graph to be checked against."""
        score = self.adapter.score_layer
        for name in [*taps, *([score] if score else [])]:
            self._check_tap(name)
        clone = copy.copy(self)
        clone.twin = copy.copy(self.twin)
        clone.twin.constants = dict(self.twin.constants)
        for name, value in weights.items():
            clone.twin.constants[name] = torch.from_numpy(np.ascontiguousarray(value)).to(self.device)
        clone.checked = set(self.checked)
        return clone

    def tensor_gradient(
        self, pixels: np.ndarray, layer: str, targets: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Tensor ``layer``, the gradient of each image's target score with respect to it,
        and the scores (logits where the graph ends in a softmax): Grad-CAM's inputs."""
        score = self.adapter.score_layer
        taps = {layer} | ({score} if score else set())
        for name in taps:
            self._check_tap(name)

        def run(arrays: list[np.ndarray]) -> list[np.ndarray]:
            x = torch.from_numpy(np.ascontiguousarray(arrays[0])).to(self.device)
            t = torch.as_tensor(arrays[1], device=self.device).long()
            with torch.enable_grad():
                out, captured = self.twin.run(x, taps, leaf=layer)
                activation = captured[layer]
                scores = (captured[score] if score else out).reshape(len(t), -1)
                picked = scores.gather(1, t[:, None]).sum()
                (grad,) = torch.autograd.grad(picked, activation)
            return [
                activation.detach().float().cpu().numpy(),
                grad.float().cpu().numpy(),
                scores.detach().float().cpu().numpy(),
            ]

        a, g, s = run_in_batches_of(run, [pixels.astype(np.float32), np.asarray(targets, np.int64)], self.adapter.batch)
        return a, g, s

    def gradient(
        self, pixels: np.ndarray, layer: str, units: np.ndarray, *, reduce: str = "mean", guided: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        # Output units are read from the logits where the graph ends in a softmax.
        score = self.adapter.score_layer
        tapped = (score if score else None) if layer == LOGITS_LAYER else layer
        taps = {tapped} if tapped else set()
        if layer != LOGITS_LAYER:
            self.adapter._check(layer)
        if tapped:
            self._check_tap(tapped)

        def forward(x: torch.Tensor) -> torch.Tensor:
            out, captured = self.twin.run(x, taps, guided=guided)
            activation = captured[tapped] if tapped else out
            if tapped and layer == LOGITS_LAYER:
                activation = activation.reshape(activation.shape[0], -1)
            return activation

        return unit_gradients(forward, pixels, units, reduce=reduce, device=self.device, batch=self.adapter.batch)
