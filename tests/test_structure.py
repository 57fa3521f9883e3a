"""The package's import graph: no cycle, and every arrow points down the stages.

Read from the source (every ``import`` statement, those inside functions and under
``TYPE_CHECKING`` included), so a lazy import cannot hide an upward dependency.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "reportgen"

# The stages, lowest first: a module may import its own rank or lower, never higher.
RANKS: list[tuple[int, list[str]]] = [
    (0, ["reportgen", "reportgen.errors", "reportgen.util", "reportgen.progress", "reportgen.resources"]),
    (0, ["reportgen.clock", "reportgen.interrupts", "reportgen.outputs", "reportgen.image_stats"]),
    (1, ["reportgen.models"]),  # load: the model adapters (torch and onnxruntime live here)
    (
        2,
        ["reportgen.data", "reportgen.labels", "reportgen.manifest", "reportgen.hf_dataset"],
    ),  # load: images, lists, labels
    (3, ["reportgen.extract", "reportgen.map_model", "reportgen.ray_engine"]),  # extract (here or on Ray); maps
    (4, ["reportgen.analyses"]),  # analyses: arrays in, dataclasses of numbers out
    (5, ["reportgen.options", "reportgen.config"]),  # the command line's options, the audit's configuration
    (6, ["reportgen.report", "reportgen.thumbs", "reportgen.figures", "reportgen.overlay"]),  # the report's shape
    (7, ["reportgen.sections", "reportgen.pictures", "reportgen.compare"]),
    (8, ["reportgen.pipeline", "reportgen.explain"]),  # orchestration: computes, writes nothing
    (9, ["reportgen.render"]),  # HTML and JSON from what the orchestration returns
    (10, ["reportgen.cli", "reportgen.__main__"]),
]


def module_names() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def imports(path: Path, name: str, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``path`` imports (a ``from X import Y`` of a submodule
    Y counts as importing X.Y)."""
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in modules else base)
    return {m for m in found if m in modules and m != name}


def rank(name: str) -> int:
    best = None
    for value, prefixes in RANKS:
        for prefix in prefixes:
            if (name == prefix or name.startswith(prefix + ".")) and (best is None or len(prefix) > len(best[1])):
                best = (value, prefix)
    assert best is not None, f"{name} has no place in RANKS: add it"
    return best[0]


def graph() -> dict[str, set[str]]:
    modules = module_names()
    return {name: imports(path, name, modules) for name, path in modules.items()}


def test_every_import_points_down_the_stages() -> None:
    upward = [
        f"{name} (stage {rank(name)}) imports {dep} (stage {rank(dep)})"
        for name, deps in sorted(graph().items())
        for dep in sorted(deps)
        if rank(dep) > rank(name)
    ]
    assert not upward, "\n".join(upward)


def test_the_import_graph_has_no_cycle() -> None:
    edges = graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles: list[str] = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(edges[node]):
            if state.get(dep) == 1:
                cycles.append(" -> ".join([*path[path.index(dep) :], dep]))
            elif dep not in state:
                visit(dep, [*path, dep])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert not cycles, "\n".join(cycles)


def test_the_checker_sees_lazy_and_type_checking_imports(tmp_path: Path) -> None:
    """The reader itself: imports inside functions and under TYPE_CHECKING count, and a
    ``from package import submodule`` is an arrow to the submodule."""
    source = tmp_path / "mod.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from reportgen.pipeline import Clock\n"
        "def f():\n    from reportgen.models import torchscript\n    import reportgen.render\n"
    )
    modules = module_names()
    assert imports(source, "reportgen.mod", modules) == {
        "reportgen.pipeline",
        "reportgen.models.torchscript",
        "reportgen.render",
    }


def test_other_packages_import_what_the_models_package_exports() -> None:
    """Outside ``models/``, code imports ``reportgen.models`` (its ``__all__``), never one of
    its modules: the adapters' insides can change without touching the rest."""
    edges = graph()
    past = [
        f"{name} imports {dep}"
        for name, deps in sorted(edges.items())
        if not name.startswith("reportgen.models")
        for dep in sorted(deps)
        if dep.startswith("reportgen.models.")
    ]
    assert not past, "\n".join(past)
