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
        ("errors", "config", "batch", "model_state", "grad_targets", "loss", "atomic"), 0
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
