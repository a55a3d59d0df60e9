"""Imports run one way: foundation → loading/activations → sites → stats → report →
orchestration (scan, monitor, swap, check, compare, ...) → cli. No cycles, no private names
imported across modules."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "neurodiag"

LAYERS: dict[str, int] = {
    **dict.fromkeys(
        (
            "errors",
            "config",
            "batch",
            "model_state",
            "grad_targets",
            "loss",
            "atomic",
            "registry",
            "native_build",
        ),
        0,
    ),
    **dict.fromkeys(("activations", "loading"), 1),
    "sites": 2,
    "stats": 3,
    "report": 4,
    **dict.fromkeys(
        (
            "scan",
            "monitor",
            "swap",
            "check",
            "compare",
            "plots",
            "testing",
            "integrations",
            "treat",
            "inspect",
        ),
        5,
    ),
    **dict.fromkeys(("cli", "_entry", "__main__", "__init__"), 6),
}


def _group(module: str) -> str:
    parts = module.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


def _imports() -> list[tuple[str, str, str]]:
    """(importing module, imported module, imported name) for every neurodiag import."""
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        module = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("neurodiag"):
                found += [(module, node.module or "", alias.name) for alias in node.names]
            elif isinstance(node, ast.Import):
                found += [
                    (module, a.name, "") for a in node.names if a.name.startswith("neurodiag")
                ]
    return found


def test_every_package_has_a_layer() -> None:
    groups = {_group(src) for src, _, _ in _imports()} | {_group(dst) for _, dst, _ in _imports()}
    assert groups <= set(LAYERS), sorted(groups - set(LAYERS))


def test_no_import_runs_upward() -> None:
    upward = [
        f"{src} imports {dst}"
        for src, dst, _ in _imports()
        if LAYERS[_group(dst)] > LAYERS[_group(src)]
    ]
    assert upward == []


def test_packages_form_no_cycle() -> None:
    edges: dict[str, set[str]] = defaultdict(set)
    for src, dst, _ in _imports():
        if _group(src) != _group(dst):
            edges[_group(src)].add(_group(dst))

    def reaches(start: str, goal: str, seen: set[str]) -> bool:
        for nxt in edges[start]:
            if nxt == goal or (nxt not in seen and reaches(nxt, goal, seen | {nxt})):
                return True
        return False

    cycles = sorted(g for g in list(edges) if reaches(g, g, {g}))
    assert cycles == []


def _module_graph() -> dict[str, set[str]]:
    """Module -> the neurodiag modules it imports, from every ``import``/``from`` node anywhere
    in its file (inside functions too: a deferred import still closes a cycle).

    ``from pkg import name`` is an edge to ``pkg.name`` when that is a module, else to ``pkg``;
    importing a package is an edge to its ``__init__``.
    """
    modules = {
        ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        for path in PACKAGE.rglob("*.py")
    }

    def resolve(name: str) -> str | None:
        for candidate in (name, f"{name}.__init__"):
            if candidate in modules:
                return candidate
        return None

    graph: dict[str, set[str]] = {module: set() for module in modules}
    for src, dst, name in _imports():
        target = (resolve(f"{dst}.{name}") if name else None) or resolve(dst)
        if target is not None and target != src:
            graph[src].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Each strongly connected component of more than one module (Tarjan), as a cycle path."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in sorted(graph[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(_path_through(sorted(component), graph))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def _path_through(component: list[str], graph: dict[str, set[str]]) -> list[str]:
    """A cycle inside ``component`` from its first module back to it (breadth-first)."""
    start, members = component[0], set(component)
    came_from: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt_frontier = []
        for node in frontier:
            for nxt in sorted(graph[node] & members):
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(came_from[path[-1]])
                    return [*reversed(path), start]
                if nxt not in came_from:
                    came_from[nxt] = node
                    nxt_frontier.append(nxt)
        frontier = nxt_frontier
    return component  # pragma: no cover - a component always holds a cycle


def test_modules_form_no_import_cycle() -> None:
    """No module reaches itself through imports, function-level ones included: display code
    lives with the renderers (which register it), so data modules import no renderer."""
    cycles = [" -> ".join(cycle) for cycle in _cycles(_module_graph())]
    assert cycles == [], "import cycles:\n" + "\n".join(cycles)


def test_imports_are_absolute() -> None:
    """A relative import would be invisible to the graph above (and the rule is module names)."""
    relative = [
        f"{path.relative_to(PACKAGE.parent)}:{node.lineno}"
        for path in sorted(PACKAGE.rglob("*.py"))
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8")))
        if isinstance(node, ast.ImportFrom) and node.level > 0
    ]
    assert relative == []


def test_the_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_private_name_crosses_modules() -> None:
    private = [
        f"{src} imports {dst}.{name}"
        for src, dst, name in _imports()
        if name.startswith("_") and not name.startswith("__") and src != dst
    ]
    assert private == []


@pytest.mark.parametrize(
    "edge", [("sites", "stats"), ("activations", "sites"), ("report", "compare")]
)
def test_the_old_upward_edges_are_gone(edge: tuple[str, str]) -> None:
    src, dst = edge
    assert not [1 for s, d, _ in _imports() if _group(s) == src and _group(d) == dst]
