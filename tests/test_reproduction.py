"""docs/reproduction.md's tables are the script's saved output, so they cannot go stale."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

from neurodiag.compare.variants import parse_specs

ROOT = Path(__file__).resolve().parents[1]


def _script() -> ModuleType:
    path = ROOT / "scripts" / "reproduce_paper.py"
    spec = importlib.util.spec_from_file_location("reproduce_paper", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("reproduce_paper", module)
    spec.loader.exec_module(module)
    return module


SCRIPT = _script()


def test_the_command_holds_the_papers_variants_and_parses() -> None:
    specs = [*SCRIPT.BASELINES, *SCRIPT.BERNSTEIN]
    assert len(SCRIPT.BASELINES) == 7 and len(SCRIPT.BERNSTEIN) == 12
    assert {s.name for s in parse_specs(specs)} == set(specs)  # canonical as written


@pytest.mark.parametrize("dataset", sorted(SCRIPT.DATASETS))
def test_readme_and_table_equal_the_saved_comparison(dataset: str) -> None:
    out = SCRIPT.OUT / dataset
    saved = out / "comparison.json"
    assert saved.is_file(), f"run: python scripts/reproduce_paper.py --datasets {dataset}"
    assert (out / "table.md").read_text(encoding="utf-8") == SCRIPT.table(saved)
    assert (out / "command.txt").read_text(encoding="utf-8").strip().split() == SCRIPT.command(
        dataset
    )
    page = SCRIPT.PAGE.read_text(encoding="utf-8")
    block = SCRIPT.replace_block(page, dataset, SCRIPT.readme_block(dataset))
    assert block == page, "docs/reproduction.md is stale: scripts/reproduce_paper.py --readme-only"
    assert (out / "figures.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
