"""The health gate: thresholds (or a baseline) applied to a scan Report, for CI and tests.

Library API (no CLI needed)::

    from neurodiag.check import evaluate, load_thresholds

    result = evaluate(report, load_thresholds("neurodiag.yaml", {"max_dead_pct": 30}))
    result.ok, result.violations  # [Violation(site, metric, value, threshold, reason, ...)]

``prepare_gate`` / ``Gate.judge`` / ``exit_code`` are the whole policy of ``neurodiag check``
(thresholds and baseline read before the scan, the verdict, exit code 0 or 1) for scripts that
scan by themselves. ``neurodiag check`` (``neurodiag.cli.check``) is a thin shell over this
package and ``neurodiag.testing.assert_healthy`` is the pytest-friendly form.
"""

from neurodiag.check.baseline import (
    DEFAULT_MAG_FACTOR,
    DEFAULT_TOLERANCE,
    compare_to_baseline,
    load_baseline,
    save_baseline,
)
from neurodiag.check.config import ThresholdConfig, load_thresholds
from neurodiag.check.evaluation import (
    BaselineSummary,
    CheckResult,
    SiteCheck,
    Violation,
    evaluate,
)
from neurodiag.check.policy import EXIT_HEALTHY, EXIT_UNHEALTHY, Gate, exit_code, prepare_gate
from neurodiag.check.render import CHECK_RENDERERS, register_check_renderer, render_check
from neurodiag.check.thresholds import THRESHOLD_KEYS, Thresholds

__all__ = [
    "CHECK_RENDERERS",
    "DEFAULT_MAG_FACTOR",
    "DEFAULT_TOLERANCE",
    "EXIT_HEALTHY",
    "EXIT_UNHEALTHY",
    "THRESHOLD_KEYS",
    "BaselineSummary",
    "CheckResult",
    "Gate",
    "SiteCheck",
    "ThresholdConfig",
    "Thresholds",
    "Violation",
    "compare_to_baseline",
    "evaluate",
    "exit_code",
    "load_baseline",
    "load_thresholds",
    "prepare_gate",
    "register_check_renderer",
    "render_check",
    "save_baseline",
]
