"""PyTorch models: TorchScript, ``torch.export`` programs, state_dicts, trusted pickles.

Every torch format is brought to one form, an ``ExportedProgram`` in functional ATen
(``run_decompositions({})``, so no op mutates its input), and run node by node by a small
executor.  That gives every format the same things for free: taps on any tensor (a
TorchScript module has no hooks once loaded), the same tensor names whatever the source,
and a cut at any tensor for Grad-CAM, where the part before the cut runs without autograd
and the gradient flows from the score back to the cut and no further.

Only this module and its helpers (``torchscript``, ``onnx_torch``) import torch.
"""

from __future__ import annotations

import copy
import json
import operator
import os
import sys
import warnings
import zipfile
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
import torch.fx

from reportgen.errors import UserError, one_line
from reportgen.models import torchscript
from reportgen.models.base import (
    LOGITS_LAYER,
    Differentiable,
    EmbeddedMetadata,
    LayerInfo,
    ModelAdapter,
    ModelInfo,
    SplitModel,
    annotate_layers,
    cell_weights,
    map_view,
    run_in_batches_of,
)
from reportgen.models.layouts import CHW, HWC, TOKENS, GraphStep
from reportgen.models.program_cache import ProgramCache
from reportgen.models.torch_archive import load_exported_program
from reportgen.models.torch_grad import GuidedRelu, unit_gradients
from reportgen.models.torchscript import MODULE_KEY

EXTRA_FILE = "reportgen.json"


def resolve_device(requested: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; ``cuda`` without one is an error."""
    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but torch sees no CUDA device")
    return requested


# ------------------------------------------------------------------ loading


def _zip_names(path: Path) -> list[str]:
    try:
        with zipfile.ZipFile(path) as zf:
            return zf.namelist()
    except (zipfile.BadZipFile, OSError):
        return []


def sniff_torch_format(path: Path) -> str | None:
    """``torchscript``, ``torch.export``, ``torch.save`` (zip) or ``legacy`` (old pickle)."""
    names = _zip_names(path)
    if names:
        if any(n.endswith("archive_format") for n in names) or any(
            "/models/" in n and n.endswith(".json") for n in names
        ):
            return "torch.export"
        if any("/code/" in n for n in names) or any(n.endswith("constants.pkl") for n in names):
            return "torchscript"
        if any(n.endswith("data.pkl") for n in names):
            return "torch.save"
        return None
    try:
        with open(path, "rb") as fh:
            head = fh.read(2)
    except OSError:
        return None
    return "legacy" if head[:1] == b"\x80" else None


def load_torch_model(
    path: Path,
    kind: str,
    *,
    arch: str | None,
    trust_pickle: bool,
    device: str,
) -> TorchAdapter:
    """Load any torch format into a :class:`TorchAdapter` (not yet prepared)."""
    device = resolve_device(device)
    embedded = EmbeddedMetadata()
    size_hint: tuple[int, int] | None = None
    channels = 3
    fixed_batch: int | None = None
    if kind == "torchscript":
        extra = {EXTRA_FILE: ""}
        try:
            torch.jit.load(str(path), map_location="cpu", _extra_files=extra)
        except Exception as exc:  # noqa: BLE001 - any failure here is a bad file
            raise UserError(f"cannot load TorchScript model {path.name}: {one_line(exc)}") from None
        embedded = EmbeddedMetadata.parse(extra.get(EXTRA_FILE))
        fmt = "torchscript"

        def load_scripted() -> torch.jit.ScriptModule:
            return torch.jit.load(str(path), map_location="cpu").eval()

        def build(size: tuple[int, int], ch: int) -> torch.export.ExportedProgram:
            return torchscript.convert(load_scripted, torch.zeros(2, ch, *size))

    elif kind == "torch.export":
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            program = load_exported_program(path, trust_pickle=trust_pickle)
        fmt = "torch.export"
        shape = _placeholder_shape(program)
        if shape is not None and len(shape) == 4:
            channels = shape[1] if isinstance(shape[1], int) else 3
            fixed_batch = shape[0]
            if isinstance(shape[2], int) and isinstance(shape[3], int):
                size_hint = (shape[2], shape[3])

        def build(size: tuple[int, int], ch: int) -> torch.export.ExportedProgram:
            return program

    elif kind in ("torch.save", "legacy"):
        module, fmt, size_hint = _load_saved(path, arch=arch, trust_pickle=trust_pickle)
        module.eval()

        def build(size: tuple[int, int], ch: int) -> torch.export.ExportedProgram:
            return _export_module(module, size, ch)

    else:  # pragma: no cover - dispatcher guards this
        raise UserError(f"not a torch model file: {path.name}")

    info = ModelInfo(
        path=path,
        format=fmt,
        runtime=f"torch {torch.__version__}",
        device=device,
        channels=channels,
        channels_last=False,
        input_size_hint=size_hint or embedded.input_size,
        fixed_batch=fixed_batch,
        static_size=fmt == "torch.export" and size_hint is not None,
        embedded=embedded,
        properties={},
    )
    if arch:
        info.properties["architecture"] = arch
    # A torch.export file is already the program; the others are converted, once per file.
    cache = ProgramCache.for_model(path, {"format": fmt, "arch": arch}) if fmt != "torch.export" else None
    return TorchAdapter(info, build, cache)


@contextmanager
def _quiet_torch() -> Iterator[None]:
    """torch's graph converters write whole graphs to stderr when they fail (through
    loggers made on the spot); the one-line error is what the user gets, so stderr is
    silenced at the file-descriptor level while they run."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with open(os.devnull, "w") as sink:
            os.dup2(sink.fileno(), 2)
            yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def _placeholder_shape(program: torch.export.ExportedProgram) -> tuple[Any, ...] | None:
    users = [s for s in program.graph_signature.input_specs if s.kind.name == "USER_INPUT"]
    if len(users) != 1:
        raise UserError(f"the exported program takes {len(users)} inputs; reportgen needs exactly one image input")
    name = users[0].arg.name
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name == name:
            val = node.meta.get("val")
            if val is None:
                return None
            # Never call int() on a SymInt: that specialises the program to its example size.
            return tuple(d if isinstance(d, int) else None for d in val.shape)
    return None


def _unwrap_state_dict(obj: Any) -> dict[str, torch.Tensor] | None:
    if isinstance(obj, dict):
        for key in ("state_dict", "model_state_dict", "model", "net", "weights"):
            inner = obj.get(key)
            if isinstance(inner, dict) and inner and all(isinstance(v, torch.Tensor) for v in inner.values()):
                obj = inner
                break
        if obj and all(isinstance(k, str) for k in obj) and all(isinstance(v, torch.Tensor) for v in obj.values()):
            prefix = "module."
            if all(k.startswith(prefix) for k in obj):
                obj = {k[len(prefix) :]: v for k, v in obj.items()}
            return obj
    return None


def _load_saved(
    path: Path, *, arch: str | None, trust_pickle: bool
) -> tuple[torch.nn.Module, str, tuple[int, int] | None]:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - weights_only refuses arbitrary objects
        if not trust_pickle:
            raise UserError(
                f"{path.name} holds pickled Python objects (such as a whole nn.Module); loading it "
                "could run arbitrary code, so reportgen refuses. Re-run with --trust-pickle only if "
                "you trust where the file came from, or export the model (ONNX, TorchScript, torch.export)"
            ) from None
        try:
            obj = torch.load(str(path), map_location="cpu", weights_only=False)
        except Exception as exc2:  # noqa: BLE001
            raise UserError(f"cannot load {path.name}: {one_line(exc2)}") from None
        del exc
    if isinstance(obj, torch.nn.Module):
        if not trust_pickle:  # pragma: no cover - weights_only cannot produce a module
            raise UserError(f"{path.name} is a pickled module; pass --trust-pickle to load it")
        return obj, "pickle", None
    state = _unwrap_state_dict(obj)
    if state is None:
        raise UserError(f"{path.name} is a torch.save file but holds neither a state_dict nor an nn.Module")
    if not arch:
        raise UserError(
            f"{path.name} holds a state_dict (weights only); name its architecture with --arch "
            "(a torchvision model name, e.g. --arch resnet18)"
        )
    return _build_arch(arch, state), "state_dict", _arch_input_size(arch)


def _build_arch(arch: str, state: dict[str, torch.Tensor]) -> torch.nn.Module:
    import torchvision

    if arch not in torchvision.models.list_models():
        raise UserError(f"unknown --arch {arch!r}: not a torchvision model name (see torchvision.models.list_models())")
    weights = [v for k, v in state.items() if k.endswith("weight") and v.ndim >= 2]
    if not weights:
        raise UserError("the state_dict holds no layer weights")
    num_classes = int(weights[-1].shape[0])
    kwargs: dict[str, Any] = {"weights": None, "num_classes": num_classes}
    if arch.startswith(("inception", "googlenet")):
        kwargs["aux_logits"] = any(k.startswith(("AuxLogits.", "aux1.", "aux2.")) for k in state)
        kwargs["init_weights"] = False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = torchvision.models.get_model(arch, **kwargs)
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"cannot build torchvision {arch}: {one_line(exc)}") from None
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).strip().splitlines()
        detail = " ".join(" ".join(first[:3]).split())[:300]
        raise UserError(f"the state_dict does not fit torchvision {arch}: {detail}") from None
    return model


def _arch_input_size(arch: str) -> tuple[int, int] | None:
    import torchvision

    try:
        weights = torchvision.models.get_model_weights(arch)
        crop = next(iter(weights)).transforms().crop_size
        side = int(crop[0])
        return (side, side)
    except Exception:  # noqa: BLE001 - metadata only; fall back to asking the user
        return None


def _export_module(module: torch.nn.Module, size: tuple[int, int], channels: int) -> torch.export.ExportedProgram:
    example = torch.zeros(2, channels, *size)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.export.export(module, (example,), dynamic_shapes=({0: torch.export.Dim.AUTO},))
    except Exception as exc:  # noqa: BLE001
        raise UserError(f"cannot trace the model into a graph (torch.export failed): {one_line(exc)}") from None


# ------------------------------------------------------------------ execution


@lru_cache(maxsize=64)
def _cell_weights(
    resolution: tuple[int, ...], cells: tuple[int, int], device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """``base.cell_weights`` on the tensor's device, made once (not per batch and layer)."""
    return torch.tensor(cell_weights(resolution, cells), device=device, dtype=dtype)


def _pool(t: torch.Tensor, layer: LayerInfo | None = None, cells: tuple[int, int] | None = None) -> torch.Tensor:
    """One vector per image, by the tensor's layout (see ``base.pooling``): the global
    mean, or the means of ``cells`` (channel-major, see ``ModelAdapter.extract``)."""
    layout = layer.layout if layer is not None else ""
    if cells is not None and layer is not None:
        weights = _cell_weights(tuple(layer.resolution), cells, t.device, t.dtype)
        if layout == CHW:
            return (t.flatten(2) @ weights).flatten(1)
        # (H, W, C) maps and (T, C) token grids: positions first.
        return (weights.T @ t.reshape(t.shape[0], -1, t.shape[-1])).transpose(1, 2).flatten(1)
    if layout == HWC:
        return t.mean(dim=(1, 2))
    if layout == TOKENS:
        return t[:, 0] if layer is not None and layer.prefix else t.mean(dim=1)
    if t.ndim >= 4:
        return t.mean(dim=tuple(range(2, t.ndim)))
    if t.ndim == 3:
        return t.mean(dim=1)
    return t


_FX_CANONICAL = {
    "permute": "permute",
    "view": "reshape",
    "reshape": "reshape",
    "_unsafe_view": "reshape",
    "flatten": "reshape",
    "squeeze": "reshape",
    "unsqueeze": "reshape",
    "cat": "concat",
    "concat": "concat",
    "bmm": "matmul",
    "matmul": "matmul",
    "mm": "matmul",
    "baddbmm": "matmul",
    "einsum": "matmul",
    "add": "add",
}


def fx_steps(nodes: list[torch.fx.Node]) -> list[GraphStep]:
    """The graph's nodes as layout inference reads them (see ``models/layouts.py``)."""
    steps = []
    for node in nodes:
        if node.op not in ("call_function", "call_method", "call_module"):
            continue
        source = node
        if node.target is operator.getitem and isinstance(node.args[0], torch.fx.Node):
            # One output of a multi-output op (batch norm, max-pool with indices): read
            # it as that op applied to the op's own inputs.
            source = node.args[0]
        name = _aten_name(source) if source.op == "call_function" else str(source.target)
        op = _FX_CANONICAL.get(name, name)
        perm = None
        if op == "permute" and len(source.args) > 1 and isinstance(source.args[1], (list, tuple)):
            perm = tuple(int(p) for p in source.args[1])
        elif op == "transpose":
            # A swap of two axes is a permutation (TorchScript's conversion keeps
            # ``transpose``, as timm's patch embedding ``flatten(2).transpose(1, 2)`` writes).
            perm = _swap_as_permutation(source)
            op = "permute" if perm is not None else op
        steps.append(GraphStep(op, [n.name for n in source.all_input_nodes], [node.name], perm))
    return steps


def _swap_as_permutation(node: torch.fx.Node) -> tuple[int, ...] | None:
    """``transpose(x, a, b)`` as the permutation of all axes it is; None when the rank
    or the axes are not known from the graph."""
    value = node.meta.get("val")
    ndim = getattr(value, "ndim", None)
    if not isinstance(ndim, int) or len(node.args) < 3:
        return None
    a, b = node.args[1], node.args[2]
    if not isinstance(a, int) or not isinstance(b, int):
        return None
    perm = list(range(ndim))
    perm[a % ndim], perm[b % ndim] = perm[b % ndim], perm[a % ndim]
    return tuple(perm)


def _module_path(node: torch.fx.Node) -> str:
    """The innermost module a node was traced in (``layer4.1.relu``), "" when unknown."""
    stamped = (node.meta.get("custom") or {}).get(MODULE_KEY)
    if isinstance(stamped, str):
        return stamped
    stack = node.meta.get("nn_module_stack") or {}
    for key, value in reversed(list(stack.items())):
        path = value[0] if isinstance(value, tuple) and value else ""
        if key.startswith("_empty_nn_module_stack") or not isinstance(path, str):
            continue
        return path.split("@")[0]
    return ""


class _Executor:
    """Runs an FX graph node by node, tapping and cutting where asked.

    ``torch.fx.Interpreter`` would do, but recomputes nothing we can skip and frees
    nothing early; this keeps a per-node list of values that die after it.

    Every ``view`` runs as ``reshape``: the decomposition wrote a reshape as a view where
    the traced tensor was contiguous, and with gradients on (Grad-CAM's head) an
    attention kernel may hand back other strides (timm's BEiT traced to TorchScript).
    The graph is functional, so a copy where a view cannot be made gives the same values.
    """

    ALWAYS: ClassVar[dict[Any, Any]] = {torch.ops.aten.view.default: torch.ops.aten.reshape.default}

    def __init__(self, gm: torch.fx.GraphModule):
        self.gm = gm
        self.nodes = list(gm.graph.nodes)
        self.attrs = {n: _fetch_attr(gm, n.target) for n in self.nodes if n.op == "get_attr"}
        self.index = {n: i for i, n in enumerate(self.nodes)}

    def run(
        self,
        nodes: Iterable[torch.fx.Node],
        env: dict[torch.fx.Node, Any],
        inputs: list[Any] | None = None,
        on_value: Callable[[torch.fx.Node, Any], Any] | None = None,
        keep: set[torch.fx.Node] | None = None,
        replace: dict[Any, Callable[..., Any]] | None = None,
    ) -> Any:
        nodes = list(nodes)
        last_use: dict[torch.fx.Node, int] = {}
        for i, node in enumerate(nodes):
            for src in node.all_input_nodes:
                last_use[src] = i
        keep = keep or set()
        # Parameters are available to any slice of the graph (a head needs its weights).
        for node, value in self.attrs.items():
            env.setdefault(node, value)
        pending = list(inputs or [])
        result = None
        for i, node in enumerate(nodes):
            op = node.op
            if op == "placeholder":
                value = pending.pop(0)
            elif op == "get_attr":
                value = env[node]  # the parameter, or what the caller put in its place
            elif op == "output":
                result = torch.fx.node.map_arg(node.args[0], lambda n: env[n])
                break
            else:
                args = torch.fx.node.map_arg(node.args, lambda n: env[n])
                kwargs = torch.fx.node.map_arg(node.kwargs, lambda n: env[n])
                if op == "call_function":
                    fn = replace.get(node.target, node.target) if replace else node.target
                    fn = self.ALWAYS.get(fn, fn)
                    value = fn(*args, **kwargs)
                elif op == "call_method":
                    obj, *rest = args
                    value = getattr(obj, node.target)(*rest, **kwargs)
                else:  # call_module
                    value = self.gm.get_submodule(node.target)(*args, **kwargs)
            if on_value is not None:
                replaced = on_value(node, value)
                if replaced is not None:
                    value = replaced
            env[node] = value
            for src in node.all_input_nodes:
                if last_use.get(src) == i and src not in keep and src.op != "get_attr":
                    env.pop(src, None)
        return result


def _fetch_attr(gm: torch.nn.Module, target: str) -> Any:
    obj: Any = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


def _keep_logits_output(gm: torch.fx.GraphModule, spec: Any) -> None:
    """A model that returns several named outputs (transformers' ``ImageClassifierOutput``,
    a dict) is read by its ``logits`` entry: the graph is made to return that one.  A
    tuple is read by its first tensor, as before; nothing else changes."""
    context = getattr(spec, "context", None)
    children = getattr(spec, "children_specs", None)
    if not isinstance(context, (list, tuple)) or "logits" not in context or not children:
        return
    position = list(context).index("logits")
    if position >= len(children) or children[position].num_leaves != 1:
        return
    leaf = sum(child.num_leaves for child in children[:position])
    output = next(n for n in gm.graph.nodes if n.op == "output")
    leaves, _ = torch.utils._pytree.tree_flatten(output.args[0])
    if leaf < len(leaves) and isinstance(leaves[leaf], torch.fx.Node):
        output.args = ((leaves[leaf],),)
        gm.graph.eliminate_dead_code()
        gm.recompile()


def _first_tensor(value: Any) -> torch.Tensor:
    leaves, _ = torch.utils._pytree.tree_flatten(value)
    for leaf in leaves:
        if isinstance(leaf, torch.Tensor):
            return leaf
    raise UserError("the model returned no tensor")


def _as_scores(out: torch.Tensor) -> torch.Tensor:
    if out.ndim > 2 and all(s == 1 for s in out.shape[2:]):
        out = out.reshape(out.shape[0], out.shape[1])
    if out.ndim == 1:
        out = out[:, None]
    if out.ndim != 2:
        raise UserError(f"the model's output has shape {tuple(out.shape)}; expected one score per class (N, K)")
    return out


class TorchAdapter(ModelAdapter):
    """Any torch model, run from its functional ATen graph."""

    def __init__(
        self,
        info: ModelInfo,
        build: Callable[[tuple[int, int], int], torch.export.ExportedProgram],
        cache: ProgramCache | None = None,
    ):
        self.info = info
        self._build = build
        self._cache = cache  # the converted, decomposed program of earlier runs (see program_cache)
        self._layers: list[LayerInfo] = []
        self._batched: set[str] = set()
        self._num_outputs = 0
        self._exec: _Executor | None = None
        self._by_name: dict[str, torch.fx.Node] = {}
        self._score_node: torch.fx.Node | None = None
        self.device = torch.device(info.device)

    # -- preparation

    def prepare(self, size: tuple[int, int]) -> None:
        cached = self._cache.load(size, self.info.channels) if self._cache is not None else None
        program = cached if cached is not None else self._converted(size)
        try:
            with warnings.catch_warnings(), _quiet_torch():
                warnings.simplefilter("ignore")
                if self.device.type != "cpu":
                    from torch.export.passes import move_to_device_pass

                    program = move_to_device_pass(program, self.device)
                gm = program.module()
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001
            raise UserError(f"cannot prepare the model graph: {one_line(exc)}") from None
        for p in gm.parameters():
            p.requires_grad_(False)
        _keep_logits_output(gm, program.call_spec.out_spec)
        self._exec = _Executor(gm)
        placeholders = [n for n in self._exec.nodes if n.op == "placeholder"]
        if len(placeholders) != 1:
            raise UserError(f"the model takes {len(placeholders)} inputs; reportgen needs exactly one image input")
        self._by_name = {n.name: n for n in self._exec.nodes}
        self._discover(placeholders[0], size)

    def _converted(self, size: tuple[int, int]) -> torch.export.ExportedProgram:
        """The model as a functional ATen program at ``size``, converted now (and kept in
        the program cache for the next run)."""
        try:
            with _quiet_torch():
                program = self._build(size, self.info.channels)
        except UserError:
            raise
        except Exception as exc:  # noqa: BLE001 - a converter or exporter failure
            hint = (
                " (torch cannot convert this TorchScript file; export the model with torch.export or ONNX instead)"
                if self.info.format == "torchscript"
                else ""
            )
            raise UserError(
                f"cannot turn the model into a graph reportgen can run{hint}: {one_line(exc, 200)}"
            ) from None
        # Each node's module, stamped where the decomposition carries it along: its own
        # ``nn_module_stack`` is not always (functionalisation replays a view -- timm
        # MobileNetV3's ``flatten`` -- where the next module uses it, and records it there).
        for node in program.graph.nodes:
            if node.op == "call_function" and MODULE_KEY not in (node.meta.get("custom") or {}):
                path = _module_path(node)
                if path:
                    node.meta.setdefault("custom", {})[MODULE_KEY] = path
        try:
            with warnings.catch_warnings(), _quiet_torch():
                warnings.simplefilter("ignore")
                # Functional ATen: a tapped tensor is never changed in place afterwards.
                program = program.run_decompositions({})
        except Exception as exc:  # noqa: BLE001
            raise UserError(f"cannot prepare the model graph: {one_line(exc)}") from None
        if self._cache is not None:
            self._cache.store(size, self.info.channels, program)
        return program

    def _discover(self, placeholder: torch.fx.Node, size: tuple[int, int]) -> None:
        assert self._exec is not None
        depends = {placeholder}
        for node in self._exec.nodes:
            if any(src in depends for src in node.all_input_nodes):
                depends.add(node)
        # Two probes of different batch sizes: a tensor is per-image only if its first
        # size follows the batch in both (a (2, 7) table of coordinates in Swin is not).
        batches = [self.info.fixed_batch] if self.info.fixed_batch else [2, 3]
        probes: list[dict[torch.fx.Node, tuple[int, ...]]] = []
        floats: set[str] = set()
        out: Any = None
        for batch in batches:
            shapes: dict[torch.fx.Node, tuple[int, ...]] = {}

            def record(node: torch.fx.Node, value: Any, batch: int = batch, shapes: dict = shapes) -> None:
                if isinstance(value, torch.Tensor) and value.is_floating_point():
                    floats.add(node.name)
                if (
                    node in depends
                    and isinstance(value, torch.Tensor)
                    and value.is_floating_point()
                    and value.ndim >= 1
                    and value.shape[0] == batch
                ):
                    shapes[node] = tuple(int(s) for s in value.shape[1:])

            generator = torch.Generator().manual_seed(0)
            example = torch.randn(batch, self.info.channels, *size, generator=generator).to(self.device)
            try:
                with torch.inference_mode():
                    result = self._exec.run(self._exec.nodes, {}, [example], on_value=record)
            except Exception as exc:  # noqa: BLE001
                if not probes:
                    raise UserError(
                        f"the model fails on a {size[0]}x{size[1]} input with {self.info.channels} channel(s): "
                        f"{one_line(exc)}"
                    ) from None
                break  # runs at the first batch size only: keep what that probe saw
            probes.append(shapes)
            out = result if out is None else out
        self.min_batch = 1 if self.info.fixed_batch else self._smallest_batch(size)
        shapes = {n: shape for n, shape in probes[0].items() if all(p.get(n) == shape for p in probes[1:])}
        scores = _as_scores(_first_tensor(out))
        self._num_outputs = int(scores.shape[1])
        output_nodes = {n for n in self._exec.nodes if n.op == "output"}
        self._batched = {n.name for n in shapes}
        found = _logit_node(self._exec.nodes)
        self._score_node, self.score_activation = None, None
        if found is not None and found[0].name in self._batched:
            self._score_node, self.score_activation = found
        self.score_layer = self._score_node.name if self._score_node is not None else None
        candidates = [
            LayerInfo(node.name, shape, _op_name(node), module=_module_path(node))
            for node, shape in shapes.items()
            if node.op != "placeholder" and 1 <= len(shape) <= 3 and not (node.users.keys() <= output_nodes)
        ]
        self._layers = annotate_layers(
            candidates,
            fx_steps(self._exec.nodes),
            {n.name: shape for n, shape in shapes.items()},
            floats,
            placeholder.name,
            False,
        )

    def _smallest_batch(self, size: tuple[int, int]) -> int:
        """1, or 2 when a graph that runs batches of 2 and 3 fails on a single image (a
        TorchScript conversion can keep a guard that its batch of 2 made true, as
        torchvision's Swin traced does): single images then run beside a copy."""
        assert self._exec is not None
        example = torch.randn(1, self.info.channels, *size, generator=torch.Generator().manual_seed(0))
        try:
            with torch.inference_mode():
                self._exec.run(self._exec.nodes, {}, [example.to(self.device)])
        except Exception:  # noqa: BLE001 - any failure: the graph needs company
            self.notes = (
                "the converted graph fails on a batch of one image, so a single image is run beside a copy of itself",
            )
            return 2
        return 1

    # -- queries

    def layers(self) -> list[LayerInfo]:
        return list(self._layers)

    @property
    def num_outputs(self) -> int:
        return self._num_outputs

    def _node(self, name: str) -> torch.fx.Node:
        node = self._by_name.get(name)
        if node is None or name not in self._batched:
            raise UserError(f"no layer named {name!r} in this model (see `reportgen layers MODEL`)")
        return node

    # -- running

    def extract(
        self, pixels: np.ndarray, layers: list[str], cells: Mapping[str, tuple[int, int]] | None = None
    ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        assert self._exec is not None, "prepare() first"
        wanted = {self._node(name): name for name in layers}
        info = {layer.name: layer for layer in self._layers}
        grids = dict(cells or {})

        def run(arrays: list[np.ndarray]) -> list[np.ndarray]:
            assert self._exec is not None
            captured: dict[str, torch.Tensor] = {}

            def tap(node: torch.fx.Node, value: Any) -> None:
                name = wanted.get(node)
                if name is not None:
                    captured[name] = _pool(value, info.get(name), grids.get(name)).float()

            x = torch.from_numpy(arrays[0]).to(self.device, non_blocking=True)
            with torch.inference_mode():
                out = self._exec.run(self._exec.nodes, {}, [x], on_value=tap)
                scores = _as_scores(_first_tensor(out)).float()
            return [scores.cpu().numpy()] + [captured[name].cpu().numpy() for name in layers]

        outs = run_in_batches_of(run, [pixels], self.info.fixed_batch, self.min_batch)
        return outs[0], dict(zip(layers, outs[1:], strict=True))

    def split(self, layer: str) -> SplitModel:
        assert self._exec is not None, "prepare() first"
        node = self._node(layer)
        info = next((item for item in self._layers if item.name == layer), None)
        if info is None:
            raise UserError(f"layer {layer!r} is not a tensor reportgen can explain (see `reportgen layers MODEL`)")
        return map_view(TorchSplit(self, node), info)

    def differentiable(self) -> TorchDifferentiable:
        assert self._exec is not None, "prepare() first"
        return TorchDifferentiable(self)


# ATen ops that pass class scores through unchanged in value (an exporter's tail).
_PASSTHROUGH = {
    "view", "reshape", "_unsafe_view", "clone", "_to_copy", "squeeze", "unsqueeze", "flatten",
    "alias", "contiguous", "detach", "dropout", "lift_fresh_copy", "to",
}  # fmt: skip
_SOFTMAX = {"softmax", "_softmax", "log_softmax", "_log_softmax", "_safe_softmax"}
_SIGMOID = {"sigmoid"}


def _aten_name(node: torch.fx.Node) -> str:
    """``aten.view.default`` -> ``view``."""
    name = getattr(node.target, "__name__", str(node.target))
    return name.split(".")[0]


def _logit_node(nodes: list[torch.fx.Node]) -> tuple[torch.fx.Node, str] | None:
    """The input of the softmax (or sigmoid) that ends the graph, looking back from the
    first output through value-preserving ops, and which it is ("softmax", "sigmoid");
    None when the output is neither."""
    outputs = [n for n in nodes if n.op == "output"]
    if not outputs:
        return None
    leaves, _ = torch.utils._pytree.tree_flatten(outputs[0].args[0])
    node = next((leaf for leaf in leaves if isinstance(leaf, torch.fx.Node)), None)
    while node is not None and node.op == "call_function":
        name = _aten_name(node)
        first = node.args[0] if node.args else None
        if not isinstance(first, torch.fx.Node):
            return None
        if name in _SOFTMAX:
            return first, "softmax"
        if name in _SIGMOID:
            return first, "sigmoid"
        if name not in _PASSTHROUGH:
            return None
        node = first
    return None


def _op_name(node: torch.fx.Node) -> str:
    target = node.target
    if node.op == "call_function":
        if target is operator.getitem:
            src = node.args[0]
            return _op_name(src) if isinstance(src, torch.fx.Node) else "getitem"
        name = getattr(target, "__name__", str(target))
        return name.split(".")[0].lstrip("_")
    return str(target)


class TorchSplit(SplitModel):
    """A torch graph cut at one node; the head is differentiated by autograd.

    The head holds the nodes after the cut.  What it reads from before the cut
    (skip connections) travels in ``rest``; values before the cut that are not per-image
    tensors (a batch size read by ``sym_size``, say) are recomputed in the head so the
    head accepts any batch size.
    """

    differentiable = True

    def __init__(self, adapter: TorchAdapter, target: torch.fx.Node):
        assert adapter._exec is not None
        self.adapter = adapter
        self.layer = target.name
        self.target = target
        self.min_batch = adapter.min_batch
        ex = adapter._exec
        nodes = ex.nodes
        cut = ex.index[target]
        body = nodes[: cut + 1]
        head = [n for n in nodes[cut + 1 :] if n.op != "placeholder"]
        head_set = set(head)
        batched = adapter._batched
        moved: set[torch.fx.Node] = set()
        needed = self._inputs_from_body(head, head_set)
        changed = True
        while changed:
            changed = False
            for node in list(needed):
                if node is target or node.op in ("get_attr", "placeholder"):
                    continue
                if node.name not in batched and node not in moved:
                    moved.add(node)
                    changed = True
            needed = self._inputs_from_body(head + sorted(moved, key=ex.index.__getitem__), head_set | moved)
        self.head_nodes = sorted(head_set | moved, key=ex.index.__getitem__)
        # The head ends at the logits where the graph ends in a softmax: the maps explain
        # the class score, not a probability that saturates.
        self.score = adapter._score_node
        if self.score is not None and ex.index[self.score] > cut:
            self.head_nodes = [n for n in self.head_nodes if ex.index[n] <= ex.index[self.score]]
        else:
            self.score = None
        self.rest_nodes = sorted(
            (n for n in needed if n is not target and n.op != "get_attr"), key=ex.index.__getitem__
        )
        self.body_nodes = body
        self.weights: dict[torch.fx.Node, torch.Tensor] = {}  # parameters replaced in the head (``randomised``)

    @staticmethod
    def _inputs_from_body(head: list[torch.fx.Node], head_set: set[torch.fx.Node]) -> set[torch.fx.Node]:
        return {src for n in head for src in n.all_input_nodes if src not in head_set}

    def _run_body(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[torch.fx.Node, torch.Tensor]]:
        ex = self.adapter._exec
        assert ex is not None
        env: dict[torch.fx.Node, Any] = {}
        keep = set(self.rest_nodes) | {self.target}
        ex.run(self.body_nodes, env, [x], keep=keep)
        rest = {n: env[n] for n in self.rest_nodes}
        return env[self.target], rest

    def _run_head(self, a: torch.Tensor, rest: dict[torch.fx.Node, Any]) -> torch.Tensor:
        ex = self.adapter._exec
        assert ex is not None
        env: dict[torch.fx.Node, Any] = {**rest, **self.weights}
        env[self.target] = a
        keep = set(rest) | {self.target} | ({self.score} if self.score is not None else set())
        out = ex.run(self.head_nodes, env, keep=keep)
        return _as_scores(env[self.score] if self.score is not None else _first_tensor(out))

    def body(self, pixels: np.ndarray) -> tuple[np.ndarray, Any]:
        x = torch.from_numpy(pixels).to(self.adapter.device)
        with torch.inference_mode():
            a, rest = self._run_body(x)
        return a.float().cpu().numpy(), rest

    def take(self, rest: Any, index: np.ndarray) -> Any:
        idx = torch.as_tensor(index, dtype=torch.long)
        out = {}
        for node, value in rest.items():
            if isinstance(value, torch.Tensor) and node.name in self.adapter._batched:
                out[node] = value[idx.to(value.device)]
            else:
                out[node] = value
        return out

    def head(self, activations: np.ndarray, rest: Any) -> np.ndarray:
        a = torch.from_numpy(np.ascontiguousarray(activations)).to(self.adapter.device)
        with torch.inference_mode():
            return self._run_head(a, rest).float().cpu().numpy()

    def randomised(self, seed: int) -> TorchSplit:
        ex = self.adapter._exec
        assert ex is not None
        read = {n for n in self.head_nodes if n.op == "get_attr"}
        read |= {src for n in self.head_nodes for src in n.all_input_nodes if src.op == "get_attr"}
        rng = np.random.default_rng(seed)
        clone = copy.copy(self)
        clone.weights = {}
        for node in sorted(read, key=ex.index.__getitem__):
            value = ex.attrs[node]
            if isinstance(value, torch.Tensor) and value.is_floating_point() and value.numel() >= 2:
                order = torch.from_numpy(rng.permutation(value.numel())).to(value.device)
                clone.weights[node] = value.detach().reshape(-1)[order].reshape(value.shape)
        clone.shuffled = sum(v.numel() for v in clone.weights.values())
        return clone

    def gradcam_inputs(self, pixels: np.ndarray, targets: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Activations, gradients and scores in one pass: body without autograd, head with."""
        x = torch.from_numpy(pixels).to(self.adapter.device)
        with torch.no_grad():
            a, rest = self._run_body(x)
        a = a.detach().requires_grad_(True)
        try:
            with torch.enable_grad():
                scores = self._run_head(a, rest)
                picked = scores.gather(1, torch.as_tensor(targets, device=a.device).long()[:, None]).sum()
                (grad,) = torch.autograd.grad(picked, a)
        except (RuntimeError, NotImplementedError) as exc:
            if "derivative for" not in str(exc):
                raise
            raise UserError(
                f"torch cannot differentiate this graph after {self.layer}: {one_line(exc, 120)} (a model traced "
                "under torch.no_grad keeps attention's inference-only fast path; trace it with gradients on, "
                "or export it with torch.export or ONNX)"
            ) from None
        return a.detach().float().cpu().numpy(), grad.float().cpu().numpy(), scores.detach().float().cpu().numpy()


class TorchDifferentiable(Differentiable):
    """Input gradients through the functional graph, with guided ReLUs on request."""

    route = "autograd through the exported graph"

    def __init__(self, adapter: TorchAdapter):
        self.adapter = adapter

    def gradient(
        self, pixels: np.ndarray, layer: str, units: np.ndarray, *, reduce: str = "mean", guided: bool = False
    ) -> tuple[np.ndarray, np.ndarray]:
        adapter = self.adapter
        ex = adapter._exec
        assert ex is not None
        # Output units are read from the logits where the graph ends in a softmax.
        target = adapter._score_node if layer == LOGITS_LAYER else adapter._node(layer)
        replace = {torch.ops.aten.relu.default: GuidedRelu.apply} if guided else None

        def forward(x: torch.Tensor) -> torch.Tensor:
            captured: dict[str, torch.Tensor] = {}

            def tap(node: torch.fx.Node, value: Any) -> None:
                if node is target:
                    captured["a"] = value

            out = ex.run(ex.nodes, {}, [x], on_value=tap, replace=replace)
            if target is None:
                return _as_scores(_first_tensor(out))
            return _as_scores(captured["a"]) if layer == LOGITS_LAYER else captured["a"]

        return unit_gradients(
            forward,
            pixels,
            units,
            reduce=reduce,
            device=adapter.device,
            batch=adapter.info.fixed_batch,
            min_batch=adapter.min_batch,
        )


def save_metadata_extra(meta: dict[str, Any]) -> dict[str, str]:
    """The ``_extra_files`` argument that embeds reportgen hints in a TorchScript file."""
    return {EXTRA_FILE: json.dumps(meta)}
