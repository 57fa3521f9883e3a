"""ONNX models, run by ONNX Runtime.

Taps are extra graph outputs; feature maps are averaged to vectors by ``GlobalAveragePool``
nodes added to the graph, so full maps never leave the runtime.  For Grad-CAM the graph
is cut at the target tensor into a body model and a head model (see :class:`OnnxSplit`);
ONNX Runtime has no gradients, so the engine in ``analyses/cam.py`` differentiates the
head numerically.

This is the only module that imports onnxruntime.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import io
import os
import re
import threading
import warnings
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

# The report promises no network traffic, and so does the tool: ONNX Runtime's Linux and
# macOS builds (1.29 and later) send usage events to Microsoft -- a DNS lookup of its
# telemetry host was seen during audits -- unless this is set before the runtime starts;
# disable_telemetry_events() below only covers what follows it.
os.environ["ORT_DISABLE_TELEMETRY"] = "1"
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from reportgen.errors import UserError, one_line
from reportgen.models.base import (
    EmbeddedMetadata,
    LayerInfo,
    ModelAdapter,
    ModelInfo,
    SplitModel,
    annotate_layers,
    cell_weights,
    map_view,
    module_from_scope,
    run_in_batches_of,
    shuffled,
    shuffles,
)
from reportgen.models.layouts import CHW, HWC, TOKENS, GraphStep, ProbedCopies

if TYPE_CHECKING:
    from reportgen.models.onnx_torch import OnnxTwinDifferentiable

# Its logger writes coloured multi-line warnings and errors to stderr; every error also
# comes back as an exception, which reaches the user as one line, so only fatal ones are
# logged.
ort.disable_telemetry_events()
ort.set_default_logger_severity(4)

METADATA_KEY = "reportgen"
_DTYPES = {TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16, TensorProto.DOUBLE: np.float64}
_BATCH_PARAM = "reportgen_batch"


def resolve_providers(requested: str) -> tuple[str, list[str], str | None]:
    """The device and ONNX Runtime providers for ``--device`` (auto, cuda or cpu), and why
    a CUDA provider that is installed cannot be used (None when it can, or is absent).

    A listed ``CUDAExecutionProvider`` only says the GPU build is installed: its library
    still has to find CUDA, cuDNN and a driver, and when it cannot ONNX Runtime quietly
    runs the session on the CPU.  The library is loaded here first so that the reason
    (the missing library, in the loader's words) can be said in one line."""
    available = ort.get_available_providers()
    has_cuda = "CUDAExecutionProvider" in available
    if requested == "cuda" and not has_cuda:
        raise UserError(
            "--device cuda was asked for, but ONNX Runtime has no CUDA provider "
            "(install the GPU build: pip install 'reportgen[gpu]')"
        )
    if requested not in ("cuda", "auto") or not has_cuda:
        return "cpu", ["CPUExecutionProvider"], None
    why = cuda_provider_problem()
    if why is not None:
        if requested == "cuda":
            raise UserError(f"--device cuda was asked for, but ONNX Runtime's CUDA provider cannot start: {why}")
        return "cpu", ["CPUExecutionProvider"], why
    return "cuda", ["CUDAExecutionProvider", "CPUExecutionProvider"], None


def cuda_unavailable() -> str | None:
    """None when ONNX Runtime's CUDA provider can run here; otherwise why not (not
    installed, or installed but its library cannot load)."""
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        return "this onnxruntime has no CUDA provider (pip install 'reportgen[gpu]')"
    return cuda_provider_problem()


def cuda_provider_problem() -> str | None:
    """Why ONNX Runtime's CUDA provider library cannot load here, or None when it loads."""
    import ctypes

    preload = getattr(ort, "preload_dlls", None)
    if preload is not None:
        # CUDA and cuDNN from their pip packages (torch's CUDA build brings them), where
        # the system's library path has none.
        try:
            # It prints its warnings: they go nowhere, the library load below says what is missing.
            with contextlib.redirect_stdout(io.StringIO()):
                preload(cuda=True, cudnn=True, msvc=False, directory="")
        except Exception:  # noqa: BLE001
            pass
    library = Path(ort.__file__).parent / "capi" / "libonnxruntime_providers_cuda.so"
    if not library.exists():
        return None  # not a Linux wheel layout: the session check in OnnxAdapter.session decides
    try:
        ctypes.CDLL(str(library))
    except OSError as exc:
        return one_line(exc)
    return None


def load_onnx_model(path: Path, *, device: str) -> OnnxAdapter:
    """Read an ONNX file and describe its input; sessions are made in :meth:`prepare`."""
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - any parse failure is a bad file
        raise UserError(f"cannot read ONNX model {path.name}: {one_line(exc)}") from None
    graph = model.graph
    # Old exporters list weights among the inputs (as initializers, or as tensors that
    # ConstantOfShape nodes produce, as in the ONNX model zoo's test graphs).
    provided = {i.name for i in graph.initializer} | {o for n in graph.node for o in n.output}
    inputs = [i for i in graph.input if i.name not in provided]
    if len(inputs) != 1:
        raise UserError(f"the ONNX model has {len(inputs)} inputs; reportgen needs exactly one image input")
    if not graph.output:
        raise UserError("the ONNX model has no output")
    inp = inputs[0]
    elem = inp.type.tensor_type.elem_type
    if elem not in _DTYPES:
        raise UserError(
            f"the ONNX model's input has element type {TensorProto.DataType.Name(elem)}; expected a float tensor"
        )
    # PaddlePaddle and some other exporters store "any size" as the literal -1 (or 0):
    # only a positive stored size is fixed.
    dims = [
        d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else None for d in inp.type.tensor_type.shape.dim
    ]
    if len(dims) != 4:
        raise UserError(f"the ONNX model's input has rank {len(dims)}; expected an image batch (N, C, H, W)")
    channels_last = dims[1] not in (1, 3) and dims[3] in (1, 3)
    channels = (dims[3] if channels_last else dims[1]) or 3
    spatial = (dims[1], dims[2]) if channels_last else (dims[2], dims[3])
    size_hint = (spatial[0], spatial[1]) if all(spatial) else None
    fixed_batch = dims[0] if dims[0] else None
    props = {p.key: p.value for p in model.metadata_props}
    embedded = EmbeddedMetadata.parse(props.get(METADATA_KEY))
    properties = {
        "opset": ", ".join(f"{o.domain or 'ai.onnx'} {o.version}" for o in model.opset_import),
        "ir_version": str(model.ir_version),
    }
    if model.producer_name:
        properties["producer"] = f"{model.producer_name} {model.producer_version}".strip()
    if model.doc_string:
        properties["doc_string"] = model.doc_string[:500]
    for key, value in props.items():
        if key != METADATA_KEY:
            properties[f"metadata.{key}"] = value[:500]
    dev, providers, unusable = resolve_providers(device)
    info = ModelInfo(
        path=path,
        format="onnx",
        runtime=f"onnxruntime {ort.__version__} ({providers[0]})",
        device=dev,
        channels=int(channels),
        channels_last=channels_last,
        input_size_hint=size_hint or embedded.input_size,
        fixed_batch=fixed_batch,
        static_size=size_hint is not None,
        embedded=embedded,
        properties=properties,
    )
    if unusable is not None:
        info.notes.append(
            f"ONNX Runtime's CUDA provider is installed but cannot start ({unusable}); the model ran on the CPU"
        )
    return OnnxAdapter(info, model, inp.name, np.dtype(_DTYPES[elem]), providers, requested=device)


def run_session(session: ort.InferenceSession, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """``session.run`` that Ctrl-C always stops.

    ONNX Runtime runs a graph without looking at Python's signals, so a model that never
    ends (a ``Loop`` whose condition stays true) would hold the main thread forever.  In
    the main thread the run goes to a helper thread while this one waits, where an
    interrupt lands; the runtime is then told to stop (``RunOptions.terminate``), and the
    interrupt goes on up.  A run that does not stop even then is left to the process's
    exit (the command line ends with ``os._exit`` on an interrupt)."""
    if threading.current_thread() is not threading.main_thread():
        return session.run(names, feeds)
    options = ort.RunOptions()
    options.log_severity_level = 4
    outcome: dict[str, Any] = {}

    def work() -> None:
        try:
            outcome["value"] = session.run(names, feeds, options)
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            outcome["error"] = exc

    worker = threading.Thread(target=work, name="onnxruntime-run", daemon=True)
    worker.start()
    try:
        worker.join()
    except KeyboardInterrupt:
        options.terminate = True
        worker.join(2.0)
        raise
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


def ort_message(exc: BaseException) -> str:
    """ONNX Runtime's complaint on one line, without its status prefix, source location
    and C++ signature (which would push the useful end past the cut)."""
    text = " ".join(str(exc).split())
    text = re.sub(r"^\[ONNXRuntimeError\] : \d+ : \w+ : ", "", text)
    text = re.sub(r"\S+\.(?:h|cc|cpp):\d+ \S+?\(.*?\) ", "", text)
    return one_line(RuntimeError(text))


class OnnxAdapter(ModelAdapter):
    """An ONNX model with its extraction session."""

    def __init__(
        self,
        info: ModelInfo,
        model: onnx.ModelProto,
        input_name: str,
        dtype: np.dtype,
        providers: list[str],
        requested: str = "auto",
    ):
        self.info = info
        self._requested = requested  # --device: "cuda" makes a provider that cannot start an error
        self.model = model
        self.input_name = input_name
        # Exports with several outputs (logits beside hidden states) are read by "logits".
        named = [o.name for o in model.graph.output if o.name.lower() == "logits"]
        self.output_name = named[0] if named else model.graph.output[0].name
        self.dtype = dtype
        self.providers = providers
        self._layers: list[LayerInfo] = []
        self._shapes: dict[str, tuple[int, ...]] = {}  # per-image shapes of batched tensors
        self._dtypes: dict[str, np.dtype] = {}
        self._num_outputs = 0
        self._sessions: dict[tuple[Any, ...], tuple[ort.InferenceSession, list[str]]] = {}
        self.batch: int | None = info.fixed_batch

    # -- preparation

    def _fixed_size_model(self, size: tuple[int, int]) -> onnx.ModelProto:
        model = copy.deepcopy(self.model)
        produced = {o for n in model.graph.node for o in n.output}
        kept = [i for i in model.graph.input if i.name not in produced]
        if len(kept) != len(model.graph.input):
            del model.graph.input[:]
            model.graph.input.extend(kept)
        # A stored size of -1 or 0 means "any" to the exporters that write it, but a
        # negative dimension to ONNX Runtime: make every such size a symbolic one.
        for value in (*model.graph.input, *model.graph.output, *model.graph.value_info):
            for i, dim in enumerate(value.type.tensor_type.shape.dim):
                if dim.HasField("dim_value") and dim.dim_value <= 0:
                    dim.Clear()
                    dim.dim_param = f"reportgen_any_{i}"
        for inp in model.graph.input:
            if inp.name != self.input_name:
                continue
            dims = inp.type.tensor_type.shape.dim
            sides = (1, 2) if self.info.channels_last else (2, 3)
            for axis, value in zip(sides, size, strict=True):
                dims[axis].Clear()
                dims[axis].dim_value = value
        return model

    def session(self, model: onnx.ModelProto, *, optimize: bool = True) -> ort.InferenceSession:
        options = ort.SessionOptions()
        options.log_severity_level = 4
        if not optimize:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        try:
            with warnings.catch_warnings():
                # A provider it cannot start is a Python warning on stderr; said below instead.
                warnings.simplefilter("ignore")
                session = ort.InferenceSession(model.SerializeToString(), options, providers=self.providers)
        except Exception as exc:  # noqa: BLE001
            raise UserError(f"ONNX Runtime cannot load the model: {one_line(exc)}") from None
        if self.providers[0] != "CPUExecutionProvider" and self.providers[0] not in session.get_providers():
            # The provider's library loaded but it could not take the session (no device,
            # a driver older than its CUDA): ONNX Runtime fell back to the CPU by itself.
            # Every later session and the torch twin follow it there, and the report says so.
            wanted = self.providers[0]
            if self._requested == "cuda":
                raise UserError(f"--device cuda was asked for, but ONNX Runtime could not start {wanted} here")
            self.providers = ["CPUExecutionProvider"]
            self.info.device = "cpu"
            self.info.runtime = f"onnxruntime {ort.__version__} (CPUExecutionProvider)"
            self.info.notes.append(f"ONNX Runtime could not start {wanted} here; the model ran on the CPU")
        return session

    def prepare(self, size: tuple[int, int]) -> None:
        self.size = size
        self.fixed = self._fixed_size_model(size)
        graph = self.fixed.graph
        reachable = {self.input_name}
        module_of = {o: node_module(n) for n in graph.node for o in n.output}
        order: list[tuple[str, str]] = []
        for node in graph.node:
            if any(i in reachable for i in node.input if i):
                for out in node.output:
                    if out:
                        reachable.add(out)
                        order.append((out, node.op_type))
        probe = copy.deepcopy(self.fixed)
        existing = {o.name for o in probe.graph.output}
        for name, _ in order:
            if name not in existing:
                probe.graph.output.append(onnx.ValueInfoProto(name=name))
        names = [o.name for o in probe.graph.output]
        try:
            session = self.session(probe, optimize=False)
        except UserError as exc:
            if self.info.static_size or "shape" not in str(exc).lower():
                raise
            # The graph's sides are free and its shape inference fails at this size: the
            # size is what it rejects (a detector's FPN adding levels of mismatched sides).
            raise UserError(
                f"the model cannot run on a {size[0]}x{size[1]} input{self._size_hint(size)}: {exc}"
            ) from None
        # Which batch sizes the graph really runs: a graph declared dynamic may carry
        # constants baked at the export's batch (reshapes to a literal batch), and a
        # tensor whose first size merely equals the probe batch (a (2, 7) table of
        # coordinates in Swin) is no per-image tensor.  Two probes of different batch
        # sizes settle both: per-image tensors follow the batch in each.
        runs: dict[int, dict[str, np.ndarray]] = {}
        failures: dict[int, str] = {}  # batch size -> why it failed
        example = np.zeros(0, self.dtype)
        for batch in [self.batch] if self.batch else [3, 2, 1]:
            shape = (
                (batch, *size, self.info.channels) if self.info.channels_last else (batch, self.info.channels, *size)
            )
            example = np.random.default_rng(0).standard_normal(shape).astype(self.dtype)
            try:
                values = dict(zip(names, run_session(session, names, {self.input_name: example}), strict=True))
            except Exception as exc:  # noqa: BLE001
                failures[batch] = ort_message(exc)
                continue
            if self._batch_of(values[self.output_name]) != batch:
                failures[batch] = f"a batch of {batch} gives {values[self.output_name].shape[0]} outputs"
                continue
            runs[batch] = values
            if len(runs) == 2:
                break
        if not runs:
            # The first failure is the graph's own complaint; later ones are often only
            # consequences of the batch sizes tried.
            tried = ", ".join(str(b) for b in failures)
            raise UserError(
                f"the model fails on a {size[0]}x{size[1]} input with {self.info.channels} channel(s)"
                f"{self._size_hint(size)} at every batch size tried ({tried}): {next(iter(failures.values()))}"
            )
        self.notes = ()
        if self.batch is None and len(runs) == 1:
            self.batch = next(iter(runs))  # declared dynamic, but only this batch size runs
            first, why = next(iter(failures.items()))
            self.notes = (
                f"the model declares a free batch size but runs only at batch {self.batch} "
                f"(at batch {first}: {why}), so it is run {self.batch} image(s) at a time",
            )
        values = next(iter(runs.values()))
        scores = values[self.output_name]
        if scores.ndim > 2 and all(s == 1 for s in scores.shape[2:]):
            scores = scores.reshape(scores.shape[0], scores.shape[1])
        if scores.ndim != 2:
            raise UserError(f"the model's output has shape {scores.shape}; expected one score per class (N, K)")
        self._num_outputs = int(scores.shape[1])
        outputs = {o.name for o in graph.output}
        for name, op in order:
            value = values.get(name)
            if not (isinstance(value, np.ndarray) and value.dtype.kind == "f" and value.ndim >= 1):
                continue
            if any(
                not isinstance(run.get(name), np.ndarray)
                or run[name].shape[:1] != (b,)
                or run[name].shape[1:] != value.shape[1:]
                for b, run in runs.items()
            ):
                continue
            self._shapes[name] = tuple(int(s) for s in value.shape[1:])
            self._dtypes[name] = value.dtype
            if name not in outputs and 1 <= value.ndim - 1 <= 3:
                self._layers.append(LayerInfo(name, self._shapes[name], op, module=module_of.get(name, "")))
        self._shapes[self.input_name] = tuple(int(s) for s in example.shape[1:])
        self._dtypes[self.input_name] = self.dtype
        floats = {n for n, v in values.items() if isinstance(v, np.ndarray) and v.dtype.kind == "f"}
        per_image = {name: values[name] for name in self._shapes if name in values}
        self._layers = annotate_layers(
            self._layers,
            graph_steps(graph),
            self._shapes,
            floats,
            self.input_name,
            self.info.channels_last,
            ProbedCopies(per_image, [name for name, _ in order]),
        )
        found = logit_tensor(graph, self.output_name)
        self.score_layer, self.score_activation = None, None
        if found is not None and found[0] in self._shapes:
            self.score_layer, self.score_activation = found

    @staticmethod
    def _batch_of(output: np.ndarray) -> int:
        return int(output.shape[0]) if output.ndim else 0

    @property
    def score_name(self) -> str:
        """The tensor Grad-CAM explains: the logits where found, else the output."""
        return self.score_layer or self.output_name

    def _size_hint(self, size: tuple[int, int]) -> str:
        """Which sizes the graph takes, where its strides tell: sides that are multiples
        of its total downsampling factor (a detector's FPN needs them to add its levels)."""
        stride = total_stride(self.model.graph, self.input_name)
        if stride <= 1 or all(side % stride == 0 for side in size):
            return ""
        near = tuple(max(stride, round(side / stride) * stride) for side in size)
        return (
            f" (its graph downsamples by {stride}, so it needs sides that are multiples of {stride}; "
            f"try --size {near[0]}x{near[1]})"
        )

    # -- queries

    def layers(self) -> list[LayerInfo]:
        return list(self._layers)

    @property
    def num_outputs(self) -> int:
        return self._num_outputs

    def _check(self, name: str) -> None:
        if name not in self._shapes or name == self.input_name:
            raise UserError(f"no layer named {name!r} in this model (see `reportgen layers MODEL`)")

    # -- running

    def _extraction_session(
        self, layers: tuple[str, ...], cells: tuple[tuple[int, int] | None, ...]
    ) -> tuple[ort.InferenceSession, list[str]]:
        cached = self._sessions.get((layers, cells))
        if cached:
            return cached
        model = copy.deepcopy(self.fixed)
        graph = model.graph
        opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 13)
        out_names = [self.output_name]
        info = {layer.name: layer for layer in self._layers}
        for i, (name, grid) in enumerate(zip(layers, cells, strict=True)):
            self._check(name)
            pooled = f"reportgen/pool/{i}"
            layer = info.get(name)
            if grid is not None and layer is not None:
                self._add_grid_pooling(graph, name, layer, grid, pooled)
            else:
                self._add_pooling(graph, name, layer, pooled, opset)
            graph.output.append(onnx.ValueInfoProto(name=pooled))
            out_names.append(pooled)
        entry = (self.session(model), out_names)
        self._sessions[(layers, cells)] = entry
        return entry

    def _add_grid_pooling(
        self, graph: onnx.GraphProto, name: str, layer: LayerInfo, cells: tuple[int, int], pooled: str
    ) -> None:
        """Nodes that average tensor ``name`` over each cell of a grid, inside the graph,
        channel-major like the torch route: an AveragePool where the cells are equal, else
        one MatMul with the cell weights (exact for any side), in float32."""
        h, w = (int(v) for v in layer.resolution)
        if layer.layout == CHW and h % cells[0] == 0 and w % cells[1] == 0:
            # Equal cells: one pooling op, which needs no buffer the size of the map (the
            # MatMul route below holds one more map-sized buffer per tapped layer).
            kernel = [h // cells[0], w // cells[1]]
            graph.node.append(
                helper.make_node("AveragePool", [name], [pooled + "/cells"], kernel_shape=kernel, strides=kernel)
            )
            graph.node.append(helper.make_node("Flatten", [pooled + "/cells"], [pooled], axis=1))
            return
        weights = cell_weights(layer.resolution, cells)
        source = name
        if self._dtypes.get(name, np.dtype(np.float32)) != np.float32:
            # A float16 (or double) tensor: the weights and the result are float32. A
            # float32 tensor is read as it is: a Cast would copy the largest maps.
            source = pooled + "/f32"
            graph.node.append(helper.make_node("Cast", [name], [source], to=TensorProto.FLOAT))
        shape = pooled + "/shape"
        if layer.layout == CHW:
            graph.initializer.append(numpy_helper.from_array(np.array([0, layer.channels, -1], np.int64), shape))
            graph.initializer.append(numpy_helper.from_array(weights, pooled + "/weights"))
            graph.node.append(helper.make_node("Reshape", [source, shape], [pooled + "/flat"]))
            graph.node.append(helper.make_node("MatMul", [pooled + "/flat", pooled + "/weights"], [pooled + "/cells"]))
        else:
            # (H, W, C) maps and (T, C) token grids: positions first, channels last.
            graph.initializer.append(numpy_helper.from_array(np.array([0, -1, layer.channels], np.int64), shape))
            graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weights.T), pooled + "/weights"))
            graph.node.append(helper.make_node("Reshape", [source, shape], [pooled + "/flat"]))
            graph.node.append(helper.make_node("MatMul", [pooled + "/weights", pooled + "/flat"], [pooled + "/hwc"]))
            graph.node.append(helper.make_node("Transpose", [pooled + "/hwc"], [pooled + "/cells"], perm=[0, 2, 1]))
        graph.node.append(helper.make_node("Flatten", [pooled + "/cells"], [pooled], axis=1))

    def _add_pooling(self, graph: onnx.GraphProto, name: str, layer: LayerInfo | None, pooled: str, opset: int) -> None:
        """Nodes that pool tensor ``name`` to one vector per image, inside the graph (so
        full maps never leave the runtime), by its layout (see ``base.pooling``)."""
        rank = len(self._shapes[name])
        layout = layer.layout if layer is not None else ""

        def reduce_mean(axes: list[int]) -> None:
            if opset >= 18:
                axes_name = pooled + "/axes"
                graph.initializer.append(numpy_helper.from_array(np.array(axes, np.int64), axes_name))
                graph.node.append(helper.make_node("ReduceMean", [name, axes_name], [pooled], keepdims=0))
            else:
                graph.node.append(helper.make_node("ReduceMean", [name], [pooled], axes=axes, keepdims=0))

        if layout == HWC:
            reduce_mean([1, 2])
        elif layout == TOKENS and layer is not None and layer.prefix:
            index = pooled + "/index"
            graph.initializer.append(numpy_helper.from_array(np.array(0, np.int64), index))
            graph.node.append(helper.make_node("Gather", [name, index], [pooled], axis=1))
        elif layout == TOKENS or (layout != CHW and rank == 2):
            reduce_mean([1])
        elif rank == 3:
            graph.node.append(helper.make_node("GlobalAveragePool", [name], [pooled + "/gap"]))
            graph.node.append(helper.make_node("Flatten", [pooled + "/gap"], [pooled], axis=1))
        else:
            graph.node.append(helper.make_node("Identity", [name], [pooled]))

    def _run(self, session: ort.InferenceSession, names: list[str], feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
        keys = list(feeds)
        return run_in_batches_of(
            lambda arrays: run_session(session, names, dict(zip(keys, arrays, strict=True))),
            [feeds[k] for k in keys],
            self.batch,
        )

    def extract(
        self, pixels: np.ndarray, layers: list[str], cells: Mapping[str, tuple[int, int]] | None = None
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        grids = cells or {}
        session, names = self._extraction_session(tuple(layers), tuple(grids.get(name) for name in layers))
        outs = self._run(session, names, {self.input_name: pixels.astype(self.dtype, copy=False)})
        scores = outs[0]
        scores = scores.reshape(scores.shape[0], -1).astype(np.float32, copy=False)
        feats = {
            name: out.reshape(out.shape[0], -1).astype(np.float32, copy=False)
            for name, out in zip(layers, outs[1:], strict=True)
        }
        return scores, feats

    def tensors(self, pixels: np.ndarray, names: list[str]) -> list[np.ndarray]:
        """The raw values of tensors ``names`` for ``pixels`` (not pooled), from ONNX Runtime."""
        for name in names:
            self._check(name)
        model = copy.deepcopy(self.fixed)
        del model.graph.output[:]
        for name in names:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
        session = self.session(model)
        return self._run(session, names, {self.input_name: pixels.astype(self.dtype, copy=False)})

    def differentiable(self) -> OnnxTwinDifferentiable:
        """The graph's torch twin (see ``onnx_torch``), checked against ONNX Runtime."""
        cached = getattr(self, "_twin", None)
        if cached is not None:
            return cached
        from reportgen.models.onnx_torch import OnnxTwinDifferentiable

        self._twin = OnnxTwinDifferentiable(self)
        return self._twin

    def split(self, layer: str) -> SplitModel:
        """The graph cut at ``layer``, as (N, C, h, w) maps.

        Grad-CAM weights come from central differences of the head where the cut is a
        channels-first map (exact for the pooling-and-linear heads of CNNs, about one
        forward pass).  Past a channels-last map or a token sequence the head holds
        transformer blocks, where finite differences would need 2C head runs per image:
        there the gradient is exact, by autograd through the graph's torch twin (checked
        against ONNX Runtime), where the twin can run the graph.  On a GPU the twin takes
        every cut: the 2C perturbed copies per image would each cross to the device (128
        images at ResNet-18's layer4: 13 GB, 5 s on an H200), where one backward pass
        there needs none.
        """
        self._check(layer)
        info = next((item for item in self._layers if item.name == layer), None)
        if info is None or len(self._shapes[layer]) not in (2, 3):
            raise UserError(f"layer {layer!r} has shape {self._shapes[layer]}; a CAM needs a feature map or token grid")
        split: SplitModel = OnnxSplit(self, layer)
        if info.layout in (HWC, TOKENS) or self.info.device != "cpu":
            try:
                twin = self.differentiable()
            except UserError:
                twin = None  # finite differences of the head: exact, slower
            if twin is not None:
                split = TwinGradientSplit(split, twin)
        return map_view(split, info)


#: Nodes that pass class scores through unchanged in value (an exporter's tail).
_PASSTHROUGH = {"Identity", "Reshape", "Flatten", "Cast", "Squeeze", "Unsqueeze", "Dropout"}


_CANONICAL = {
    "Transpose": "permute",
    "Reshape": "reshape",
    "Flatten": "reshape",
    "Squeeze": "reshape",
    "Unsqueeze": "reshape",
    "Concat": "concat",
    "MatMul": "matmul",
    "Einsum": "matmul",
    "Gemm": "matmul",
    "Add": "add",
}


def node_module(node: onnx.NodeProto) -> str:
    """The module path a node of torch's ONNX exporters belongs to, "" when unknown: the
    dynamo exporter's ``pkg.torch.onnx.name_scopes`` metadata, else the TorchScript-based
    exporter's node name (``/layer4/layer4.1/relu_1/Relu``)."""
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes" and len(prop.value) < 4096:
            try:
                scopes = ast.literal_eval(prop.value)  # literals only: safe on untrusted text
            except (ValueError, SyntaxError):
                return ""
            if isinstance(scopes, list) and all(isinstance(p, str) for p in scopes):
                return module_from_scope("/".join(["", *scopes]))
            return ""
    return module_from_scope(node.name) if node.name.startswith("/") else ""


def graph_steps(graph: onnx.GraphProto) -> list[GraphStep]:
    """The graph's nodes as layout inference reads them (see ``models/layouts.py``)."""
    steps = []
    for node in graph.node:
        perm = None
        if node.op_type == "Transpose":
            perm = next((tuple(a.ints) for a in node.attribute if a.name == "perm"), None)
        steps.append(
            GraphStep(_CANONICAL.get(node.op_type, node.op_type.lower()), list(node.input), list(node.output), perm)
        )
    return steps


def logit_tensor(graph: onnx.GraphProto, output: str) -> tuple[str, str] | None:
    """The input of the Softmax (or LogSoftmax, or Sigmoid) that ends the graph, looking
    back from ``output`` through value-preserving nodes, and which of the two it is
    ("softmax" or "sigmoid"); None when the output is neither."""
    producer = {o: n for n in graph.node for o in n.output if o}
    name = output
    for _ in range(len(graph.node)):
        node = producer.get(name)
        if node is None or not node.input:
            return None
        if node.op_type in ("Softmax", "LogSoftmax"):
            return node.input[0], "softmax"
        if node.op_type == "Sigmoid":
            return node.input[0], "sigmoid"
        if node.op_type not in _PASSTHROUGH:
            return None
        name = node.input[0]
    return None


def total_stride(graph: onnx.GraphProto, input_name: str) -> int:
    """The largest product of strides (first spatial axis) on a path from the input."""
    stride = {input_name: 1}
    for node in graph.node:
        known = [stride[i] for i in node.input if i in stride]
        if not known:
            continue
        own = 1
        if node.op_type in ("Conv", "MaxPool", "AveragePool", "LpPool"):
            for attr in node.attribute:
                if attr.name == "strides" and attr.ints:
                    own = int(attr.ints[0])
        for out in node.output:
            stride[out] = max(known) * max(own, 1)
    return max(stride.values())


def _subgraph_inputs(node: onnx.NodeProto) -> set[str]:
    """Names a node's subgraphs (If/Loop/Scan bodies) read from the enclosing scope."""
    names: set[str] = set()
    for attr in node.attribute:
        graphs = list(attr.graphs) + ([attr.g] if attr.HasField("g") else [])
        for g in graphs:
            produced = {i.name for i in g.input} | {i.name for i in g.initializer}
            for inner in g.node:
                produced.update(inner.output)
            for inner in g.node:
                names.update(i for i in inner.input if i and i not in produced)
                names.update(_subgraph_inputs(inner))
    return names


def _node_inputs(node: onnx.NodeProto) -> set[str]:
    return {i for i in node.input if i} | _subgraph_inputs(node)


class OnnxSplit(SplitModel):
    """An ONNX graph cut at tensor A into two runnable models.

    The head holds every node that depends on A and is needed for the output.  What else
    it reads from the body travels in ``rest`` (per-image tensors only); values that are
    not per-image (shapes, constants) are recomputed in the head, so the head runs on
    any batch size the original model does.
    """

    differentiable = False

    def __init__(self, adapter: OnnxAdapter, layer: str):
        self.adapter = adapter
        self.layer = layer
        graph = adapter.fixed.graph
        nodes = list(graph.node)
        producer = {out: i for i, node in enumerate(nodes) for out in node.output if out}
        initializers = {i.name for i in graph.initializer}
        # Nodes the class scores need (the logits: a softmax after them is left out).
        needed_nodes: set[int] = set()
        stack = [adapter.score_name]
        while stack:
            value = stack.pop()
            i = producer.get(value)
            if i is None or i in needed_nodes:
                continue
            needed_nodes.add(i)
            stack.extend(_node_inputs(nodes[i]))
        # Of those, the ones that depend on A.
        depends = {layer}
        head: set[int] = set()
        for i, node in enumerate(nodes):
            if i in needed_nodes and _node_inputs(node) & depends:
                head.add(i)
                depends.update(o for o in node.output if o)
        batched = adapter._shapes
        while True:
            produced = {o for i in head for o in nodes[i].output}
            reads = {v for i in head for v in _node_inputs(nodes[i])} - produced - initializers - {layer}
            move = {producer[v] for v in reads if v not in batched and v in producer}
            if not move - head:
                break
            head |= move
        missing = [v for v in reads if v not in batched and v not in producer]
        if missing:
            raise UserError(f"cannot cut the graph at {layer!r}: the head reads {missing[0]!r}, which is not a tensor")
        self.rest_names = sorted(reads, key=lambda v: producer.get(v, -1))
        head_nodes = [nodes[i] for i in sorted(head)]
        self.body_session = adapter.session(self._body_model([layer, *self.rest_names]))
        self.head_model = self._head_model(head_nodes, [layer, *self.rest_names])
        self.head_session = adapter.session(self.head_model)
        self.weights: dict[str, np.ndarray] = {}  # initializers replaced in the head (``randomised``)

    def _body_model(self, outputs: list[str]) -> onnx.ModelProto:
        model = copy.deepcopy(self.adapter.fixed)
        del model.graph.output[:]
        for name in outputs:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
        return model

    def _head_model(self, head_nodes: list[onnx.NodeProto], inputs: list[str]) -> onnx.ModelProto:
        adapter = self.adapter
        source = adapter.fixed
        used = set().union(*(_node_inputs(n) for n in head_nodes)) if head_nodes else set()
        batch_dim: Any = adapter.batch if adapter.batch else _BATCH_PARAM
        graph_inputs = []
        for name in inputs:
            elem = helper.np_dtype_to_tensor_dtype(adapter._dtypes[name])
            graph_inputs.append(helper.make_tensor_value_info(name, elem, [batch_dim, *adapter._shapes[name]]))
        graph = helper.make_graph(
            head_nodes,
            "reportgen_head",
            graph_inputs,
            [onnx.ValueInfoProto(name=adapter.score_name)],
            initializer=[i for i in source.graph.initializer if i.name in used],
        )
        model = helper.make_model(graph, opset_imports=list(source.opset_import), ir_version=source.ir_version)
        model.functions.extend(source.functions)
        return model

    def _feeds(self, activations: np.ndarray, rest: list[np.ndarray]) -> dict[str, np.ndarray]:
        feeds = {self.layer: activations.astype(self.adapter._dtypes[self.layer], copy=False)}
        for name, value in zip(self.rest_names, rest, strict=True):
            feeds[name] = value
        return feeds

    def body(self, pixels: np.ndarray) -> tuple[np.ndarray, Any]:
        names = [self.layer, *self.rest_names]
        outs = self.adapter._run(
            self.body_session, names, {self.adapter.input_name: pixels.astype(self.adapter.dtype, copy=False)}
        )
        return outs[0].astype(np.float32, copy=False), outs[1:]

    def take(self, rest: Any, index: np.ndarray) -> Any:
        return [value[index] for value in rest]

    def head(self, activations: np.ndarray, rest: Any) -> np.ndarray:
        (out,) = self.adapter._run(self.head_session, [self.adapter.score_name], self._feeds(activations, rest))
        return out.reshape(out.shape[0], -1).astype(np.float32, copy=False)

    def randomised(self, seed: int) -> OnnxSplit:
        rng = np.random.default_rng(seed)
        model = copy.deepcopy(self.head_model)
        weights = {}
        for init in model.graph.initializer:
            value = numpy_helper.to_array(init)
            if shuffles(value):
                weights[init.name] = shuffled(value, rng)
                init.CopyFrom(numpy_helper.from_array(weights[init.name], init.name))
        clone = copy.copy(self)
        clone.head_model, clone.weights = model, weights
        clone.shuffled = sum(v.size for v in weights.values())
        clone.head_session = self.adapter.session(model)
        return clone


class TwinGradientSplit(SplitModel):
    """An ONNX split whose Grad-CAM gradient comes from the graph's torch twin (exact, by
    autograd); the body and head still run in ONNX Runtime for everything else."""

    differentiable = True

    def __init__(self, inner: OnnxSplit, twin: OnnxTwinDifferentiable):
        self.inner = inner
        self.twin = twin
        self.layer = inner.layer
        self.shuffled = inner.shuffled

    def body(self, pixels: np.ndarray) -> tuple[np.ndarray, Any]:
        return self.inner.body(pixels)

    def head(self, activations: np.ndarray, rest: Any) -> np.ndarray:
        return self.inner.head(activations, rest)

    def take(self, rest: Any, index: np.ndarray) -> Any:
        return self.inner.take(rest, index)

    def gradcam_inputs(self, pixels: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.twin.tensor_gradient(pixels, self.layer, targets)

    def randomised(self, seed: int) -> TwinGradientSplit:
        inner = self.inner.randomised(seed)
        return TwinGradientSplit(inner, self.twin.with_weights(inner.weights, [self.layer]))
