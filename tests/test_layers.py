"""Layers read top-down: no import cycle at module level among the packages of the core."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def module_imports() -> dict[str, set[str]]:
    """icg module -> the icg modules it imports at module level (not inside functions or TYPE_CHECKING)."""
    graph: dict[str, set[str]] = {}
    for path in sorted((ROOT / "icg").rglob("*.py")):
        name = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        found: set[str] = set()
        for node in ast.parse(path.read_text(encoding="utf-8")).body:
            if isinstance(node, ast.If):  # `if TYPE_CHECKING:` blocks import nothing at run time
                continue
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names if a.name.startswith("icg")}
            elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("icg"):
                found.add(node.module)
                found |= {f"{node.module}.{a.name}" for a in node.names}
        graph[name] = found
    return {m: {i for i in found if i in graph and i != m} for m, found in graph.items()}


def test_no_module_level_import_cycle_in_the_core():
    graph = module_imports()
    core = ("icg.models", "icg.sbg", "icg.captioners", "icg.options", "icg.config", "icg.pipeline")
    nodes = {m for m in graph if m.startswith(core)}
    state: dict[str, int] = {}
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(graph[node] & nodes):
            if state.get(nxt) == 1:
                cycles.append(path[path.index(nxt) :] + [nxt] if nxt in path else [node, nxt])
            elif nxt not in state:
                visit(nxt, [*path, nxt])
        state[node] = 2

    for node in sorted(nodes):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_the_scan_sees_module_level_imports():
    graph = module_imports()
    assert "icg.options" in graph["icg.config"] and "icg.errors" in graph["icg.options"]


def test_the_option_schema_depends_on_nothing_but_errors():
    assert module_imports()["icg.options"] <= {"icg.errors"}
