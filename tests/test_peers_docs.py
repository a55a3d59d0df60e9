"""The peer table in docs/performance.md is the one benchmarks/peers.py renders from its JSON.

Fast: no benchmark run, no torch, no peer imported (peers.py imports them only to run).
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

ROOT = Path(__file__).resolve().parent.parent


def _peers() -> ModuleType:
    spec = importlib.util.spec_from_file_location("_bench_peers", ROOT / "benchmarks" / "peers.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_docs_table_matches_saved_json() -> None:
    peers = _peers()
    result = json.loads((ROOT / "docs" / "performance" / "peers.json").read_text("utf-8"))
    doc = (ROOT / "docs" / "performance.md").read_text("utf-8")
    assert peers.extract_block(doc) == peers.render_table(result), (
        "docs/performance.md is stale: run python benchmarks/peers.py --docs-only"
    )


def test_every_workload_has_its_baseline_and_neurodiag() -> None:
    result = json.loads((ROOT / "docs" / "performance" / "peers.json").read_text("utf-8"))
    assert {w["workload"] for w in result["workloads"]} == {"digits", "cnn", "bert"}
    for w in result["workloads"]:
        rows = {r["tool"]: r for r in w["rows"]}
        for tool in ("plain", "neurodiag.scan", "train", "neurodiag.Monitor"):
            assert rows[tool]["status"] == "ok", (w["workload"], tool)
        assert "cpu_ratio" in rows["neurodiag.scan"] and "cpu_ratio" in rows["neurodiag.Monitor"]


def test_replace_block_is_idempotent() -> None:
    peers = _peers()
    doc = f"a\n{peers.BEGIN}\nold\n{peers.END}\nb\n"
    once = peers.replace_block(doc, "new")
    assert once == f"a\n{peers.BEGIN}\nnew\n{peers.END}\nb\n"
    assert peers.replace_block(once, "new") == once
