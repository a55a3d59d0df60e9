"""What every framework callback shares: one Monitor in manual steps for a training run.

The callbacks only translate their framework's events (a batch starts, an epoch ends) and its
logging route; the run's lifecycle lives here once: the Monitor built with the callback's
options, windows handed to the framework's logger, alerts warned and, when asked, a stop
requested, the history and the whole-run report kept after training.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from typing import Any

import pandas as pd
from torch import nn

from neurodiag.check.evaluation import ThresholdsLike
from neurodiag.monitor import SITE_METRICS, Alert, Monitor, Window, history_frame, window_scalars
from neurodiag.monitor.window import update_frame
from neurodiag.report.model import Report
from neurodiag.treat.during_training import Recycler


class TrainingWatch:
    """``every``: a window every N steps instead of per epoch; ``per_site``: scalars of each
    site's ``metrics`` besides the summary; ``thresholds`` + ``stop_on_alert``: ask the
    framework to stop the first time a site breaks a limit; ``recycle`` (True, or a
    ``neurodiag.treat.Recycler``): ReDo on what each window found dead, in place, with the
    optimiser's moments reset (``recycler.history`` has the counts); a method name (``"cbp"``:
    continual backprop after every training step) makes a Recycler with that method's defaults.
    Other keywords go to the Monitor (``update_ratio=True``: ``update_ratio/<layer>`` scalars)."""

    def __init__(
        self,
        *,
        every: int | None = None,
        per_site: bool = True,
        metrics: Sequence[str] = SITE_METRICS,
        thresholds: ThresholdsLike = None,
        stop_on_alert: bool = False,
        recycle: bool | str | Recycler = False,
        **monitor_options: Any,
    ) -> None:
        self.recycler: Recycler | None = (
            recycle
            if isinstance(recycle, Recycler)
            else Recycler(method=recycle)
            if isinstance(recycle, str)
            else Recycler()
            if recycle
            else None
        )
        self._trace: Any = None
        self.every = every
        self.per_site = per_site
        self.metrics = tuple(metrics)
        self.thresholds = thresholds
        self.stop_on_alert = stop_on_alert
        self.monitor_options = monitor_options
        self.monitor: Monitor | None = None
        self.report: Report | None = None
        self.history: list[Window] = []
        self.alerts: list[Alert] = []

    def start(
        self,
        model: nn.Module,
        log: Callable[[dict[str, float], Window], None],
        stop: Callable[[], None],
    ) -> Monitor:
        """Enter a Monitor on ``model``; each window's scalars go to ``log``, alerts to ``stop``
        (with ``stop_on_alert``)."""
        self.report = None

        def on_window(window: Window) -> None:
            log(window_scalars(window, per_site=self.per_site, metrics=self.metrics), window)
            if self.recycler is not None:
                self.recycler(window)

        def on_alert(alert: Alert) -> None:
            warnings.warn(str(alert), RuntimeWarning, stacklevel=2)
            if self.stop_on_alert:
                stop()

        self.monitor = Monitor(
            model,
            every=self.every,
            steps="manual",
            thresholds=self.thresholds,
            on_alert=on_alert,
            on_window=on_window,
            **self.monitor_options,
        ).__enter__()
        self.history = self.monitor.history  # the same lists: they grow as windows close
        self.alerts = self.monitor.alerts
        return self.monitor

    def begin_recycling_trace(self, model: nn.Module, optimizer: Any = None) -> None:
        """At the first training step: its module calls will give the Recycler's topology."""
        if self.recycler is not None and not self.recycler.ready and self._trace is None:
            self._trace = self.recycler.trace(model, optimizer).__enter__()

    def end_recycling_trace(self) -> None:
        """At the end of every training step (after the optimiser's): the first step's trace
        gives the topology; a CBP Recycler then replaces what it owes (``Recycler.step``)."""
        trace, self._trace = self._trace, None
        if trace is not None:
            trace.__exit__(None, None, None)
        if self.recycler is not None:
            epoch = self.monitor.epoch if self.monitor is not None else None
            self.recycler.step(epoch=epoch)

    def end_epoch(self) -> None:
        """An epoch is a window unless windows are ``every`` N steps."""
        if self.monitor is not None and self.every is None:
            self.monitor.end_window("epoch")

    def finish(self) -> None:
        """Close the last, shorter window of ``every`` steps, keep the report, remove the hooks."""
        monitor, self.monitor = self.monitor, None
        if monitor is None:
            return
        try:
            if self.every is not None:
                monitor.end_window("steps")
            self.report = monitor.report() if monitor.measured_steps else None
        finally:
            monitor.__exit__(None, None, None)
            if self.recycler is not None:
                self.recycler.close()  # regrama's and cbp's hooks come off with the Monitor's

    def warn_if_empty(self, nothing_ran: str) -> None:
        """After training: say so when no step was measured (``Monitor.report`` already warned
        when steps ran but no site was found)."""
        if self.report is None:
            warnings.warn(f"neurodiag: {nothing_ran}", RuntimeWarning, stacklevel=3)

    def to_frame(self, *, cumulative: bool = False) -> pd.DataFrame:
        """One row per (window, site), as ``Monitor.to_frame``."""
        return history_frame(self.history, cumulative=cumulative)

    def update_frame(self) -> pd.DataFrame:
        """One row per (window, layer) of the update ratios (``update_ratio=True``), as
        ``Monitor.update_frame``."""
        return update_frame(self.history)
