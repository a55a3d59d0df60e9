"""Alerts: the ``check`` thresholds applied to each training window.

An alert fires once, in the first window where a site breaks a limit; it fires again only after
a window in which the site was back within it. So a layer that dies in epoch 3 raises one alert
at epoch 3, not one per epoch after it.
"""

from __future__ import annotations

from dataclasses import dataclass

from neurodiag.check.evaluation import ThresholdsLike, Violation, as_threshold_config, evaluate
from neurodiag.report.model import Report


@dataclass(frozen=True)
class Alert:
    """``site``'s ``metric`` broke a limit in window ``window`` (ending at step ``step``)."""

    site: str
    metric: str
    value: float | None
    threshold: float | None
    step: int
    window: int
    epoch: int | None
    rule: str
    message: str

    def __str__(self) -> str:
        where = f"epoch {self.epoch}, " if self.epoch is not None else ""
        return f"neurodiag alert at {self.site} ({where}step {self.step}): {self.message}"


class AlertTracker:
    """Which (site, rule) pairs are over their limit now, so each crossing fires once."""

    def __init__(self, thresholds: ThresholdsLike) -> None:
        self.config = as_threshold_config(thresholds)
        self._active: set[tuple[str, str]] = set()

    def update(self, report: Report, *, window: int, step: int, epoch: int | None) -> list[Alert]:
        """The alerts that ``report`` (one window's) raises for the first time."""
        violations = evaluate(report, self.config).violations
        now = {(v.site, v.rule or v.metric): v for v in violations}
        fired = [
            _alert(violation, window=window, step=step, epoch=epoch)
            for key, violation in now.items()
            if key not in self._active
        ]
        self._active = set(now)
        return fired


def _alert(violation: Violation, *, window: int, step: int, epoch: int | None) -> Alert:
    return Alert(
        site=violation.site,
        metric=violation.metric,
        value=violation.value,
        threshold=violation.threshold,
        step=step,
        window=window,
        epoch=epoch,
        rule=violation.rule or violation.metric,
        message=violation.describe(units=True),
    )


__all__ = ["Alert", "AlertTracker"]
