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

``method="regrama"`` scores the units on the gradient of their pre-activation instead, added up
over the training steps themselves by tensor hooks (``PreActivationGrads``) attached once the
topology is known; ``close()`` removes them.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch
from torch import nn

from neurodiag.errors import NeurodiagError
from neurodiag.monitor.window import Window
from neurodiag.treat.gradients import PreActivationGrads
from neurodiag.treat.recycle import METHODS, recycle
from neurodiag.treat.topology import Topology, TopologyTrace, topology

HISTORY_COLUMNS = ("window", "step", "epoch", "site", "recycled")


class Recycler:
    """Recycles, in place, what every ``every_windows``-th Monitor window found dead.

    Made with ``model`` and ``example`` it is ready at once; made without (as the callbacks'
    ``recycle=True`` makes it), ``prepare`` supplies them later, or ``trace(model)`` reads the
    topology from a real training step (whatever it calls). ``method``: ``"redo"`` (the
    window's dead units, τ-dormant too with ``tau``) or ``"regrama"`` (G_i ≤ ``tau``, default
    0.01, over the steps since the last treatment).
    """

    def __init__(
        self,
        model: nn.Module | None = None,
        example: Any = None,
        optimizer: torch.optim.Optimizer | None = None,
        *,
        tau: float | None = None,
        every_windows: int = 1,
        method: str = "redo",
    ) -> None:
        if every_windows < 1:
            raise ValueError(f"every_windows must be >= 1, got {every_windows}")
        if method not in METHODS:
            raise NeurodiagError(
                f"unknown recycling method {method!r}; use one of {', '.join(map(repr, METHODS))}"
            )
        self.model: nn.Module | None = None
        self.optimizer = optimizer
        self.tau = tau
        self.every_windows = every_windows
        self.method = method
        self.links: Topology | None = None
        #: regrama: Σ|∂L/∂z| per unit over the training steps since the last treatment
        self.grads: PreActivationGrads | None = None
        #: one entry per treated site and window: the counts a training log wants
        self.history: list[dict[str, Any]] = []
        if model is not None and example is not None:
            self.prepare(model, example, optimizer)

    @property
    def ready(self) -> bool:
        return self.links is not None

    def prepare(
        self, model: nn.Module, example: Any, optimizer: torch.optim.Optimizer | None = None
    ) -> None:
        """The topology forward on ``example`` (no grad, modes restored), and the optimiser
        whose moments are reset (kept if one was given before)."""
        self.model = model
        self.optimizer = optimizer if optimizer is not None else self.optimizer
        self._linked(topology(model, example))

    def _linked(self, links: Topology) -> None:
        """Keep the topology; for regrama, hook the linked pre-activations from now on."""
        self.links = links
        if self.method == "regrama" and self.model is not None:
            self.close()
            self.grads = PreActivationGrads(self.model, links).attach()

    def close(self) -> None:
        """Remove regrama's gradient hooks (nothing to do for redo)."""
        if self.grads is not None:
            self.grads.detach()
            self.grads = None

    def trace(
        self, model: nn.Module, optimizer: torch.optim.Optimizer | None = None
    ) -> TopologyTrace:
        """A context around one training step: its module calls give the topology."""
        recycler = self

        class _Trace(TopologyTrace):
            def __exit__(self, *exc: object) -> None:
                super().__exit__(*exc)
                recycler.model = model
                recycler.optimizer = optimizer if optimizer is not None else recycler.optimizer
                recycler._linked(self.links())

        return _Trace(model)

    def __call__(self, window: Window) -> None:
        if self.model is None or self.links is None or (window.index + 1) % self.every_windows:
            return
        scores = None
        if self.grads is not None:
            scores = self.grads.scores()
            self.grads.reset()
        result = recycle(
            self.model,
            window.report,
            links=self.links,
            method=self.method,
            tau=self.tau,
            optimizer=self.optimizer,
            in_place=True,
            seed=window.index,
            grad_scores=scores,
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
