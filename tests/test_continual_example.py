"""docs/treat.md's continual-learning tables are the saved run's (scripts/continual_example.py),
rendered again from docs/treat/continual.json without training; the figure is saved beside it."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parents[1]


def _script() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "continual_example", ROOT / "scripts" / "continual_example.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_page_shows_the_saved_run() -> None:
    script = _script()
    doc = json.loads(script.SAVED.read_text(encoding="utf-8"))
    page = script.PAGE.read_text(encoding="utf-8")
    assert script.replace_block(page, script.tables(doc)) == page, (
        "docs/treat.md is stale: python scripts/continual_example.py --readme-only"
    )
    assert script.FIGURE.stat().st_size > 10_000


def test_the_saved_run_covers_every_method_seed_and_task() -> None:
    script = _script()
    doc = json.loads(script.SAVED.read_text(encoding="utf-8"))
    settings = doc["settings"]
    assert settings["tasks"] >= 10
    assert list(doc["runs"]) == [str(lr) for lr in settings["lrs"]]
    for runs in doc["runs"].values():
        assert list(runs) == list(script.METHODS)
        for seeds in runs.values():
            assert len(seeds) == len(settings["seeds"])
            for run in seeds:
                assert [row["task"] for row in run] == list(range(1, settings["tasks"] + 1))
