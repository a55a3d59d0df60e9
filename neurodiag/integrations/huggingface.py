"""Hugging Face ``Trainer`` callback: neurodiag statistics of the training steps.

The Monitor measures only between ``on_step_begin`` and ``on_step_end`` (its hooks are inert
outside, so evaluation passes do not count); ``callback.report`` holds the Report of the whole
run after ``train()``, and ``neurodiag/mean_dead_pct`` / ``neurodiag/max_dead_pct`` are added
to every log.
"""

from __future__ import annotations

from typing import Any

from transformers import TrainerCallback

from neurodiag.monitor import Monitor
from neurodiag.report.model import Report


class NeurodiagTrainerCallback(TrainerCallback):
    def __init__(self, **monitor_options: Any) -> None:
        self.monitor_options = monitor_options
        self.monitor: Monitor | None = None
        self.report: Report | None = None

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        model = kwargs["model"]
        self.monitor = Monitor(model, **self.monitor_options).__enter__()
        self.monitor.pause(detach=False)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.monitor is not None:
            self.monitor.resume()

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.monitor is not None:
            self.monitor.pause(detach=False)  # inert hooks: no re-attaching every step

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        if self.monitor is None or logs is None or not self.monitor.steps:
            return
        rows = self.monitor.report().rows
        if rows:
            dead = [float(r["dead_pct"]) for r in rows]
            logs["neurodiag/mean_dead_pct"] = sum(dead) / len(dead)
            logs["neurodiag/max_dead_pct"] = max(dead)

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.monitor is not None:
            self.report = self.monitor.report() if self.monitor.steps else None
            self.monitor.__exit__(None, None, None)
            self.monitor = None
