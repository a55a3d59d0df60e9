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
topology is known; ``close()`` removes them. ``method="shrink_perturb"`` shrinks and perturbs
every parameter at each treated window (``neurodiag.treat.shrink_perturb``; no topology needed).

``method="cbp"`` (continual backprop, ``neurodiag.treat.cbp``) works per training STEP, not per
window: call ``recycler.step()`` after each ``optimizer.step()``; the activations come from
forward hooks the Recycler attaches to the linked consumers, and ``close()`` (or ``with``)
removes them::

    with Recycler(model, example_batch, optimizer, method="cbp", replacement_rate=1e-4) as cbp:
        for x, y in loader:
            ...  # forward, backward, optimizer.step()
            cbp.step()

``step()`` does nothing for the window methods and a window does nothing for CBP, so one loop
(a Monitor with ``on_window=recycler`` and ``recycler.step()``) serves every method.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import torch
from torch import nn

from neurodiag.errors import NeurodiagError
from neurodiag.monitor.window import Window
from neurodiag.treat.cbp import DECAY, MATURITY, REPLACEMENT_RATE, ContinualBackprop, check_cbp
from neurodiag.treat.gradients import PreActivationGrads
from neurodiag.treat.recycle import PERTURB, RECYCLE_METHODS, SHRINK, recycle
from neurodiag.treat.shrink_perturb import check_shrink_perturb
from neurodiag.treat.topology import Topology, TopologyTrace, topology

HISTORY_COLUMNS = ("window", "step", "epoch", "site", "recycled")
#: Every method a Recycler runs: ``recycle``'s, applied per window, and CBP, per step.
RECYCLER_METHODS = (*RECYCLE_METHODS, "cbp")
#: ``history``'s site for Shrink & Perturb, which treats every parameter and replaces no unit.
WHOLE_NETWORK = "*"


class Recycler:
    """Recycles, in place, what every ``every_windows``-th Monitor window found dead.

    Made with ``model`` and ``example`` it is ready at once; made without (as the callbacks'
    ``recycle=True`` makes it), ``prepare`` supplies them later, or ``trace(model)`` reads the
    topology from a real training step (whatever it calls). ``method``: ``"redo"`` (the
    window's dead units, τ-dormant too with ``tau``), ``"regrama"`` (G_i ≤ ``tau``, default
    0.01, over the steps since the last treatment), ``"shrink_perturb"`` (θ ← ``shrink``·θ +
    ``perturb``·ε at each treated window; the model alone makes it ready) or ``"cbp"``
    (``replacement_rate`` ρ, ``maturity`` m, ``decay`` η; per ``step()``). ``seed`` salts the
    draws (fresh rows, Shrink & Perturb's noise) with the window index or step, so a run
    repeats.
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
        shrink: float = SHRINK,
        perturb: float = PERTURB,
        replacement_rate: float = REPLACEMENT_RATE,
        maturity: int = MATURITY,
        decay: float = DECAY,
        seed: int = 0,
    ) -> None:
        if every_windows < 1:
            raise ValueError(f"every_windows must be >= 1, got {every_windows}")
        if method not in RECYCLER_METHODS:
            raise NeurodiagError(
                f"unknown recycling method {method!r}; "
                f"use one of {', '.join(map(repr, RECYCLER_METHODS))}"
            )
        check_shrink_perturb(shrink, perturb)
        check_cbp(replacement_rate, maturity, decay)
        self.shrink, self.perturb = shrink, perturb
        self.replacement_rate, self.maturity, self.decay = replacement_rate, maturity, decay
        self.seed = seed
        self.model: nn.Module | None = None
        self.optimizer = optimizer
        self.tau = tau
        self.every_windows = every_windows
        self.method = method
        self.links: Topology | None = None
        #: regrama: Σ|∂L/∂z| per unit over the training steps since the last treatment
        self.grads: PreActivationGrads | None = None
        #: cbp: utilities, ages and the consumers' forward hooks
        self.cbp: ContinualBackprop | None = None
        #: cbp: training steps seen by ``step()``
        self.steps = 0
        #: one entry per treated site and window (cbp: and step): the counts a log wants
        self.history: list[dict[str, Any]] = []
        if model is not None and example is not None:
            self.prepare(model, example, optimizer)
        elif model is not None and method == "shrink_perturb":
            self.model, self.links = model, {}

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
        """Keep the topology; for regrama, hook the linked pre-activations from now on; for
        cbp, the linked consumers' inputs."""
        self.links = links
        if self.model is None:
            return
        if self.method == "regrama":
            self.close()
            self.grads = PreActivationGrads(self.model, links).attach()
        elif self.method == "cbp":
            self.close()
            self.cbp = ContinualBackprop(
                self.model,
                links,
                replacement_rate=self.replacement_rate,
                maturity=self.maturity,
                decay=self.decay,
                seed=self.seed,
            ).attach()

    def close(self) -> None:
        """Remove regrama's gradient hooks and cbp's forward hooks (redo has none). CBP's
        utilities and ages stay in ``self.cbp``."""
        if self.grads is not None:
            self.grads.detach()
            self.grads = None
        if self.cbp is not None:
            self.cbp.detach()

    def __enter__(self) -> Recycler:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def step(self, *, epoch: int | None = None) -> dict[str, int]:
        """CBP after one optimiser step: utilities from this step's forwards, the units owed
        replaced in place (counts per site, also in ``history``). Nothing for other methods,
        or before the topology is known."""
        if self.method != "cbp" or self.cbp is None:
            return {}
        replaced = self.cbp.step(self.optimizer)
        for site, count in replaced.items():
            self.history.append(
                {
                    "window": None,
                    "step": self.steps,
                    "epoch": epoch,
                    "site": site,
                    "recycled": count,
                }
            )
        self.steps += 1
        return replaced

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
        if self.method == "cbp":
            return  # per step(), not per window
        if self.model is None or self.links is None or (window.index + 1) % self.every_windows:
            return
        if self.method == "shrink_perturb":
            recycle(
                self.model,
                method="shrink_perturb",
                shrink=self.shrink,
                perturb=self.perturb,
                in_place=True,
                seed=self.seed * 1_000_003 + window.index,
            )
            self.history.append(
                {
                    "window": window.index,
                    "step": window.step_end,
                    "epoch": window.epoch,
                    "site": WHOLE_NETWORK,
                    "recycled": 0,
                }
            )
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
            seed=window.index if not self.seed else self.seed * 1_000_003 + window.index,
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
