"""The words around the violations: the verdict line and the labelled facts under it.

Shared by the table, Markdown, GitHub and JUnit renderers so they never disagree about how many
sites failed or which limits applied.
"""

from __future__ import annotations

from neurodiag.check.evaluation import CheckResult, Violation
from neurodiag.check.text import fmt_limit
from neurodiag.check.thresholds import SPECS
from neurodiag.report.cells import PARTIAL_WARNING, header_facts
from neurodiag.report.verdict_text import plural


def headline(result: CheckResult) -> str:
    """``FAIL: 2 violations at 1 of 3 sites`` / ``OK: 3 sites checked, no violations``."""
    total = len(result.sites)
    if result.mode == "baseline" and result.config is not None:  # thresholds gate as well
        word = "violation"
        compared = f"checked and compared with baseline {_baseline_path(result)}"
    elif result.mode == "baseline":
        word, compared = "regression", f"compared with baseline {_baseline_path(result)}"
    else:
        word, compared = "violation", "checked"
    if result.ok:
        return f"OK: {plural(total, 'site')} {compared}, no {word}s"
    failed = len(result.failed_sites)
    return f"FAIL: {plural(len(result.violations), word)} at {failed} of {plural(total, 'site')}"


def _baseline_path(result: CheckResult) -> str:
    return result.baseline.path if result.baseline is not None else "?"


def requirement(violation: Violation) -> str:
    """The limit as the condition a healthy site meets: ``≤ 30``, ``≥ 1e-8``."""
    limit = fmt_limit(violation.metric, violation.threshold, derived=violation.derived)
    if not limit:
        return ""
    return f"{'≤' if violation.op == '>' else '≥'} {limit}"


def limits_text(result: CheckResult) -> str:
    """The global limits in force, e.g. ``max_dead_pct 30 · max_nonfinite 0 · Bernstein bound``."""
    thresholds = result.thresholds
    parts = []
    if thresholds is not None:
        parts = [
            f"{key} {fmt_limit(SPECS[key].metric, value)}"
            for key, value in thresholds.active().items()
        ]
    return " · ".join([*parts, "Bernstein bound"])


def summary_facts(result: CheckResult) -> list[tuple[str, str]]:
    """``(label, text)`` pairs: verdict, limits or baseline, config sources, then the scan facts."""
    facts = [("result", headline(result))]
    if result.report.header.partial:  # e.g. --timeout: a verdict on the batches seen only
        facts.append(("warning", PARTIAL_WARNING))
    if result.mode == "baseline" and result.baseline is not None:
        base = result.baseline
        facts.append(
            (
                "baseline",
                f"{base.path} · tolerance {base.tolerance:g} percentage points · "
                f"mag may shrink by a factor {base.mag_factor:g}",
            )
        )
        if base.new_sites:
            facts.append(("new sites", ", ".join(base.new_sites) + " (not in the baseline)"))
        if base.removed_sites:
            facts.append(("removed", ", ".join(base.removed_sites) + " (only in the baseline)"))
    elif result.config is not None:
        config = result.config
        facts.append(("limits", limits_text(result)))
        rules = len(config.activations) + len(config.sites)
        if rules:
            facts.append(
                (
                    "overrides",
                    f"{plural(len(config.activations), 'activation rule')} · "
                    f"{plural(len(config.sites), 'site rule')}",
                )
            )
        facts.append(("config", ", ".join(config.sources) or "none"))
    return facts + header_facts(result.report.header)


__all__ = ["headline", "limits_text", "plural", "requirement", "summary_facts"]
