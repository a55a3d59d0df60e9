"""The verdict a reader needs before the table: how many sites are errors and why, the worst
sites per metric, and rollups per activation and per block.

Numbers only (what every renderer shows its own way); severity comes from
:mod:`neurodiag.report.health`.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from neurodiag.report.cells import is_missing
from neurodiag.report.health import findings, severity

#: (column, label, highest first?) of the "worst sites" lines; zero is never "worst" for a %.
WORST_METRICS: tuple[tuple[str, str, bool], ...] = (
    ("dead_pct", "dead %", True),
    ("dormant_pct", "τ-dormant %", True),
    ("grad_dormant_pct", "grad-dormant %", True),
    ("mag", "lowest MAG", False),
    ("nonfinite", "NaN/Inf", True),
)


@dataclass(frozen=True)
class Rollup:
    """Sites sharing an activation or a block (module-path prefix)."""

    name: str
    sites: int
    errors: int
    warnings: int
    mean_dead_pct: float | None
    max_dead_pct: float | None


@dataclass(frozen=True)
class Verdict:
    sites: int
    errors: tuple[str, ...]
    warnings: tuple[str, ...]
    #: error reason -> number of sites with it (a site may have several)
    reasons: tuple[tuple[str, int], ...]
    #: (label, column, up to ``top`` (site, value) pairs, worst first) per metric
    worst: tuple[tuple[str, str, tuple[tuple[str, float], ...]], ...]
    by_activation: tuple[Rollup, ...]
    by_block: tuple[Rollup, ...]

    @property
    def healthy(self) -> bool:
        return not self.errors and not self.warnings


def _value(row: Mapping[str, Any], column: str) -> float | None:
    value = row.get(column)
    if value is None or is_missing(value):
        return None
    number = float(value)
    return None if math.isnan(number) else number


def _worst(
    rows: Sequence[Mapping[str, Any]], column: str, highest: bool, top: int
) -> tuple[tuple[str, float], ...]:
    values = [(str(r["site"]), v) for r in rows if (v := _value(r, column)) is not None]
    if highest:
        values = [item for item in values if item[1] > 0]
    values.sort(key=lambda item: -item[1] if highest else item[1])
    return tuple(values[:top])


def block_of(site: str, depth: int) -> str:
    """The module path of a site cut to ``depth`` components (``features.denseblock1``)."""
    path = site.split(":", 1)[0].split("#", 1)[0]
    return ".".join(path.split(".")[:depth])


def block_depth(sites: Sequence[str], most: int = 12) -> int:
    """The shallowest prefix depth that splits the sites into more than one block (at most
    ``most`` blocks, so the rollup stays short), or 0 when no depth does."""
    longest = max((len(block_of(s, 99).split(".")) for s in sites), default=0)
    for depth in range(1, longest):
        blocks = {block_of(s, depth) for s in sites}
        if 1 < len(blocks) <= most:
            return depth
        if len(blocks) > most:
            break
    return 0


def _rollups(rows: Sequence[Mapping[str, Any]], key: Any, flag_gates: bool) -> tuple[Rollup, ...]:
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        groups.setdefault(key(row), []).append(row)
    out = []
    for name, members in groups.items():
        levels = [severity(r, flag_gates) for r in members]
        dead = [v for r in members if (v := _value(r, "dead_pct")) is not None]
        out.append(
            Rollup(
                name,
                len(members),
                levels.count("error"),
                levels.count("warning"),
                sum(dead) / len(dead) if dead else None,
                max(dead) if dead else None,
            )
        )
    out.sort(key=lambda r: (-r.errors, -r.warnings, -(r.max_dead_pct or 0.0), r.name))
    return tuple(out)


def verdict(rows: Sequence[Mapping[str, Any]], flag_gates: bool = False, top: int = 3) -> Verdict:
    """The verdict of a report's rows (``site_records(report)`` or ``report.rows``)."""
    errors, warnings, reasons = [], [], Counter[str]()
    for row in rows:
        found = findings(row, flag_gates)
        level = severity(row, flag_gates)
        if level == "error":
            errors.append(str(row["site"]))
            reasons.update(reason for lvl, reason in found if lvl == "error")
        elif level == "warning":
            warnings.append(str(row["site"]))
    worst = []
    for column, label, highest in WORST_METRICS:
        picked = _worst(rows, column, highest, top)
        if picked:
            worst.append((label, column, picked))
    depth = block_depth([str(r["site"]) for r in rows])
    return Verdict(
        sites=len(rows),
        errors=tuple(errors),
        warnings=tuple(warnings),
        reasons=tuple(reasons.most_common()),
        worst=tuple(worst),
        by_activation=_rollups(rows, lambda r: str(r.get("activation")), flag_gates),
        by_block=_rollups(rows, lambda r: block_of(str(r["site"]), depth), flag_gates)
        if depth
        else (),
    )


def flagged_first(
    rows: Sequence[Mapping[str, Any]], flag_gates: bool = False
) -> list[Mapping[str, Any]]:
    """Errors, then warnings, each by dead % (highest first), then the healthy rows, each group
    in forward order."""
    rank = {"error": 0, "warning": 1, None: 2}

    def key(item: tuple[int, Mapping[str, Any]]) -> tuple[int, float, int]:
        index, row = item
        return (rank[severity(row, flag_gates)], -(_value(row, "dead_pct") or 0.0), index)

    return [row for _, row in sorted(enumerate(rows), key=key)]


def select_rows(
    rows: Sequence[Mapping[str, Any]],
    flag_gates: bool = False,
    only_flagged: bool = False,
    top: int | None = None,
) -> list[Mapping[str, Any]]:
    """The rows a table shows: all in forward order; ``only_flagged`` keeps errors and
    warnings; ``top`` keeps the N worst (flagged first)."""
    chosen: list[Mapping[str, Any]] = list(rows)
    if only_flagged:
        chosen = [r for r in chosen if severity(r, flag_gates) is not None]
    if top is not None:
        chosen = flagged_first(chosen, flag_gates)[:top]
    return chosen
