"""The package's import graph has no cycle: every import counts, function-level and
TYPE_CHECKING ones included, and so do importlib.import_module("mpibench.x") strings (the
registries). Read from the source with ast; nothing of mpibench is imported."""

from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "mpibench"
MODULE_STRING = re.compile(r"mpibench(\.\w+)+")


def modules() -> dict[str, Path]:
    """Every module of the package by dotted name (a package by its own name)."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def absolute(module: str, is_package: bool, level: int, name: str | None) -> str:
    """The absolute name a (possibly relative) `from ... import` refers to."""
    if level == 0:
        return name or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


def owner(name: str, known: dict[str, Path]) -> str | None:
    """The longest known module that `name` (a module or a name inside one) lies in."""
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports, anywhere in its source."""
    known = modules()
    graph: dict[str, set[str]] = {name: set() for name in known}
    for name, path in known.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = absolute(name, is_package, node.level, node.module)
                targets = [base] + [f"{base}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Constant) and isinstance(node.value, str) \
                    and MODULE_STRING.fullmatch(node.value):
                targets = [node.value]
            for target in targets:
                found = owner(target, known)
                if found and found != name:
                    graph[name].add(found)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_graph_is_read_from_the_source():
    """The reader sees each kind of import: top-level, function-level, TYPE_CHECKING and
    import_module strings (so an empty cycle list means something)."""
    graph = import_graph()
    assert "mpibench.context" in graph["mpibench.run"]  # top-level
    assert "mpibench.run" in graph["mpibench.cli"]  # function-level
    assert "mpibench.context" in graph["mpibench.engine"]  # TYPE_CHECKING
    assert "mpibench.workloads.bandwidth" in graph["mpibench.workloads"]  # registry string
    assert "mpibench.backends.posix" in graph["mpibench.backends"]  # registry string


def test_the_cycle_finder_finds_cycles():
    """A two-module loop and a longer one are found; a chain is not a cycle."""
    graph = {"a": {"b"}, "b": {"a"}, "c": {"d"}, "d": {"e"}, "e": {"c", "f"}, "f": set()}
    assert sorted(cycles(graph)) == [["a", "b"], ["c", "d", "e"]]


def test_no_import_cycle_in_mpibench():
    """No import cycle: a workload or backend imports mpibench.context and the base
    modules (mpibench.workloads.base, mpibench.backends.base), never its registry or the
    orchestrator mpibench.run, which only the CLI imports."""
    assert cycles(import_graph()) == []


def test_only_the_cli_imports_the_orchestrator():
    """mpibench.run is imported by the CLI alone."""
    importers = sorted(name for name, targets in import_graph().items() if "mpibench.run" in targets)
    assert importers == ["mpibench.cli"]
