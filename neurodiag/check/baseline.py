"""Baselines: a saved scan report, and "did this scan get worse than it?" (a ratchet for CI).

A baseline file IS the JSON that ``neurodiag scan -f json`` writes (``--update-baseline`` writes
the same thing), so any saved scan can serve as a baseline and a baseline can be read by anything
that reads scan reports.

Decisions (why a baseline gate differs from thresholds): it fails ONLY on regressions, so a model
that already has 40% dead neurons can adopt the gate today and be stopped from getting worse.
Per site present in both reports:

Which columns are compared, and how, is declared by each statistic (``Column.regression``):

* percentages (``dead_pct``, ``dormant_pct``, ``grad_dormant_pct``, ``inactive_pct``): worse by
  more than ``tolerance``
  percentage points (default 1.0: one neuron in a hundred, above scan-to-scan noise of a
  retrained model but well below a real regression);
* ``mag``: fell below baseline / ``mag_factor`` (default 2.0: gradient flow halved). MAG scales
  with the loss and the weights, so only a ratio is meaningful;
* ``nonfinite``: any increase; ``bound_ok``: became false;
* a statistic that had a value and lost it (no gradient reaches the site any more) is a
  regression; ``min_abs_deriv`` is not compared (one extreme value, very data dependent; its
  guarantee is the Bernstein bound, which is).

Sites missing from the baseline are "new" (listed, never failures); sites gone from the scan are
listed as removed. Both reports must use the same ``eps``, ``tau`` and dead window, or dead and
dormant percentages would compare different things: that is an error, not a silent pass.
"""

from __future__ import annotations

import json
import math
from dataclasses import fields
from pathlib import Path
from typing import Any

from neurodiag.check.evaluation import BaselineSummary, CheckResult, SiteCheck, Status, Violation
from neurodiag.check.text import fmt_value
from neurodiag.errors import NeurodiagError
from neurodiag.report.cells import is_missing, site_records
from neurodiag.report.model import COLUMN_SPECS, COLUMNS, Report, ScanHeader
from neurodiag.report.render_data import JSON_SCHEMA_VERSION, to_json

DEFAULT_TOLERANCE = 1.0
DEFAULT_MAG_FACTOR = 2.0
#: Percentages compared in percentage points (declared ``regression="points"``).
PCT_METRICS: tuple[str, ...] = tuple(c.name for c in COLUMN_SPECS if c.regression == "points")
#: Header fields that must agree, or the percentages mean different things.
COMPARABLE: tuple[str, ...] = ("eps", "tau", "dead_window")

_HINT = "write one with 'neurodiag scan -f json -o FILE' or 'neurodiag check --update-baseline'"


def save_baseline(report: Report, path: str | Path) -> None:
    """Write ``report`` as the scan JSON (``neurodiag scan -f json``) to ``path``."""
    try:
        Path(path).write_text(to_json(report), encoding="utf-8")
    except OSError as exc:
        raise NeurodiagError(
            f"cannot write baseline '{path}': {exc.strerror or exc}; choose a writable path"
        ) from None


def load_baseline(path: str | Path) -> Report:
    """Read a scan JSON report back into a Report (per-neuron tensors are not saved)."""
    file = Path(path)
    if not file.is_file():
        raise NeurodiagError(f"baseline '{path}' not found; {_HINT}")
    try:
        doc = json.loads(file.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise NeurodiagError(f"cannot read baseline '{path}': {exc}; {_HINT}") from None
    return report_from_json(doc, str(path))


def report_from_json(doc: Any, name: str = "baseline") -> Report:
    """The inverse of ``to_json``: header fields and ``sites`` rows (null -> None)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("sites"), list):
        raise NeurodiagError(f"{name} is not a neurodiag scan report (no 'sites' list); {_HINT}")
    version = doc.get("version")
    if version != JSON_SCHEMA_VERSION:
        raise NeurodiagError(
            f"{name} has report version {version!r}, this neurodiag reads version "
            f"{JSON_SCHEMA_VERSION}; rewrite it with --update-baseline"
        )
    header_fields = {f.name for f in fields(ScanHeader)}
    values = {key: value for key, value in doc.items() if key in header_fields}
    values["notes"] = tuple(values.get("notes") or ())
    values["wall_time_s"] = float(values.get("wall_time_s") or 0.0)
    try:
        header = ScanHeader(**values)
    except TypeError as exc:
        raise NeurodiagError(f"{name} has an incomplete header ({exc}); {_HINT}") from None
    rows: list[dict[str, Any]] = []
    for index, site in enumerate(doc["sites"]):
        if not isinstance(site, dict) or not isinstance(site.get("site"), str):
            raise NeurodiagError(f"{name}: sites[{index}] is not a site row; {_HINT}")
        rows.append({column: site.get(column) for column in COLUMNS})
    return Report(header=header, rows=rows)


def _check_comparable(current: ScanHeader, baseline: ScanHeader, name: str) -> None:
    for key in COMPARABLE:
        now, then = getattr(current, key), getattr(baseline, key)
        if now != then:
            raise NeurodiagError(
                f"baseline '{name}' was scanned with {key} {then}, this scan with {key} {now}: "
                f"the numbers are not comparable; pass --{key.replace('_', '-')} {then} or "
                "rewrite the baseline with --update-baseline"
            )


def _number(value: Any) -> float | None:
    return None if is_missing(value) else float(value)


def regressions(
    site: str,
    now: dict[str, Any],
    then: dict[str, Any],
    tolerance: float = DEFAULT_TOLERANCE,
    mag_factor: float = DEFAULT_MAG_FACTOR,
) -> list[Violation]:
    """How ``now`` (a report row) got worse than ``then`` (the baseline row of the same site)."""
    found: list[Violation] = []

    def add(metric: str, value: float | None, limit: float, op: str, why: str) -> None:
        was = fmt_value(metric, then.get(metric))
        reason = f"was {was} in the baseline; {why}"
        found.append(Violation(site, metric, value, limit, reason, "regression", op, "baseline"))

    for column in COLUMN_SPECS:
        metric = column.name
        if column.regression == "points":  # percentages: worse by more than the tolerance
            old, new = _number(then.get(metric)), _number(now.get(metric))
            if old is None:
                continue
            limit = old + tolerance
            if new is None or (new > limit and not math.isclose(new, limit, rel_tol=1e-9)):
                add(metric, new, limit, ">", f"tolerance {tolerance:g} percentage points")
        elif column.regression == "factor":  # scale-dependent: only a ratio means something
            old, new = _number(then.get(metric)), _number(now.get(metric))
            if old is not None and old > 0:
                limit = old / mag_factor
                if new is None or new < limit:
                    add(metric, new, limit, "<", f"allowed to shrink by a factor {mag_factor:g}")
        elif column.regression == "increase":  # counts of errors: any rise
            old_bad, new_bad = _number(then.get(metric)) or 0, _number(now.get(metric)) or 0
            if new_bad > old_bad:
                add(metric, int(new_bad), old_bad, ">", "any rise is a regression")
    old_ok, new_ok = then.get("bound_ok"), now.get("bound_ok")
    if not is_missing(new_ok) and not bool(new_ok) and (is_missing(old_ok) or bool(old_ok)):
        deriv, delta_bar = _number(now.get("min_abs_deriv")), _number(now.get("delta_bar"))
        found.append(
            Violation(
                site,
                "min_abs_deriv",
                deriv,
                delta_bar,
                "below the Bernstein bound δ̄ (bound_ok became false)",
                "regression",
                "<",
                "baseline",
            )
        )
    return found


def compare_to_baseline(
    report: Report,
    baseline: Report,
    *,
    tolerance: float = DEFAULT_TOLERANCE,
    mag_factor: float = DEFAULT_MAG_FACTOR,
    name: str = "baseline",
) -> CheckResult:
    """Fail only on regressions of ``report`` against ``baseline`` (rules: module docstring)."""
    if not (math.isfinite(tolerance) and tolerance >= 0):
        raise NeurodiagError(f"tolerance must be >= 0 percentage points, got {tolerance}")
    if not (math.isfinite(mag_factor) and mag_factor >= 1):
        raise NeurodiagError(f"mag factor must be >= 1, got {mag_factor}")
    _check_comparable(report.header, baseline.header, name)
    old_rows = {str(row["site"]): row for row in site_records(baseline)}
    sites: list[SiteCheck] = []
    new_sites: list[str] = []
    for row in site_records(report):
        site = str(row["site"])
        activation, kind = str(row["activation"]), str(row["kind"])
        if site not in old_rows:
            new_sites.append(site)
            sites.append(SiteCheck(site, activation, kind, "new"))
            continue
        found = tuple(regressions(site, row, old_rows[site], tolerance, mag_factor))
        status: Status = "fail" if found else "ok"
        sites.append(SiteCheck(site, activation, kind, status, found))
    current = set(report.sites)
    summary = BaselineSummary(
        path=name,
        tolerance=tolerance,
        mag_factor=mag_factor,
        new_sites=tuple(new_sites),
        removed_sites=tuple(site for site in baseline.sites if site not in current),
    )
    return CheckResult(report=report, sites=tuple(sites), baseline=summary, mode="baseline")


__all__ = [
    "DEFAULT_MAG_FACTOR",
    "DEFAULT_TOLERANCE",
    "compare_to_baseline",
    "load_baseline",
    "regressions",
    "report_from_json",
    "save_baseline",
]
