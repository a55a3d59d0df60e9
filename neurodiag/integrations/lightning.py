"""PyTorch Lightning callback: neurodiag statistics of the training batches, per epoch.

Steps are the training batches Lightning runs (``on_train_batch_start`` .. ``on_train_batch_end``),
whatever ``training_step`` calls (``self(x)``, ``self.net(x)``, several optimisers in manual
optimisation, accumulated gradients): the Monitor measures exactly what runs in between, and
nothing of the sanity-check and validation loops. Each epoch (or every ``every`` batches) is one
window; its scalars go through ``pl_module.log``, so every Lightning logger (CSVLogger,
TensorBoardLogger, WandbLogger, ...) receives them. Under DDP each window is reduced across ranks
before it is logged. After ``fit``, ``callback.history`` / ``callback.to_frame()`` keep every
window and ``callback.report`` the whole fit.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import Any

import pandas as pd
from lightning.pytorch.callbacks import Callback

from neurodiag.batch import batch_size_of
from neurodiag.check.evaluation import ThresholdsLike
from neurodiag.monitor import SITE_METRICS, Alert, Monitor, Window, history_frame, window_scalars
from neurodiag.report.model import Report


class NeurodiagCallback(Callback):
    """``every``: a window every N training batches instead of per epoch; ``per_site``: log each
    site's ``metrics`` besides the summary; ``thresholds`` + ``stop_on_alert``: stop the fit the
    first time a site breaks a limit. Other keywords go to ``neurodiag.Monitor``."""

    def __init__(
        self,
        *,
        every: int | None = None,
        per_site: bool = True,
        metrics: Sequence[str] = SITE_METRICS,
        thresholds: ThresholdsLike = None,
        stop_on_alert: bool = False,
        **monitor_options: Any,
    ) -> None:
        super().__init__()
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
        self._trainer: Any = None
        self._module: Any = None

    # -- fit lifecycle -------------------------------------------------------------------------
    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self.history, self.alerts, self.report = [], [], None

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._trainer, self._module = trainer, pl_module
        self.monitor = Monitor(
            pl_module,
            every=self.every,
            steps="manual",
            thresholds=self.thresholds,
            on_alert=self._on_alert,
            on_window=self._log_window,
            **self.monitor_options,
        ).__enter__()
        self.history = self.monitor.history  # the same list: it grows as windows close
        self.alerts = self.monitor.alerts

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if self.monitor is not None:
            self.monitor.epoch = int(trainer.current_epoch)

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, idx: int) -> None:
        if self.monitor is not None:
            self.monitor.begin_step(samples=batch_size_of(batch) or None)

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, idx: int
    ) -> None:
        if self.monitor is not None:
            self.monitor.end_step()

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self.monitor is not None and self.every is None:
            self.monitor.end_window("epoch")

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._finish()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._finish()

    # -- results -------------------------------------------------------------------------------
    def to_frame(self, *, cumulative: bool = False) -> pd.DataFrame:
        """One row per (window, site), as ``Monitor.to_frame``."""
        return history_frame(self.history, cumulative=cumulative)

    def _log_window(self, window: Window) -> None:
        module = self._module
        if module is None:
            return
        scalars = window_scalars(window, per_site=self.per_site, metrics=self.metrics)
        # An epoch window closes in on_train_epoch_end (logged per epoch), a window of `every`
        # batches in on_train_batch_end (logged at that step). The values are reduced across
        # ranks already (Monitor sync_windows), so every rank logs the same numbers.
        per_step = window.kind == "steps"
        for name, value in scalars.items():
            module.log(name, value, on_step=per_step, on_epoch=not per_step, sync_dist=False)

    def _on_alert(self, alert: Alert) -> None:
        warnings.warn(str(alert), RuntimeWarning, stacklevel=2)
        if self.stop_on_alert and self._trainer is not None:
            self._trainer.should_stop = True

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        if self.report is None:
            warnings.warn(
                "neurodiag: the fit ran no training batch, so nothing was measured "
                "(max_epochs=0, limit_train_batches=0, or a resumed fit that was already done?)",
                RuntimeWarning,
                stacklevel=2,
            )
        elif not self.report.rows:
            warnings.warn(
                "neurodiag: no activation site was found in the training batches "
                "(no activation module or function ran inside training_step)",
                RuntimeWarning,
                stacklevel=2,
            )

    def _finish(self) -> None:
        monitor, self.monitor = self.monitor, None
        if monitor is None:
            return
        self._module = None  # Lightning refuses self.log() in on_train_end: history only
        try:
            if self.every is not None:
                monitor.end_window("steps")  # the last, shorter window
            self.report = monitor.report() if monitor.measured_steps else None
        finally:
            monitor.__exit__(None, None, None)
