"""Continual backprop (Dohare et al., Nature 2024): replace a few low-utility units every step.

Per unit i of every linked site (a ``Link``: producer → [norm] → activation → consumer), after
each training step:

- h_i is read where the consumer reads it (a forward pre-hook on the consumer: after dropout or
  pooling, and act(gate)·up in a gated MLP), over every forward run with gradients enabled since
  the previous step (micro-batches of an accumulated step included; evaluation under
  ``no_grad`` is not counted);
- age_i += 1, and the utility u_i ← η·u_i + (1 − η)·mean|h_i|·mean|W_out[:, i]| (means over the
  batch positions and over the consumer's entries of unit i), read bias-corrected as
  û_i = u_i / (1 − η^age_i);
- the units with age_i > maturity are eligible; ρ × (their number) is added to the site's
  running count of units owed and floor(owed) of them, those with the lowest û (ties: lowest
  index), are replaced, the fraction kept for later steps;
- a replaced unit gets a fresh incoming row (its producer's own init, as ReDo draws it), its
  per-unit norm entries back to identity, its outgoing column zeroed, and the consumer's bias
  absorbs W_out[:, i]·mean(h_i) (summed over a conv kernel), so the outputs on the step's batch
  do not jump (exactly so when h_i was constant over it; at a conv's padded border only
  approximately; a consumer without a bias cannot absorb it). The optimiser moments of the
  touched rows and columns are zeroed; u_i = 0, age_i = 0.

Differences from the reference implementation: the mean h_i absorbed is the step's batch mean,
not a running mean (the batch the outputs are kept on), and rows are drawn by each layer's own
``reset_parameters`` rather than a fixed uniform bound.
"""

from __future__ import annotations

import math
import zlib
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from neurodiag.errors import NeurodiagError
from neurodiag.treat.topology import Link, Topology, feature_dim
from neurodiag.treat.units import layer_weight, reset_norm, reset_rows, zero_columns

#: Dohare et al.'s defaults: ρ, maturity threshold m, utility decay η.
REPLACEMENT_RATE = 1e-4
MATURITY = 100
DECAY = 0.99


def check_cbp(replacement_rate: float, maturity: int, decay: float) -> None:
    """One-line errors for CBP's hyper-parameters."""
    if not (
        isinstance(replacement_rate, int | float)
        and math.isfinite(replacement_rate)
        and 0 <= replacement_rate <= 1
    ):
        raise NeurodiagError(
            f"replacement_rate must be a number in [0, 1], got {replacement_rate!r}"
        )
    if isinstance(maturity, bool) or not isinstance(maturity, int) or maturity < 0:
        raise NeurodiagError(f"maturity must be a whole number of steps >= 0, got {maturity!r}")
    if not (isinstance(decay, int | float) and math.isfinite(decay) and 0 <= decay < 1):
        raise NeurodiagError(f"decay must be a number in [0, 1), got {decay!r}")


@dataclass
class UnitState:
    """CBP's per-site memory: utility u, age (steps since drawn) and the units owed."""

    utility: Tensor
    age: Tensor
    owed: float = 0.0
    #: this step's Σ|h_i|, Σh_i and positions, from the consumer's pre-hook
    abs_sum: Tensor | None = None
    sum: Tensor | None = None
    positions: int = 0

    def corrected(self, decay: float) -> Tensor:
        """û = u / (1 − η^age) (NaN-free: age 0 units read 0)."""
        correction = 1 - torch.pow(torch.full_like(self.utility, decay), self.age.to(self.utility))
        return torch.where(self.age > 0, self.utility / correction.clamp_min(1e-30), 0.0)


class ContinualBackprop:
    """CBP's state and hooks on ``model``'s linked sites; ``step()`` after each optimiser step.

    ``attach()`` hooks the consumers, ``detach()`` removes every hook (``with`` does both).
    """

    def __init__(
        self,
        model: nn.Module,
        links: Topology,
        *,
        replacement_rate: float = REPLACEMENT_RATE,
        maturity: int = MATURITY,
        decay: float = DECAY,
        seed: int = 0,
    ) -> None:
        check_cbp(replacement_rate, maturity, decay)
        self.model = model
        self.links = {name: link for name, link in links.items() if isinstance(link, Link)}
        self.replacement_rate = float(replacement_rate)
        self.maturity = maturity
        self.decay = float(decay)
        self.seed = seed
        self.steps = 0
        self.state: dict[str, UnitState] = {}
        for name, link in self.links.items():
            width = int(layer_weight(model.get_submodule(link.producers[0])).shape[0])
            device = layer_weight(model.get_submodule(link.consumer)).device
            self.state[name] = UnitState(
                torch.zeros(width, dtype=torch.float64, device=device),
                torch.zeros(width, dtype=torch.long, device=device),
            )
        self._handles: list[Any] = []

    def attach(self) -> ContinualBackprop:
        if not self._handles:
            for name, link in self.links.items():
                consumer = self.model.get_submodule(link.consumer)
                self._handles.append(consumer.register_forward_pre_hook(self._hook(name)))
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> ContinualBackprop:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def _hook(self, name: str) -> Any:
        def pre_hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            h = args[0] if args else None
            if not torch.is_grad_enabled() or not isinstance(h, Tensor) or h.dim() == 0:
                return
            state = self.state[name]
            axis = feature_dim(module, h.dim())
            if h.shape[axis] != state.utility.shape[0]:
                return
            flat = h.detach().movedim(axis, -1).reshape(-1, h.shape[axis]).to(torch.float64)
            abs_sum, total = flat.abs().sum(0), flat.sum(0)
            if state.abs_sum is None or state.sum is None:
                state.abs_sum, state.sum = abs_sum, total
            else:
                state.abs_sum += abs_sum
                state.sum += total
            state.positions += flat.shape[0]

        return pre_hook

    def step(self, optimizer: torch.optim.Optimizer | None = None) -> dict[str, int]:
        """Update utilities from this step's forwards, replace what is owed; returns the units
        replaced per site (sites with none left out). A site no forward reached is skipped."""
        replaced: dict[str, int] = {}
        for name, link in self.links.items():
            count = self._site_step(name, link, optimizer)
            if count:
                replaced[name] = count
        self.steps += 1
        return replaced

    def _site_step(self, name: str, link: Link, optimizer: torch.optim.Optimizer | None) -> int:
        state = self.state[name]
        if state.abs_sum is None or state.sum is None or not state.positions:
            return 0
        mean_abs = state.abs_sum / state.positions
        mean = state.sum / state.positions
        state.abs_sum = state.sum = None
        state.positions = 0
        consumer = self.model.get_submodule(link.consumer)
        weight = layer_weight(consumer)
        with torch.no_grad():
            dims = [d for d in range(weight.dim()) if d != 1]
            out_mag = weight.detach().abs().to(torch.float64).mean(dim=dims)
            state.age += 1
            state.utility.mul_(self.decay).add_((1 - self.decay) * mean_abs * out_mag)
        eligible = (state.age > self.maturity).nonzero().flatten()
        if not len(eligible):
            return 0
        state.owed += self.replacement_rate * len(eligible)
        k = min(int(state.owed), len(eligible))
        state.owed -= int(state.owed)
        if k == 0:
            return 0
        order = torch.argsort(state.corrected(self.decay)[eligible], stable=True)
        units = eligible[order[:k]]
        self.replace(link, units, mean, optimizer)
        state.utility[units] = 0.0
        state.age[units] = 0
        return k

    def replace(
        self, link: Link, units: Tensor, mean: Tensor, optimizer: torch.optim.Optimizer | None
    ) -> None:
        """Fresh rows in, norm entries to identity, the consumer's bias absorbing the units'
        mean contribution, their columns zeroed; moments of what was touched zeroed."""
        consumer = self.model.get_submodule(link.consumer)
        weight = layer_weight(consumer)
        bias = getattr(consumer, "bias", None)
        rows = units.to(weight.device)
        if isinstance(bias, Tensor):
            with torch.no_grad():
                cols = weight[:, rows].to(torch.float64)  # (out, k, *kernel)
                scale = mean.to(cols.device)[units].reshape(1, -1, *([1] * (cols.dim() - 2)))
                absorbed = (cols * scale).sum(dim=tuple(range(1, cols.dim())))
                bias.add_(absorbed.to(bias))
        salt = f"{self.seed}:{self.steps}"
        for producer in link.producers:
            layer = self.model.get_submodule(producer)
            reset_rows(layer, rows, optimizer, zlib.crc32(f"{salt}:{producer}".encode()))
        if link.norm is not None:
            reset_norm(self.model.get_submodule(link.norm), rows, optimizer)
        zero_columns(consumer, rows, optimizer)
