"""The edge modules import one another without cycles: every import counts (module level,
inside functions, under TYPE_CHECKING), read from the source, so a cycle that Python would
tolerate at run time (a late or type-only import) cannot come back either."""

from __future__ import annotations

import ast
from pathlib import Path

EDGE = Path(__file__).resolve().parents[1] / "edge"


def edge_imports(path: Path, modules: set[str]) -> set[str]:
    """The edge modules that `path` imports, wherever the import statement is."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names if a.name.startswith("edge.")]
            found.update(name.split(".")[1] for name in names)
        elif isinstance(node, ast.ImportFrom):
            if node.level > 1:
                continue  # edge/ is flat: nothing above it is an edge module
            package = node.module if node.level == 0 else f"edge.{node.module or ''}"
            parts = (package or "").rstrip(".").split(".")
            if parts[0] != "edge":
                continue
            if len(parts) > 1:  # from .x import y / from edge.x import y
                found.add(parts[1])
            else:  # from . import x / from edge import x
                found.update(a.name for a in node.names)
    return found & modules


def import_graph() -> dict[str, set[str]]:
    modules = {p.stem for p in EDGE.glob("*.py")}
    return {p.stem: edge_imports(p, modules) - {p.stem} for p in EDGE.glob("*.py")}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as [a, b, ..., a], or None (depth-first, three colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return [*path[path.index(dep):], dep]
            if dep not in state and (cycle := visit(dep)) is not None:
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_the_parser_sees_every_kind_of_import(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text(
        "from typing import TYPE_CHECKING\n"
        "from . import codec\n"
        "from .bundle import Manifest\n"
        "import edge.engine\n"
        "from edge.errors import EdgeError\n"
        "if TYPE_CHECKING:\n"
        "    from .service import Service\n"
        "def late():\n"
        "    from .control import ControlPlane\n"
        "from .. import elsewhere\n")
    modules = {"codec", "bundle", "engine", "errors", "service", "control", "elsewhere"}
    assert edge_imports(source, modules) == modules - {"elsewhere"}


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None


def test_edge_modules_import_each_other_without_cycles():
    graph = import_graph()
    assert {"control", "service", "routing", "adapters"} <= set(graph)
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_the_seams_stay_one_way():
    """The control plane gets the service's parts as arguments; routing sees the store
    through a protocol, and the store knows nothing of routes."""
    graph = import_graph()
    assert "service" not in graph["control"]
    assert "adapters" not in graph["routing"] and "routing" not in graph["adapters"]
