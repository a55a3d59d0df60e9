"""``Recycler``: ReDo during training, as the ReDo paper runs it (every N steps).

A ``Monitor`` window listener: each window's report says which units were dead (or τ-dormant)
over the window's steps, and the Recycler recycles them in place, resetting the optimiser's
moments of the touched rows and columns. The topology comes from one forward of an example
batch when the Recycler is made, before the Monitor attaches its hooks, so no forward of
training is added or measured::

    recycler = Recycler(model, example_batch, optimizer, tau=0.1)
    with neurodiag.Monitor(model, every=1000, on_window=recycler) as monitor:
        ...  # the training loop
    recycler.to_frame()  # window, step, epoch, site, recycled
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch
from torch import nn

from neurodiag.monitor.window import Window
from neurodiag.treat.recycle import recycle, topology

HISTORY_COLUMNS = ("window", "step", "epoch", "site", "recycled")


class Recycler:
    """Recycles, in place, what every ``every_windows``-th Monitor window found dead."""

    def __init__(
        self,
        model: nn.Module,
        example: Any,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        tau: float | None = None,
        every_windows: int = 1,
    ) -> None:
        if every_windows < 1:
            raise ValueError(f"every_windows must be >= 1, got {every_windows}")
        self.model = model
        self.optimizer = optimizer
        self.tau = tau
        self.every_windows = every_windows
        self.links = topology(model, example)
        #: one entry per treated site and window: the counts a training log wants
        self.history: list[dict[str, Any]] = []

    def __call__(self, window: Window) -> None:
        if (window.index + 1) % self.every_windows:
            return
        result = recycle(
            self.model,
            window.report,
            links=self.links,
            tau=self.tau,
            optimizer=self.optimizer,
            in_place=True,
            seed=window.index,
        )
        for treated in result.treated:
            self.history.append(
                {
                    "window": window.index,
                    "step": window.step_end,
                    "epoch": window.epoch,
                    "site": treated.site,
                    "recycled": len(treated.neurons),
                }
            )

    @property
    def recycled(self) -> int:
        """Units recycled so far (a unit recycled twice counts twice)."""
        return sum(int(entry["recycled"]) for entry in self.history)

    def to_frame(self) -> pd.DataFrame:
        frame: pd.DataFrame = pd.DataFrame(self.history, columns=list(HISTORY_COLUMNS))
        return frame
