"""How the verdict reads to a human: shared by the table, Markdown and HTML renderers."""

from __future__ import annotations

from collections.abc import Sequence

from neurodiag.report.health import ERROR_DEAD_PCT
from neurodiag.report.model import Report
from neurodiag.report.verdict import Rollup, Verdict, verdict

#: Marks of a site's severity, so it survives without colour: error, warning.
ERROR_MARK = "!"
WARNING_MARK = "~"
#: Rollup entries listed per line before "… N more".
ROLLUP_ENTRIES = 6


def plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


def verdict_line(v: Verdict) -> tuple[str, str]:
    """(level, text) of the one-line verdict; level is "error", "warning", "healthy" or ""
    (no sites)."""
    if not v.sites:
        return "", "no activation sites found"
    warned = f"{plural(len(v.warnings), 'warning')} (< {ERROR_DEAD_PCT:g} % dead)"
    if not v.errors:
        if v.warnings:
            return "warning", f"no errors in {v.sites} sites; {warned}"
        return "healthy", "healthy: " + ("the 1 site" if v.sites == 1 else f"all {v.sites} sites")
    why = " · ".join(f"{reason} {n}" for reason, n in v.reasons)
    text = f"{ERROR_MARK} {len(v.errors)} of {v.sites} sites need attention: {why}"
    return "error", text + (f"; {warned}" if v.warnings else "")


def report_line(report: Report) -> str:
    """``repr(report)``: the model, the one-line verdict and the worst site's worst number."""
    v = verdict(report.rows, report.header.flag_gates)
    worst = next(iter(v.worst), None)
    tail = f"; worst {worst[0]} {worst[2][0][0]} {worst[2][0][1]:.3g}" if worst else ""
    return f"<Report of {report.header.model!r}: {verdict_line(v)[1]}{tail}>"


def rollup_entry(r: Rollup) -> str:
    """``relu 12 (3 errors, 5 warnings, up to 45.3 % dead)``: sites, then what is wrong."""
    notes = [plural(r.errors, "error")] if r.errors else []
    notes += [plural(r.warnings, "warning")] if r.warnings else []
    if r.max_dead_pct:
        notes.append(f"up to {r.max_dead_pct:.1f} % dead")
    return f"{r.name} {r.sites}" + (f" ({', '.join(notes)})" if notes else "")


def rollup_text(rollups: Sequence[Rollup]) -> str:
    parts = [rollup_entry(r) for r in rollups[:ROLLUP_ENTRIES]]
    more = len(rollups) - ROLLUP_ENTRIES
    return " · ".join(parts) + (f" · … {more} more" if more > 0 else "")
