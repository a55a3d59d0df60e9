"""PyTorch Lightning callback: neurodiag statistics of the training steps, logged per epoch.

Only training batches are measured (the Monitor is paused, its hooks inert, outside
``on_train_batch_start`` .. ``on_train_batch_end``, so validation passes do not count).
``callback.report`` holds the Report of the whole fit; per epoch, mean/max dead % and the first
site's MAG are logged as ``neurodiag/...`` metrics.
"""

from __future__ import annotations

from typing import Any

from lightning.pytorch.callbacks import Callback

from neurodiag.monitor import Monitor
from neurodiag.report.model import Report


class NeurodiagCallback(Callback):
    def __init__(self, **monitor_options: Any) -> None:
        super().__init__()
        self.monitor_options = monitor_options
        self.monitor: Monitor | None = None
        self.report: Report | None = None

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self.monitor = Monitor(pl_module, **self.monitor_options).__enter__()
        self.monitor.pause(detach=False)

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, idx: int) -> None:
        if self.monitor is not None:
            self.monitor.resume()

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, idx: int
    ) -> None:
        if self.monitor is not None:
            self.monitor.pause(detach=False)  # inert hooks: no re-attaching every step

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if self.monitor is None or not self.monitor.steps:
            return
        rows = self.monitor.report().rows
        if rows:
            dead = [float(r["dead_pct"]) for r in rows]
            pl_module.log("neurodiag/mean_dead_pct", sum(dead) / len(dead))
            pl_module.log("neurodiag/max_dead_pct", max(dead))
            pl_module.log("neurodiag/first_site_mag", float(rows[0]["mag"]))

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._finish()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._finish()

    def _finish(self) -> None:
        if self.monitor is not None:
            self.report = self.monitor.report() if self.monitor.steps else None
            self.monitor.__exit__(None, None, None)
            self.monitor = None
