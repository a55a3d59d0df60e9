"""Thresholds applied to a Report: which sites violate which limit, and why.

Pure functions of a Report and a ThresholdConfig (no scanning, no I/O), so the gate can be unit
tested on hand-built reports and reused from Python without the CLI.

Decisions:

* A limit passes on equality (``dead_pct`` 30.0 under ``max_dead_pct: 30``), and values within
  a relative 1e-9 of the limit count as equal, because 7 dead of 100 is 7.000000000000001 %.
* A set threshold whose value is missing (NaN, e.g. no gradient reached the site, so ``mag`` and
  ``grad_dormant_pct`` are empty) is a violation: a gate must fail closed, and "no gradient at
  all" is exactly what ``min_mag`` guards against. Unset thresholds are never checked, so a
  missing value only fails where the user asked for that metric; switch a key off for one site
  with ``sites: {"aux.*": {min_mag: null}}``.
* ``bound_ok`` False (a Bernstein site whose min |σ'| fell below δ̄) always fails; empty
  ``bound_ok`` (not a Bernstein site) is never checked.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from neurodiag.check.config import ThresholdConfig
from neurodiag.check.text import fmt_limit, fmt_value
from neurodiag.check.thresholds import SPECS, Thresholds
from neurodiag.report.cells import is_missing, site_records
from neurodiag.report.model import COLUMN_SPECS, Report

#: Values this close (relative) to a limit count as equal to it: float noise is not a violation.
REL_TOL = 1e-9
#: Columns that are empty when no gradient reached a site (declared by their statistics).
GRADIENT_COLUMNS: frozenset[str] = frozenset(c.name for c in COLUMN_SPECS if c.gradient)
Status = Literal["ok", "fail", "new"]


@dataclass(frozen=True)
class Violation:
    """One failed check: ``value <op> threshold`` held at ``site`` (``value`` None: missing).

    ``rule`` is the threshold key (``max_dead_pct`` ...), ``bound_ok`` or ``regression``;
    ``source`` says which layer set the limit (``--max-dead-pct``, ``sites['enc*'] in ci.yaml``).
    """

    site: str
    metric: str
    value: float | None
    threshold: float | None
    reason: str
    rule: str = ""
    op: str = ">"
    source: str = ""

    @property
    def derived(self) -> bool:
        """True when neurodiag computed the limit (δ̄, baseline + tolerance), not the user."""
        return self.rule in ("bound_ok", "regression")

    def describe(self, *, units: bool = False) -> str:
        """``dead_pct 52.0 > 30`` (``units``: ``52.0% > 30%``); missing: ``mag no value``."""
        limit = fmt_limit(self.metric, self.threshold, derived=self.derived)
        if self.value is None:
            need = "≤" if self.op == ">" else "≥"
            return f"{self.metric} no value (needs {need} {limit})"
        suffix = "%" if units and self.metric.endswith("_pct") else ""
        value = fmt_value(self.metric, self.value)
        return f"{self.metric} {value}{suffix} {self.op} {limit}{suffix}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "site": self.site,
            "metric": self.metric,
            "value": self.value,
            "threshold": self.threshold,
            "op": self.op,
            "rule": self.rule,
            "source": self.source,
            "reason": self.reason,
        }


@dataclass(frozen=True)
class SiteCheck:
    """The verdict for one site; ``thresholds`` is None in baseline mode."""

    site: str
    activation: str
    kind: str
    status: Status
    violations: tuple[Violation, ...] = ()
    thresholds: Thresholds | None = None


@dataclass(frozen=True)
class BaselineSummary:
    """What a baseline comparison used and found besides violations (new sites never fail)."""

    path: str
    tolerance: float
    mag_factor: float
    new_sites: tuple[str, ...] = ()
    removed_sites: tuple[str, ...] = ()


@dataclass(frozen=True)
class CheckResult:
    """The verdict for a whole report: ``ok``, ``violations`` and one ``SiteCheck`` per site."""

    report: Report
    sites: tuple[SiteCheck, ...]
    config: ThresholdConfig | None = None
    baseline: BaselineSummary | None = None
    mode: Literal["thresholds", "baseline"] = "thresholds"

    @property
    def violations(self) -> list[Violation]:
        return [v for site in self.sites for v in site.violations]

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def failed_sites(self) -> list[SiteCheck]:
        return [site for site in self.sites if site.status == "fail"]

    @property
    def thresholds(self) -> Thresholds | None:
        """The global limits (before per-activation/per-site rules); None in baseline mode."""
        return self.config.base if self.config is not None else None


#: What ``evaluate`` accepts as limits.
ThresholdsLike = Thresholds | ThresholdConfig | Mapping[str, Any] | None


def as_threshold_config(thresholds: ThresholdsLike) -> ThresholdConfig:
    """Any accepted form of limits as one ``ThresholdConfig`` (None: the built-in defaults)."""
    if thresholds is None:
        return ThresholdConfig()
    if isinstance(thresholds, ThresholdConfig):
        return thresholds
    if not isinstance(thresholds, Thresholds):
        thresholds = Thresholds.from_mapping(thresholds, "thresholds argument")
    label = "thresholds argument"
    return ThresholdConfig(base=thresholds, base_sources=dict.fromkeys(thresholds.active(), label))


def _beyond(value: float, limit: float, bound: str) -> bool:
    if math.isclose(value, limit, rel_tol=REL_TOL, abs_tol=0.0):
        return False
    return value > limit if bound == "max" else value < limit


def check_row(
    row: Mapping[str, Any], thresholds: Thresholds, sources: Mapping[str, str] | None = None
) -> list[Violation]:
    """Every violation of one report row (keys = ``COLUMNS``) under ``thresholds``."""
    sources = sources or {}
    site = str(row["site"])
    found: list[Violation] = []
    for key, limit in thresholds.active().items():
        spec = SPECS[key]
        value: Any = row.get(spec.metric)
        op = ">" if spec.bound == "max" else "<"
        source = sources.get(key, "")
        set_by = f"{key} set by {source}" if source else key
        if is_missing(value):
            why = (
                "no gradient reached this site"
                if spec.metric in GRADIENT_COLUMNS
                else "the statistic has no value"
            )
            found.append(
                Violation(site, spec.metric, None, limit, f"{why}; {set_by}", key, op, source)
            )
        elif _beyond(float(value), float(limit), spec.bound):
            number: float = int(value) if spec.integer else float(value)
            found.append(Violation(site, spec.metric, number, limit, set_by, key, op, source))
    bound_ok: Any = row.get("bound_ok")
    if not is_missing(bound_ok) and not bool(bound_ok):
        deriv: Any = row.get("min_abs_deriv")
        delta_bar: Any = row.get("delta_bar")
        found.append(
            Violation(
                site,
                "min_abs_deriv",
                None if is_missing(deriv) else float(deriv),
                None if is_missing(delta_bar) else float(delta_bar),
                "below the Bernstein bound δ̄ (bound_ok false): the derivative guarantee fails",
                "bound_ok",
                "<",
                "Bernstein bound",
            )
        )
    return found


def evaluate(report: Report, thresholds: ThresholdsLike = None) -> CheckResult:
    """Check every site of ``report``.

    ``thresholds`` is a ``ThresholdConfig`` (from ``load_thresholds``: per-activation and per-site
    rules), a ``Thresholds`` or a plain ``{"max_dead_pct": 30, ...}`` applied to every site, or
    None for the built-in defaults (NaN/Inf and the Bernstein bound only). Gates (``role`` =
    gate) are held to the NaN/Inf limit alone unless the scan ran with ``flag_gates``.
    """
    config = as_threshold_config(thresholds)
    sites: list[SiteCheck] = []
    for row in site_records(report):
        site, activation = str(row["site"]), str(row["activation"])
        limits, sources = config.resolve(site, activation)
        violations = tuple(check_row(row, limits, sources))
        if row.get("role") == "gate" and not report.header.flag_gates:
            # a gate saturating is its job: only NaN/Inf fail it (report.health.is_unhealthy)
            violations = tuple(v for v in violations if v.metric == "nonfinite")
        status: Status = "fail" if violations else "ok"
        sites.append(SiteCheck(site, activation, str(row["kind"]), status, violations, limits))
    return CheckResult(report=report, sites=tuple(sites), config=config)


__all__ = [
    "GRADIENT_COLUMNS",
    "REL_TOL",
    "BaselineSummary",
    "CheckResult",
    "SiteCheck",
    "Violation",
    "as_threshold_config",
    "check_row",
    "evaluate",
]
