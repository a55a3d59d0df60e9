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
listed as removed. A baseline records what it was made on (``IDENTITY``: model, data, samples,
batches; and ``eps``, ``tau``, dead window): a scan of another model or other data, or with other
thresholds, compares different things, so it is an error naming the mismatch (exit 2), not a
silent pass. ``wall_time_s`` is not saved, so ``--update-baseline`` on an unchanged model rewrites
the committed file byte for byte.
"""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, fields, replace
from pathlib import Path
from typing import Any

from neurodiag.atomic import write_text as write_atomically
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
#: What the baseline was made on: another model or other data is not a regression test.
IDENTITY: tuple[str, ...] = ("model", "data", "samples", "batches")
#: Header fields that change from run to run: kept out of a baseline file.
UNSTABLE: tuple[str, ...] = ("wall_time_s",)

_HINT = "write one with 'neurodiag scan -f json -o FILE' or 'neurodiag check --update-baseline'"


def save_baseline(report: Report, path: str | Path) -> None:
    """Write ``report`` as the scan JSON (``neurodiag scan -f json``) to ``path``."""
    doc = json.loads(to_json(report))
    for key in UNSTABLE:
        doc.pop(key, None)
    text = json.dumps(doc, indent=2, ensure_ascii=False, allow_nan=False) + "\n"
    try:
        write_atomically(path, text)  # an old baseline stays whole if this fails
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
    except RecursionError:
        raise NeurodiagError(
            f"baseline '{path}' is nested too deeply to be a scan report; {_HINT}"
        ) from None
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
    _check_header_types(values, name)
    values["notes"] = tuple(values.get("notes") or ())
    values["wall_time_s"] = float(values.get("wall_time_s") or 0.0)
    required = [
        f.name for f in fields(ScanHeader) if f.default is MISSING and f.default_factory is MISSING
    ]
    missing = [key for key in required if key not in values]
    if missing:
        raise NeurodiagError(
            f"{name} has no complete scan header (missing {', '.join(missing)}); {_HINT}"
        )
    try:
        header = ScanHeader(**values)
    except TypeError as exc:  # pragma: no cover - every required field is present
        raise NeurodiagError(f"{name} has an incomplete header ({exc}); {_HINT}") from None
    rows: list[dict[str, Any]] = []
    for index, site in enumerate(doc["sites"]):
        if not isinstance(site, dict) or not isinstance(site.get("site"), str):
            raise NeurodiagError(f"{name}: sites[{index}] is not a site row; {_HINT}")
        _check_row_types(site, f"{name}: sites[{index}]")
        rows.append({column: site.get(column) for column in COLUMNS})
    return Report(header=header, rows=rows)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


#: What each kind of header field must hold in a baseline (None is always allowed).
_HEADER_KINDS: dict[str, tuple[str, Any]] = {
    "samples": ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "batches": ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "seed": ("an integer", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "wall_time_s": ("a number", _is_number),
    "eps": ("a number", _is_number),
    "tau": ("a number", _is_number),
    "partial": ("true or false", lambda v: isinstance(v, bool)),
    "flag_gates": ("true or false", lambda v: isinstance(v, bool)),
    "notes": (
        "a list of strings",
        lambda v: isinstance(v, list) and all(isinstance(n, str) for n in v),
    ),
}


def _check_header_types(values: dict[str, Any], name: str) -> None:
    """A hand-edited baseline (``notes: 5``, ``eps: "x"``) is one line naming the key."""
    for key, value in values.items():
        if value is None:
            continue
        what, ok = _HEADER_KINDS.get(key, ("a string", lambda v: isinstance(v, str)))
        if not ok(value):
            raise NeurodiagError(
                f"{name}: header key '{key}' is {json.dumps(value)[:40]}, expected {what}; "
                f"fix the file or {_HINT}"
            )


def _check_row_types(site: dict[str, Any], where: str) -> None:
    """Numeric columns hold numbers (or null), flag columns true/false: ``dead_pct: "abc"`` or
    ``[1]`` is one line naming the key, not a traceback in the comparison."""
    for column in COLUMN_SPECS:
        value = site.get(column.name)
        if value is None or column.dtype == "object":
            continue
        if column.unit == "flag":
            ok, what = isinstance(value, bool), "true, false or null"
        else:
            ok, what = _is_number(value), "a number or null"
        if not ok:
            raise NeurodiagError(
                f"{where} ('{site['site']}') key '{column.name}' is {json.dumps(value)[:40]}, "
                f"expected {what}; fix the file or {_HINT}"
            )


def _check_comparable(current: ScanHeader, baseline: ScanHeader, name: str) -> None:
    for key in IDENTITY:
        now, then = getattr(current, key), getattr(baseline, key)
        if now != then:
            raise NeurodiagError(
                f"baseline '{name}' was made on {key} {then!r}, this scan is on {key} {now!r}: "
                "a baseline only compares the same model on the same data; rerun with the "
                "baseline's model and data, or rewrite it with --update-baseline"
            )
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


def with_thresholds(regressed: CheckResult, limited: CheckResult) -> CheckResult:
    """One verdict from a baseline comparison and a threshold check of the same report.

    A site fails when it regressed or broke a limit; the summary keeps the baseline's new and
    removed sites and the thresholds' limits.
    """
    by_site = {check.site: check for check in limited.sites}
    sites = []
    for check in regressed.sites:
        other = by_site.get(check.site)
        violations = check.violations + (other.violations if other is not None else ())
        status: Status = "fail" if violations else check.status
        thresholds = other.thresholds if other is not None else None
        sites.append(replace(check, status=status, violations=violations, thresholds=thresholds))
    return replace(regressed, sites=tuple(sites), config=limited.config)


__all__ = [
    "DEFAULT_MAG_FACTOR",
    "DEFAULT_TOLERANCE",
    "compare_to_baseline",
    "load_baseline",
    "regressions",
    "report_from_json",
    "save_baseline",
    "with_thresholds",
]
