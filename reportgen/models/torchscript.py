"""TorchScript files brought to an ``ExportedProgram``, with their module paths kept.

torch's own converter (``torch._export.converter.TS2EPConverter``) does the work: it
turns the TorchScript graph into an FX graph, then re-exports that graph.  Two things get
lost on the way, and this module puts them back:

* **Module paths.**  A traced TorchScript graph records, on every node, the module call
  it was traced in (its *scope*: ``ResNet::/Sequential::layer4/BasicBlock::1``), but the
  re-export starts from a flat FX graph, so every node ends up in the root module.  Each
  FX node the converter makes is stamped with its TorchScript node's path in
  ``node.meta["custom"]``, which the re-export and ``run_decompositions`` carry along.
* **Sizes that the trace turned into tensors.**  Tracing records ``x.size(1) % 7`` as
  tensor arithmetic ending in ``int(...)`` (Swin's window padding does exactly this; a
  ViT's ``expand(n, ...)`` of its class token reads the batch size the same way); to
  ``torch.export`` an ``int`` read from a tensor is data-dependent, and a later guard on
  it fails.  Before the re-export, a graph that has such reads is run at three batch
  sizes on different random inputs, and a read that follows ``a * batch + b`` in all
  three is replaced by that expression of the input's batch size (``a = 0``: a constant
  the image size decides; ``a = 1, b = 0``: the batch size, which the export tracks as a
  size).  Other reads are left as they are.  A graph without such reads is re-exported
  exactly as torch's converter does it.
"""

from __future__ import annotations

import operator
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
import torch.fx

MODULE_KEY = "reportgen.module"  # where the module path lives in node.meta["custom"]


def module_path_of_scope(scope: str, paths: dict[str, str] | None = None) -> str:
    """``ResNet::/Sequential::layer4/BasicBlock::1/Conv2d::conv2`` -> ``layer4.1.conv2``.

    Each segment is ``type::attribute``; the first is the root module (no attribute).
    With the model's module ``paths`` (path -> class name), a container the trace left
    out is put back: a ``ModuleList`` iterated in Python (``for blk in self.blocks``, as
    timm's EVA does) is never called, so its blocks' scopes read ``2.norm1`` where the
    module is ``blocks.2.norm1``, the name every other format gives it.
    """
    segments = [segment.rpartition("::") for segment in scope.split("/")[1:]]
    chain = [(kind.rpartition(".")[2], name) for kind, _, name in segments if name]
    if paths is None:
        return ".".join(name for _, name in chain)
    path = ""
    for i, (kind, name) in enumerate(chain):
        direct = f"{path}.{name}" if path else name
        if direct not in paths:
            prefix = f"{path}." if path else ""
            inside = [
                p
                for p in paths
                if p.startswith(prefix) and p.endswith(f".{name}") and p.count(".") == direct.count(".") + 1
            ]
            # ``0`` may sit in several containers (``stem.0``, ``stages.0``; transformers'
            # ConvNeXt stage holds ``downsampling_layer.0`` and ``layers.0``): the one of
            # the scope's class, then the one that holds the rest of the chain.
            if len(inside) > 1:
                inside = [p for p in inside if paths[p] == kind] or inside
            if len(inside) > 1 and i + 1 < len(chain):
                inside = [p for p in inside if f"{p}.{chain[i + 1][1]}" in paths]
            if len(inside) == 1:
                direct = inside[0]
        path = direct
    return path


def convert(load: Callable[[], torch.jit.ScriptModule], example: torch.Tensor) -> torch.export.ExportedProgram:
    """Convert the TorchScript module that ``load`` reads, tracing it with ``example``
    (batch >= 2).

    ``load`` is called once per conversion: a conversion flattens the scopes of the
    module's graphs, which every copy of a loaded module shares.  Raises whatever torch
    raises when it cannot convert the graph.
    """
    # Imported here: the converter module alone takes seconds to import.
    from torch._export import converter as ts_converter

    module = load()
    paths = {name: _class_name(child) for name, child in module.named_modules() if name}
    with warnings.catch_warnings(), _scoped_graph_converter(ts_converter, paths):
        warnings.simplefilter("ignore")
        return _size_folding(ts_converter)(module, (example,)).convert()


def _class_name(module: torch.nn.Module) -> str:
    """The class a scope names: a loaded ScriptModule keeps it as ``original_name``."""
    return str(getattr(module, "original_name", None) or type(module).__name__)


@contextmanager
def _scoped_graph_converter(ts_converter: Any, paths: dict[str, str]) -> Iterator[None]:
    """Make ``TS2EPConverter`` build its FX graph with :class:`_ScopedGraphConverter`.

    ``TS2EPConverter.convert`` names the graph-converter class through the module, so the
    module attribute is what has to change, for the duration of one conversion.
    """
    base = ts_converter.TS2FXGraphConverter

    class _ScopedGraphConverter(base):  # type: ignore[misc, valid-type]
        """Stamps each FX node with the module path of the TorchScript node it came from."""

        def convert_node(self, node: torch._C.Node) -> None:
            super().convert_node(node)
            path = module_path_of_scope(node.scopeName(), paths)
            if not path:
                return
            for output in node.outputs():
                made = self.name_to_node.get(output.debugName())
                if isinstance(made, torch.fx.Node):
                    made.meta.setdefault("custom", {})[MODULE_KEY] = path

    ts_converter.TS2FXGraphConverter = _ScopedGraphConverter
    try:
        yield
    finally:
        ts_converter.TS2FXGraphConverter = base


def _size_folding(ts_converter: Any) -> type:
    """``TS2EPConverter`` that replaces the shape-decided tensor-to-integer reads of the
    converted graph by sizes before the re-export (see the module docstring)."""

    class SizeFoldingConverter(ts_converter.TS2EPConverter):  # type: ignore[misc, name-defined]
        def retrace_as_exported_program(self, gm: torch.fx.GraphModule, name_to_constant: dict[str, Any]) -> Any:
            fold_size_reads(gm, self.sample_args[0])
            return super().retrace_as_exported_program(gm, name_to_constant)

    return SizeFoldingConverter


def fold_size_reads(gm: torch.fx.GraphModule, example: torch.Tensor) -> int:
    """Replace the tensor-to-integer reads of ``gm`` that the input's shape decides by the
    size they are: the graph runs at three batch sizes, on different random inputs, and a
    read that follows ``a * batch + b`` in all three (``a = 0``: the image size alone
    decides it) becomes that expression of the input's batch size.  Return how many reads
    were replaced."""
    reads = [n for n in gm.graph.nodes if n.target is torch.ops.aten._local_scalar_dense.default]
    placeholders = [n for n in gm.graph.nodes if n.op == "placeholder"]
    if not reads or not placeholders:
        return 0
    first = example.shape[0]
    batches = (first, first + 1, first + 3)
    runs = []
    for batch in batches:
        generator = torch.Generator().manual_seed(batch)
        inputs = torch.randn((batch, *example.shape[1:]), generator=generator, dtype=example.dtype)
        runs.append(_scalar_reads(gm, inputs))
    with gm.graph.inserting_after(placeholders[-1]):
        batch_size = gm.graph.call_function(torch.ops.aten.sym_size.int, (placeholders[0], 0))
    replaced = 0
    for node in reads:
        values = [run.get(node) for run in runs]
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            continue
        slope = values[1] - values[0]
        offset = values[0] - slope * batches[0]
        if any(v != slope * b + offset for v, b in zip(values, batches, strict=True)):
            continue
        if slope == 0:
            _replace_by_constant(node, offset)
        else:
            with gm.graph.inserting_before(node):
                node.replace_all_uses_with(_affine(gm.graph, batch_size, slope, offset))
        gm.graph.erase_node(node)
        replaced += 1
    if not batch_size.users:
        gm.graph.erase_node(batch_size)
    gm.recompile()
    return replaced


def _affine(graph: torch.fx.Graph, size: torch.fx.Node, slope: int, offset: int) -> torch.fx.Node:
    """``slope * size + offset`` as graph nodes (at the graph's insertion point)."""
    value = size if slope == 1 else graph.call_function(operator.mul, (size, slope))
    return value if offset == 0 else graph.call_function(operator.add, (value, offset))


def _replace_by_constant(node: torch.fx.Node, value: int) -> None:
    """Give every user of ``node`` the number ``value`` in its place."""
    for user in list(node.users):
        user.args = torch.fx.node.map_arg(user.args, lambda a: value if a is node else a)
        user.kwargs = torch.fx.node.map_arg(user.kwargs, lambda a: value if a is node else a)


def _scalar_reads(gm: torch.fx.GraphModule, inputs: torch.Tensor) -> dict[torch.fx.Node, Any]:
    """The value of every tensor-to-Python-number read when ``gm`` runs on ``inputs``."""
    reads: dict[torch.fx.Node, Any] = {}

    class Recorder(torch.fx.Interpreter):
        def run_node(self, n: torch.fx.Node) -> Any:
            value = super().run_node(n)
            if n.target is torch.ops.aten._local_scalar_dense.default:
                reads[n] = value
            return value

    with torch.no_grad():
        Recorder(gm).run(inputs)
    return reads
