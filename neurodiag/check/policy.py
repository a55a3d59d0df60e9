"""What a check passes and fails, and its exit code: the policy ``neurodiag check`` applies,
for library users and CI scripts that scan by themselves.

``prepare_gate`` reads and validates the thresholds and the baseline before the scan, so a typo
fails in milliseconds rather than after a long scan; ``Gate.judge`` turns the scan's report
into a ``CheckResult``; ``exit_code`` says 0 (healthy) or 1 (a threshold broken, a regression).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from neurodiag.check.baseline import (
    DEFAULT_MAG_FACTOR,
    DEFAULT_TOLERANCE,
    compare_to_baseline,
    load_baseline,
    with_thresholds,
)
from neurodiag.check.config import ThresholdConfig, load_thresholds
from neurodiag.check.evaluation import CheckResult, evaluate
from neurodiag.check.thresholds import SPECS
from neurodiag.errors import NeurodiagError
from neurodiag.report.model import Report
from neurodiag.scan import NONFINITE_LOSS

EXIT_HEALTHY = 0
EXIT_UNHEALTHY = 1


@dataclass(frozen=True)
class Gate:
    """What a check gates on: threshold ``limits``, the ``old`` scan of a ``baseline`` file, or
    (``update``) the scan to be written as that baseline instead of judged."""

    limits: ThresholdConfig | None
    baseline: Path | None = None
    old: Report | None = None
    update: bool = False
    tolerance: float = DEFAULT_TOLERANCE
    mag_factor: float = DEFAULT_MAG_FACTOR
    allow_empty: bool = False

    def admit(self, report: Report) -> None:
        """Refuse a scan that gives no meaningful verdict (or baseline): no site, a NaN or
        infinite loss (every label ignored, say), a partial scan written as a baseline."""
        if not report.rows and not self.allow_empty:
            raise NeurodiagError(
                "checked no activation site (none found, or --include/--exclude left none), so "
                "there is nothing to gate; fix the model or the globs, or pass --allow-empty"
            )
        bad_loss = [note for note in report.header.notes if note.startswith(NONFINITE_LOSS)]
        if bad_loss:
            raise NeurodiagError(f"{bad_loss[0]}; a check cannot pass on it")
        if self.update and report.header.partial:
            raise NeurodiagError(
                f"the scan is partial (stopped by --timeout after {report.header.batches} "
                f"batch(es)), so it is not written as a baseline; drop or raise --timeout "
                f"({self.baseline} was left as it was)"
            )

    def judge(self, report: Report) -> CheckResult:
        """The verdict: regressions against the baseline (and its thresholds when asked for
        too: both must pass), else the thresholds."""
        if self.old is None:
            return evaluate(report, self.limits)
        result = compare_to_baseline(
            report,
            self.old,
            tolerance=self.tolerance,
            mag_factor=self.mag_factor,
            name=str(self.baseline),
        )
        return (
            result
            if self.limits is None
            else with_thresholds(result, evaluate(report, self.limits))
        )


def prepare_gate(
    thresholds: Mapping[str, float | int | None] | None = None,
    *,
    config: str | Path | None = None,
    baseline: Path | None = None,
    update_baseline: bool = False,
    forward_only: bool = False,
    tolerance: float = DEFAULT_TOLERANCE,
    mag_factor: float = DEFAULT_MAG_FACTOR,
    allow_empty: bool = False,
) -> Gate:
    """Read and validate everything a check gates on, before any scan.

    ``thresholds``: key -> limit given on the command line (None: not given). With a
    ``baseline`` only regressions fail, unless thresholds are asked for too (given or a
    ``config``); ``update_baseline`` writes the scan to ``baseline`` instead of reading it.
    """
    if update_baseline and baseline is None:
        raise NeurodiagError("--update-baseline needs --baseline FILE to write to")
    flags = dict(thresholds or {})
    given = any(value is not None for value in flags.values())
    wants_limits = baseline is None or given or config is not None
    limits = load_thresholds(config, flags) if wants_limits else None
    if forward_only:
        refuse_gradient_gates(limits, baseline is not None)
    old = load_baseline(baseline) if baseline is not None and not update_baseline else None
    return Gate(limits, baseline, old, update_baseline, tolerance, mag_factor, allow_empty)


def refuse_gradient_gates(limits: ThresholdConfig | None, with_baseline: bool) -> None:
    """A forward-only scan measures no gradient: refuse gates that would read one."""
    if with_baseline:
        raise NeurodiagError(
            "--forward-only cannot be combined with --baseline: a baseline compares the "
            "gradient columns too"
        )
    gradient_keys = {key for key, spec in SPECS.items() if spec.gradient} & (
        limits.keys_in_use() if limits else set()
    )
    if gradient_keys:
        names = ", ".join(sorted(key.replace("_", "-") for key in gradient_keys))
        raise NeurodiagError(
            f"--forward-only measures no gradients, but {names} is set; drop --forward-only "
            "or that threshold"
        )


def exit_code(result: CheckResult) -> int:
    """0 for a healthy check, 1 for a broken threshold or a regression."""
    return EXIT_HEALTHY if result.ok else EXIT_UNHEALTHY


__all__ = ["EXIT_HEALTHY", "EXIT_UNHEALTHY", "Gate", "exit_code", "prepare_gate"]
