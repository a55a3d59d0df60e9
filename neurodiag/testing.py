"""Health assertions for users' own test suites (pytest, unittest, anything that catches asserts).

    from neurodiag.testing import assert_healthy

    def test_model_has_no_dead_layers():
        assert_healthy(build_model(), loader, max_dead_pct=30, min_mag=1e-8, max_batches=4)

Hermetic by default: only the keywords given (plus the built-in defaults: no NaN/Inf, Bernstein
bound holds) apply, because a unit test must not change verdict when someone edits
``pyproject.toml``. Pass ``config="neurodiag.yaml"`` and/or ``pyproject=True`` to use the same
thresholds as ``neurodiag check`` (keywords then act as its command-line flags).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from torch import nn

from neurodiag.check.config import load_thresholds
from neurodiag.check.evaluation import CheckResult, evaluate
from neurodiag.check.thresholds import THRESHOLD_KEYS
from neurodiag.config import OPTION_NAMES
from neurodiag.report.verdict_text import plural
from neurodiag.scan import scan

#: Keywords passed through to ``neurodiag.scan`` (its ``ScanConfig`` options and the rest).
SCAN_KEYWORDS: tuple[str, ...] = (
    "config",
    *OPTION_NAMES,
    "loss_fn",
    "registry",
    "on_batch",
    "model_name",
    "data_name",
)


def unhealthy_message(result: CheckResult) -> str:
    """``2 sites unhealthy: fc1.act dead_pct 52.0% > 30%; head.act nonfinite 3 > 0``."""
    parts = [f"{v.site} {v.describe(units=True)}" for v in result.violations]
    return f"{plural(len(result.failed_sites), 'site')} unhealthy: " + "; ".join(parts)


def assert_healthy(
    model: nn.Module,
    data: Iterable[Any],
    *,
    config: str | Path | None = None,
    pyproject: bool = False,
    **options: Any,
) -> CheckResult:
    """Scan ``model`` on ``data`` and raise AssertionError naming every violating site.

    ``options`` are threshold keys (``THRESHOLD_KEYS``: ``max_dead_pct``, ``min_mag``, ...,
    ``max_nonfinite``, one per declared statistic threshold) and ``neurodiag.scan``
    keywords (``eps``, ``tau``, ``max_batches``, ``loss_fn``, ``include`` ...). An unknown keyword
    is a TypeError, so a typo cannot silently switch a check off. Returns the CheckResult (with
    ``.report``) when the model is healthy.
    """
    unknown = sorted(set(options) - set(THRESHOLD_KEYS) - set(SCAN_KEYWORDS))
    if unknown:
        raise TypeError(
            f"assert_healthy() got unexpected keyword(s) {', '.join(unknown)}; thresholds: "
            f"{', '.join(THRESHOLD_KEYS)}; scan options: {', '.join(SCAN_KEYWORDS)}"
        )
    limits = {key: value for key, value in options.items() if key in THRESHOLD_KEYS}
    scan_options = {key: value for key, value in options.items() if key in SCAN_KEYWORDS}
    thresholds = load_thresholds(
        config,
        limits,
        search_from=Path.cwd() if pyproject else None,
        overrides_source="assert_healthy()",
    )
    result = evaluate(scan(model, data, **scan_options), thresholds)
    if not result.ok:
        raise AssertionError(unhealthy_message(result))
    return result


__all__ = ["SCAN_KEYWORDS", "assert_healthy", "unhealthy_message"]
