"""The gateway's modules import each other without cycles, type-checking imports included."""

from __future__ import annotations

import ast
from pathlib import Path

import cove._gateway

PACKAGE = "cove._gateway"
ROOT = Path(cove._gateway.__file__).parent


def _imports(path: Path) -> set[str]:
    """The gateway modules `path` imports, at run time or only for the type checker."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        names: list[str] = []
        if isinstance(node, ast.ImportFrom) and node.module is not None:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            if name.startswith(PACKAGE + "."):
                module = name.split(".")[2]
                if (ROOT / f"{module}.py").exists():
                    found.add(module)
    found.discard(path.stem)
    return found


def _graph() -> dict[str, set[str]]:
    return {path.stem: _imports(path) for path in ROOT.glob("*.py") if path.stem != "__init__"}


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of `graph` (as a path that returns to its start), or None."""
    done: set[str] = set()

    def visit(module: str, path: list[str]) -> list[str] | None:
        if module in path:
            return [*path[path.index(module) :], module]
        if module in done:
            return None
        for imported in sorted(graph.get(module, ())):
            cycle = visit(imported, [*path, module])
            if cycle is not None:
                return cycle
        done.add(module)
        return None

    for module in sorted(graph):
        cycle = visit(module, [])
        if cycle is not None:
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle() -> None:
    cycle = _cycle({"exchange": {"longpoll"}, "longpoll": {"exchange"}})
    assert cycle == ["exchange", "longpoll", "exchange"]
    assert _cycle({"exchange": {"longpoll"}, "longpoll": set()}) is None


def test_the_gateway_modules_import_each_other_without_cycles() -> None:
    graph = _graph()
    assert {"exchange", "longpoll", "websocket", "proxy", "server"} <= graph.keys()
    assert _cycle(graph) is None, f"import cycle: {' -> '.join(_cycle(graph) or [])}"
