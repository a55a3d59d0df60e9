"""The README's column and threshold tables are the statistics' declarations."""

from __future__ import annotations

from pathlib import Path

from neurodiag.report.docs import BLOCKS, rewrite

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [ROOT / "docs" / "metrics.md", ROOT / "docs" / "ci.md"]


def test_generated_doc_tables_match_the_declarations() -> None:
    texts = [page.read_text(encoding="utf-8") for page in PAGES]
    for name in BLOCKS:
        assert any(f"<!-- generated:{name} -->" in text for text in texts), name
    for text in texts:
        assert rewrite(text) == text, "run: python -m neurodiag.report.docs"


def test_readme_is_short_and_links_every_doc_page() -> None:
    text = README.read_text(encoding="utf-8")
    assert len(text.encode("utf-8")) <= 12 * 1024
    for page in sorted((ROOT / "docs").glob("*.md")):
        assert f"docs/{page.name}" in text, page.name


def test_inactive_pct_is_documented_and_checkable() -> None:
    text = "".join(page.read_text(encoding="utf-8") for page in PAGES)
    assert "`inactive_pct`" in text and "`--max-inactive-pct`" in text
