"""The shape the README's layout section promises: imports point one way.

Every import in gateway/ counts, function-level ones included: no module
imports itself back through others, and no folder (package) does either,
so the tree reads top-down as the request's path.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import gateway

ROOT = Path(gateway.__file__).parent


def _imports() -> dict[str, set[str]]:
    modules: dict[str, Path] = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        modules[name] = path
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                for alias in node.names:
                    full = f"{node.module}.{alias.name}"
                    target = full if full in modules else node.module
                    if target in modules and target != name:
                        graph[name].add(target)
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in modules and alias.name != name:
                        graph[name].add(alias.name)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in list(graph):
        if node not in index:
            visit(node)
    return found


def _package(module: str) -> str:
    return module.split(".")[1] if module.count(".") else module


def test_no_module_imports_itself_back() -> None:
    assert _cycles(_imports()) == []


def test_no_folder_imports_itself_back() -> None:
    packages: dict[str, set[str]] = defaultdict(set)
    for module, targets in _imports().items():
        for target in targets:
            if _package(target) != _package(module):
                packages[_package(module)].add(_package(target))
    assert _cycles(packages) == []


def test_the_pipeline_never_imports_the_endpoints_or_the_processes() -> None:
    graph = _imports()
    for module, targets in graph.items():
        if module.startswith("gateway.pipeline."):
            assert not {t for t in targets if t.startswith(("gateway.endpoints", "gateway.serve"))}
