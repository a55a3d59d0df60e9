"""Hugging Face ``Trainer`` callback: neurodiag statistics of the training steps, per epoch.

A step is one optimizer step (``on_step_begin`` .. ``on_step_end``, every accumulated micro-batch
included); evaluation and prediction run outside and are never measured. Each epoch (or every
``every`` steps) is one window, and its scalars go through ``Trainer.log``: the Trainer's own
logging route, so ``trainer.state.log_history`` and every ``report_to`` integration (TensorBoard,
wandb, MLflow, ...) receive them like the loss. After ``train()``, ``callback.history`` /
``callback.to_frame()`` keep every window and ``callback.report`` the whole run.

The callback needs the Trainer to log through it: ``NeurodiagTrainerCallback.attach(trainer)``
(or ``trainer=`` at construction). Passed in ``Trainer(callbacks=[...])`` without it, it finds
the Trainer that calls ``on_train_begin`` on the call stack.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Sequence
from typing import Any

import pandas as pd
from transformers import Trainer, TrainerCallback

from neurodiag.check.evaluation import ThresholdsLike
from neurodiag.monitor import SITE_METRICS, Alert, Monitor, Window, history_frame, window_scalars
from neurodiag.report.model import Report


class NeurodiagTrainerCallback(TrainerCallback):
    """``every``: a window every N optimizer steps instead of per epoch; ``per_site``: log each
    site's ``metrics`` besides the summary; ``thresholds`` + ``stop_on_alert``: stop training
    the first time a site breaks a limit. Other keywords go to ``neurodiag.Monitor``."""

    def __init__(
        self,
        *,
        trainer: Trainer | None = None,
        every: int | None = None,
        per_site: bool = True,
        metrics: Sequence[str] = SITE_METRICS,
        thresholds: ThresholdsLike = None,
        stop_on_alert: bool = False,
        **monitor_options: Any,
    ) -> None:
        self.trainer = trainer
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
        self._control: Any = None

    @classmethod
    def attach(cls, trainer: Trainer, **options: Any) -> NeurodiagTrainerCallback:
        """Create the callback for ``trainer`` and add it to the trainer's callbacks."""
        callback = cls(trainer=trainer, **options)
        trainer.add_callback(callback)
        return callback

    # -- training lifecycle ----------------------------------------------------------------------
    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.trainer is None:
            self.trainer = _calling_trainer()
        self._control = control
        self.report = None
        self.monitor = Monitor(
            kwargs["model"],
            every=self.every,
            steps="manual",
            thresholds=self.thresholds,
            on_alert=self._on_alert,
            on_window=self._log_window,
            **self.monitor_options,
        ).__enter__()
        self.history = self.monitor.history  # the same list: it grows as windows close
        self.alerts = self.monitor.alerts

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.monitor is not None:
            self.monitor.epoch = math.floor((state.epoch or 0.0) + 1e-9)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.monitor is not None:
            self._control = control
            self.monitor.begin_step()  # samples counted from the model's forward inputs

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.monitor is not None:
            self._control = control
            self.monitor.end_step()

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.monitor is not None and self.every is None:
            self._control = control
            self.monitor.end_window("epoch")

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        monitor, self.monitor = self.monitor, None
        if monitor is None:
            return
        try:
            if self.every is not None:
                monitor.end_window("steps")  # the last, shorter window
            self.report = monitor.report() if monitor.measured_steps else None
        finally:
            monitor.__exit__(None, None, None)
        if not monitor.measured_steps:
            warnings.warn(
                "neurodiag: training ran no step, so nothing was measured", RuntimeWarning, 2
            )

    # -- results -------------------------------------------------------------------------------
    def to_frame(self, *, cumulative: bool = False) -> pd.DataFrame:
        """One row per (window, site), as ``Monitor.to_frame``."""
        return history_frame(self.history, cumulative=cumulative)

    def _log_window(self, window: Window) -> None:
        scalars = window_scalars(window, per_site=self.per_site, metrics=self.metrics)
        if self.trainer is not None:
            self.trainer.log(scalars)
        else:  # pragma: no cover - on_train_begin found no Trainer
            warnings.warn(
                "neurodiag: no Trainer to log through; "
                "use NeurodiagTrainerCallback.attach(trainer)",
                RuntimeWarning,
                2,
            )

    def _on_alert(self, alert: Alert) -> None:
        warnings.warn(str(alert), RuntimeWarning, stacklevel=2)
        if self.stop_on_alert and self._control is not None:
            self._control.should_training_stop = True


def _calling_trainer() -> Trainer | None:
    """The ``Trainer`` whose training loop is calling us (the ``self`` of a frame up the stack)."""
    frame = sys._getframe(1)
    while frame is not None:
        candidate = frame.f_locals.get("self")
        if isinstance(candidate, Trainer):
            return candidate
        frame = frame.f_back  # type: ignore[assignment]
    return None
