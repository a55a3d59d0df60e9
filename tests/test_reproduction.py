"""docs/reproduction.md's tables are the script's saved output, so they cannot go stale."""

from __future__ import annotations

import importlib.util
import json
import shlex
import sys
from pathlib import Path
from types import ModuleType

import pytest

from neurodiag.compare.variants import parse_specs

ROOT = Path(__file__).resolve().parents[1]


def _script() -> ModuleType:
    scripts = ROOT / "scripts"
    if str(scripts) not in sys.path:
        sys.path.insert(0, str(scripts))  # reproduce_paper imports paper_figures from there
    path = scripts / "reproduce_paper.py"
    spec = importlib.util.spec_from_file_location("reproduce_paper", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("reproduce_paper", module)
    spec.loader.exec_module(module)
    return module


SCRIPT = _script()
FOLDERS = [*SCRIPT.DATASETS, "sweep"]


def test_the_commands_hold_the_papers_variants_and_parse() -> None:
    specs = [*SCRIPT.BASELINES, *SCRIPT.CONTROLS, *SCRIPT.BERNSTEIN]
    assert len(SCRIPT.BASELINES) == 7 and len(SCRIPT.BERNSTEIN) == 8
    assert {s.name for s in parse_specs(specs)} == set(specs)  # canonical as written
    assert {s.name for s in parse_specs(SCRIPT.SWEEP_VARIANTS)} == set(SCRIPT.SWEEP_VARIANTS)
    assert len(SCRIPT.SEEDS) >= 3


def test_summary_statistics_are_mean_and_sample_std() -> None:
    stats = SCRIPT._stats([1.0, 2.0, 6.0, float("nan")])
    assert stats == {"mean": 3.0, "std": pytest.approx(2.6457513), "min": 1.0, "max": 6.0, "n": 3}


@pytest.mark.parametrize("name", FOLDERS)
def test_page_table_and_summary_equal_the_saved_runs(name: str) -> None:
    folder = SCRIPT.OUT / name
    paths = SCRIPT.run_paths(name)
    expected = len(SCRIPT.SEEDS) * (len(SCRIPT.SWEEP_POINTS) if name == "sweep" else 1)
    assert len(paths) == expected, f"run: python scripts/reproduce_paper.py ({name})"
    runs = [SCRIPT.load_run(p) for p in paths]
    if name == "sweep":
        summary = SCRIPT.sweep_summary(runs)
        text = SCRIPT.sweep_table(summary)
    else:
        summary = SCRIPT.summarize(runs)
        text = SCRIPT.table(summary)
    saved = json.loads((folder / "summary.json").read_text(encoding="utf-8"))
    assert saved == json.loads(json.dumps(summary))
    assert (folder / "table.md").read_text(encoding="utf-8") == text
    commands = (folder / "command.txt").read_text(encoding="utf-8").splitlines()
    if name == "sweep":
        want = [SCRIPT.command(SCRIPT.SWEEP_DATASET, s, p) for p in SCRIPT.SWEEP_POINTS
                for s in SCRIPT.SEEDS]  # fmt: skip
    else:
        want = [SCRIPT.command(name, s) for s in SCRIPT.SEEDS]
    assert [shlex.split(c) for c in commands] == want
    page = SCRIPT.PAGE.read_text(encoding="utf-8")
    block = SCRIPT.replace_block(page, name, SCRIPT.readme_block(name))
    assert block == page, "docs/reproduction.md is stale: scripts/reproduce_paper.py --readme-only"
    figures = sorted(folder.glob("*.png"))
    assert figures and all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in figures)
