"""The README's column and threshold tables are the statistics' declarations."""

from __future__ import annotations

from pathlib import Path

from neurodiag.report.docs import BLOCKS, rewrite

README = Path(__file__).resolve().parents[1] / "README.md"


def test_generated_readme_tables_match_the_declarations() -> None:
    text = README.read_text(encoding="utf-8")
    for name in BLOCKS:
        assert f"<!-- generated:{name} -->" in text, name
    assert rewrite(text) == text, "run: python -m neurodiag.report.docs README.md"


def test_inactive_pct_is_documented_and_checkable() -> None:
    text = README.read_text(encoding="utf-8")
    assert "`inactive_pct`" in text and "`--max-inactive-pct`" in text
