"""All statistics of one site: which accumulators run, and the final per-site numbers."""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from neurodiag.stats import functional as fn
from neurodiag.stats.accumulators import (
    ActivationMagnitude,
    BatchDead,
    DerivativeMax,
    DerivativeMin,
    GradientMagnitude,
    NonFinite,
)
from neurodiag.stats.base import Accumulator
from neurodiag.stats.observation import ForwardObservation

DEAD_WINDOWS = ("scan", "batch")


@dataclass(frozen=True)
class StatOptions:
    """Thresholds and which optional work to do (no work for statistics nobody asked for)."""

    eps: float = 1e-3
    tau: float = 0.1
    dead_window: str = "scan"
    gradients: bool = True

    def __post_init__(self) -> None:
        if self.dead_window not in DEAD_WINDOWS:
            raise ValueError(
                f"dead window must be one of {', '.join(DEAD_WINDOWS)}, got {self.dead_window!r}"
            )
        if not (self.eps >= 0 and math.isfinite(self.eps)):
            raise ValueError(f"eps must be a finite number >= 0, got {self.eps}")
        if not (self.tau >= 0 and math.isfinite(self.tau)):
            raise ValueError(f"tau must be a finite number >= 0, got {self.tau}")


@dataclass(frozen=True)
class SiteSummary:
    """Per-site numbers (the report row without names) and per-neuron tensors (CPU)."""

    row: dict[str, Any]
    neurons: dict[str, Tensor]


class SiteStats:
    """The accumulators of one site, all on the site's device with O(neurons) memory."""

    def __init__(
        self, neurons: int, device: torch.device, dtype: torch.dtype, options: StatOptions
    ) -> None:
        self.neurons = neurons
        self.device = device
        self.dtype = dtype
        self.options = options
        self.deriv_max = DerivativeMax(neurons, device, dtype)
        self.deriv_min = DerivativeMin(neurons, device, dtype)
        self.act = ActivationMagnitude(neurons, device, dtype)
        self.nonfinite = NonFinite(device)
        self.grad = GradientMagnitude(neurons, device, dtype) if options.gradients else None
        self.batch_dead = (
            BatchDead(neurons, device, dtype, options.eps)
            if options.dead_window == "batch"
            else None
        )
        self._forward: list[
            DerivativeMax | DerivativeMin | ActivationMagnitude | NonFinite | BatchDead
        ] = [
            acc
            for acc in (self.deriv_max, self.deriv_min, self.act, self.nonfinite, self.batch_dead)
            if acc is not None
        ]

    def accumulators(self) -> Iterator[Accumulator]:
        yield from self._forward
        if self.grad is not None:
            yield self.grad

    def observe(self, obs: ForwardObservation) -> None:
        for acc in self._forward:
            acc.update(obs)

    def observe_grad(self, grad: Tensor, dims: tuple[int, ...]) -> None:
        if self.grad is not None:
            self.grad.update_grad(grad, dims)
            self.nonfinite.update_grad(grad)

    def merge(self, other: SiteStats) -> None:
        for mine, theirs in zip(self.accumulators(), other.accumulators(), strict=True):
            mine.merge(theirs)

    def all_reduce(self, group: dist.ProcessGroup | None = None) -> None:
        for acc in self.accumulators():
            acc.all_reduce(group)

    def summarize(self, delta_bar: float | None) -> SiteSummary:
        """Divide sums by counts and apply ε/τ; the only place that reads states back to host."""
        opts = self.options
        max_d = self.deriv_max.max_abs_deriv.detach().cpu()
        min_d = self.deriv_min.min_abs_deriv.detach().cpu()
        positions = int(self.act.positions)
        mean_act = self.act.sum_abs_act.detach().cpu() / max(positions, 1)
        dead = fn.dead_mask(max_d, opts.eps)
        if self.batch_dead is not None:
            calls = int(self.batch_dead.calls)
            dead_pct = 100.0 * float(self.batch_dead.dead_fraction_sum) / calls if calls else 0.0
        else:
            dead_pct = fn.percent(dead)
        act_scores = fn.normalized_scores(mean_act)
        if self.grad is not None and int(self.grad.grad_positions) > 0:
            grad_positions = int(self.grad.grad_positions)
            mean_grad = self.grad.sum_abs_grad.detach().cpu() / grad_positions
            grad_scores = fn.normalized_scores(mean_grad)
            grad_dormant: float = fn.dormant_percent(grad_scores, opts.tau)
            mag = fn.mean_abs_gradient(
                self.grad.sum_abs_grad.detach().cpu(), self.grad.grad_positions
            )
        else:
            mean_grad = torch.full_like(mean_act, math.nan)
            grad_scores = mean_grad.clone()
            grad_dormant = math.nan
            mag = math.nan
        min_abs = fn.nan_min(min_d)
        bound_ok: bool | None = None
        if delta_bar is not None and not math.isnan(min_abs):
            bound_ok = bool(min_abs >= delta_bar * (1 - 1e-5) - 1e-7)
        row = {
            "neurons": self.neurons,
            "dead_pct": dead_pct,
            "dormant_pct": fn.dormant_percent(act_scores, opts.tau),
            "grad_dormant_pct": grad_dormant,
            "mag": mag,
            "min_abs_deriv": min_abs,
            "delta_bar": delta_bar if delta_bar is not None else math.nan,
            "bound_ok": bound_ok,
            "nonfinite": int(self.nonfinite.count),
        }
        neurons = {
            "dead": dead,
            "dormant_score": act_scores,
            "grad_score": grad_scores,
            "mean_abs_activation": mean_act,
            "mean_abs_grad": mean_grad,
            "max_abs_deriv": max_d,
            "min_abs_deriv": min_d,
        }
        return SiteSummary(row, neurons)
