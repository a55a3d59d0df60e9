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
from typing import Any

from transformers import Trainer, TrainerCallback

from neurodiag.integrations.watch import TrainingWatch
from neurodiag.monitor import Window


class NeurodiagTrainerCallback(TrainingWatch, TrainerCallback):
    """``every``: a window every N optimizer steps instead of per epoch; ``per_site``: log each
    site's ``metrics`` besides the summary; ``thresholds`` + ``stop_on_alert``: stop training
    the first time a site breaks a limit. Other keywords go to ``neurodiag.Monitor``."""

    def __init__(self, *, trainer: Trainer | None = None, **options: Any) -> None:
        TrainingWatch.__init__(self, **options)
        self.trainer = trainer
        self._control: Any = None

    @classmethod
    def attach(cls, trainer: Trainer, **options: Any) -> NeurodiagTrainerCallback:
        """Create the callback for ``trainer`` and add it to the trainer's callbacks."""
        callback = cls(trainer=trainer, **options)
        trainer.add_callback(callback)
        return callback

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.trainer is None:
            self.trainer = _calling_trainer()
        self._control = control
        self.start(kwargs["model"], self._log, self._stop)

    def on_epoch_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.monitor is not None:
            self.monitor.epoch = math.floor((state.epoch or 0.0) + 1e-9)

    def on_step_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if "model" in kwargs:  # recycle=True: the first step's calls give the topology
            self.begin_recycling_trace(kwargs["model"], kwargs.get("optimizer"))
        if self.monitor is not None:
            self._control = control
            self.monitor.begin_step()  # samples counted from the model's forward inputs

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.monitor is not None:
            self._control = control
            self.monitor.end_step()
        self.end_recycling_trace()

    def on_epoch_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._control = control
        self.end_epoch()

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.finish()
        self.warn_if_empty("training ran no step, so nothing was measured")

    def _log(self, scalars: dict[str, float], window: Window) -> None:
        if self.trainer is not None:
            self.trainer.log(scalars)
        else:  # pragma: no cover - on_train_begin found no Trainer
            warnings.warn(
                "neurodiag: no Trainer to log through; "
                "use NeurodiagTrainerCallback.attach(trainer)",
                RuntimeWarning,
                stacklevel=2,
            )

    def _stop(self) -> None:
        if self._control is not None:
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
