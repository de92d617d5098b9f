"""No module of the core or of the kernel layer imports itself back, directly or through others.

Read from the source, so a cycle is found whether or not any test happens to
import the modules in the order that breaks: every ``import`` counts, at
module level or inside a function (a function-level import only hides a
cycle until the function runs), except those under ``if TYPE_CHECKING:``,
which never run.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

TOP = Path(__file__).resolve().parents[2]
PACKAGES = ["xfrmid.kernel", "xfrmid.core"]


def _modules(package: str) -> dict[str, Path]:
    root = TOP / Path(*package.split("."))
    found = {}
    for path in sorted(root.rglob("*.py")):
        parts = list(path.relative_to(TOP).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST):
    """Import nodes that run: all but those in an ``if TYPE_CHECKING:`` body."""
    stack = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _edges(name: str, path: Path, known: set[str]) -> set[str]:
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets: set[str] = set()
    for node in _imports(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
            continue
        base = package
        for _ in range(node.level - 1):
            base = base.rpartition(".")[0]
        if node.level == 0:
            base = node.module or ""
        elif node.module:
            base = f"{base}.{node.module}"
        for alias in node.names:
            # ``from . import links`` imports the submodule; ``from .links import x`` the module
            targets.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base)
    return {target for target in targets if target in known and target != name}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph[node]):
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

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _path(graph: dict[str, set[str]], component: list[str]) -> str:
    """One cycle through the component, as 'a -> b -> a', for the failure message."""
    inside = set(component)
    start = component[0]
    trail, seen = [start], {start}
    node = start
    while True:
        nxt = sorted(graph[node] & inside)
        back = [n for n in nxt if n == start]
        if back and len(trail) > 1:
            return " -> ".join(trail + [start])
        fresh = [n for n in nxt if n not in seen]
        if not fresh:  # the cycle closes elsewhere: show where it returns
            return " -> ".join(trail + [nxt[0]])
        node = fresh[0]
        trail.append(node)
        seen.add(node)


def test_the_reader_of_imports_finds_a_planted_cycle(tmp_path):
    graph = {"p.a": {"p.b"}, "p.b": {"p.c"}, "p.c": {"p.a"}, "p.d": {"p.a"}}
    assert _cycles(graph) == [["p.a", "p.b", "p.c"]]
    assert _path(graph, ["p.a", "p.b", "p.c"]) == "p.a -> p.b -> p.c -> p.a"
    module = tmp_path / "m.py"
    module.write_text(
        "from typing import TYPE_CHECKING\n"
        "from . import a\n"
        "from .b import thing\n"
        "if TYPE_CHECKING:\n    from . import c\n"
        "def later():\n    from . import d\n"
    )
    assert _edges("p.m", module, {"p.a", "p.b", "p.c", "p.d", "p.m"}) == {"p.a", "p.b", "p.d"}


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycle(package):
    modules = _modules(package)
    graph = {name: _edges(name, path, set(modules)) for name, path in modules.items()}
    cycles = [_path(graph, component) for component in _cycles(graph)]
    assert not cycles, f"import cycles in {package}: " + "; ".join(cycles)
