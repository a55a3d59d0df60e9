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

from typing import Any

from lightning.pytorch.callbacks import Callback

from neurodiag.batch import batch_size_of
from neurodiag.integrations.watch import TrainingWatch
from neurodiag.monitor import Window


class NeurodiagCallback(TrainingWatch, Callback):
    """``every``: a window every N training batches instead of per epoch; ``per_site``: log each
    site's ``metrics`` besides the summary; ``thresholds`` + ``stop_on_alert``: stop the fit the
    first time a site breaks a limit; ``recycle=True``: ReDo on each window's dead units, in
    place, with the first optimiser's moments reset (topology from the first training step).
    Other keywords go to ``neurodiag.Monitor``."""

    def __init__(self, **options: Any) -> None:
        TrainingWatch.__init__(self, **options)
        Callback.__init__(self)
        self._module: Any = None

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        self.history, self.alerts, self.report = [], [], None

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        self._module = pl_module

        def stop() -> None:
            trainer.should_stop = True

        self.start(pl_module, self._log, stop)

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if self.monitor is not None:
            self.monitor.epoch = int(trainer.current_epoch)

    def on_train_batch_start(self, trainer: Any, pl_module: Any, batch: Any, idx: int) -> None:
        optimizers = list(getattr(trainer, "optimizers", []) or [])
        self.begin_recycling_trace(pl_module, optimizers[0] if optimizers else None)
        if self.monitor is not None:
            self.monitor.begin_step(samples=batch_size_of(batch) or None)

    def on_train_batch_end(
        self, trainer: Any, pl_module: Any, outputs: Any, batch: Any, idx: int
    ) -> None:
        if self.monitor is not None:
            self.monitor.end_step()
        self.end_recycling_trace()

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self.end_epoch()

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        self._module = None  # Lightning refuses self.log() in on_train_end: history only
        self.finish()

    def on_exception(self, trainer: Any, pl_module: Any, exception: BaseException) -> None:
        self._module = None
        self.finish()

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        self.warn_if_empty(
            "the fit ran no training batch, so nothing was measured "
            "(max_epochs=0, limit_train_batches=0, or a resumed fit that was already done?)"
        )

    def _log(self, scalars: dict[str, float], window: Window) -> None:
        if self._module is None:
            return
        # An epoch window closes in on_train_epoch_end (logged per epoch), a window of `every`
        # batches in on_train_batch_end (logged at that step). The values are reduced across
        # ranks already (Monitor sync_windows), so every rank logs the same numbers.
        per_step = window.kind == "steps"
        for name, value in scalars.items():
            self._module.log(name, value, on_step=per_step, on_epoch=not per_step, sync_dist=False)
