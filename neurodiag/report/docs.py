"""The docs' column and threshold tables, generated from the statistics' declarations.

``python -m neurodiag.report.docs`` rewrites, in docs/metrics.md and docs/ci.md, the blocks
between the ``<!-- generated:NAME -->`` / ``<!-- /generated:NAME -->`` markers;
tests/test_readme.py fails when the pages and the declarations disagree.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from neurodiag.atomic import write_text as write_atomically
from neurodiag.stats.registry import STATISTICS, all_columns


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def columns_markdown() -> str:
    """One row per report column, in report order."""
    lines = ["| column | meaning | unhealthy when |", "|---|---|---|"]
    for column in all_columns():
        unhealthy = {"high": "high", "low": "low"}.get(column.unhealthy or "", "")
        lines.append(f"| `{column.name}` | {_cell(column.help)} | {unhealthy} |")
    return "\n".join(lines)


def thresholds_markdown() -> str:
    """One row per ``check`` threshold key (config key and ``--flag``)."""
    lines = ["| key / flag | report column | fails when |", "|---|---|---|"]
    for key, (column, threshold) in STATISTICS.thresholds().items():
        side = "above" if threshold.bound == "max" else "below"
        extra = " (percent, 0–100)" if threshold.percent else ""
        if threshold.default is not None:
            extra += f" (default **{threshold.default}**)"
        lines.append(f"| `{key}` / `{threshold.flag}` | `{column.name}` | {side}{extra} |")
    lines.append("| *(always)* | `bound_ok` | false (a Bernstein site below δ̄) |")
    return "\n".join(lines)


BLOCKS = {"columns": columns_markdown, "thresholds": thresholds_markdown}


def rewrite(text: str) -> str:
    """``text`` with every generated block replaced by its current content."""
    for name, make in BLOCKS.items():
        pattern = re.compile(
            rf"(<!-- generated:{name} -->\n)(?:.*?\n)?(<!-- /generated:{name} -->)", re.DOTALL
        )
        body = make().replace("\\", "\\\\")  # a replacement string: keep escapes literal
        text = pattern.sub(rf"\g<1>{body}\n\g<2>", text)
    return text


if __name__ == "__main__":  # pragma: no cover - a maintainer's command
    for path in [Path(p) for p in sys.argv[1:]] or [Path("docs/metrics.md"), Path("docs/ci.md")]:
        write_atomically(path, rewrite(path.read_text(encoding="utf-8")))
