"""All statistics of one site: which accumulators run, and the final per-site numbers."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
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
from neurodiag.stats.observation import ForwardObservation, Shortcuts, positions_of
from neurodiag.stats.passes import (
    SCRATCH_ELEMENTS,
    abs_in_scratch,
    count_nonfinite,
    finite_in_place,
    finite_in_scratch,
    grad_sweep,
    host_check,
    reductions_show_finite,
)

DEAD_WINDOWS = ("scan", "batch")

NodePreHook = Callable[[Sequence[Tensor | None]], None]


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
        self._tensor_hooks: dict[tuple[int, ...], Callable[[Tensor], None]] = {}
        self._node_hooks: dict[tuple[tuple[int, ...], int], NodePreHook] = {}

    def accumulators(self) -> Iterator[Accumulator]:
        yield from self._forward
        if self.grad is not None:
            yield self.grad

    def observe(self, obs: ForwardObservation) -> None:
        if self.batch_dead is None:
            step = obs.step_sources()
            if step is not None:  # the step shortcut (ReLU): the same updates, fewer calls
                sum_abs, low = step
                derivative, from_z = obs.derivative, obs.z is not None
                self.deriv_max.defer(sum_abs, derivative, from_z)
                self.deriv_min.defer(low, derivative, from_z)
                self.act.add(sum_abs, obs.positions)
                self.nonfinite.add_sweep(obs.swept())
                return
        for acc in self._forward:
            acc.update(obs)

    def observe_call(
        self,
        z: Tensor | None,
        a: Tensor,
        derivative: Callable[[Tensor | None, Tensor], Tensor],
        dims: tuple[int, ...],
        shortcuts: Shortcuts,
    ) -> None:
        """``observe(ForwardObservation(z, a, ...))``, with a fused path for the common case.

        The common case is a ReLU-like site (``Shortcuts.step``) on a CPU tensor small enough for
        the scratch buffer: then the four full-size ops (Σa, min z, the two of the non-finite
        count) and the updates run straight through, without the observation object and its
        lazy properties (per-call Python costs as much as the ops on small layers). Same
        numbers as the general path.
        """
        if (
            shortcuts.step
            and shortcuts.monotone
            and shortcuts.nonnegative
            and shortcuts.trust_z
            and dims
            and a.is_cpu
            and self.batch_dead is None
        ):
            x = z if z is not None else a
            n = a.numel()
            if n <= SCRATCH_ELEMENTS and x.dtype == a.dtype:
                sum_abs = a.sum(dims, dtype=self.dtype)
                low = torch.amin(x, dims)
                if not host_check(x):
                    self.nonfinite.add_finite_one(n, finite_in_scratch(x))
                elif not reductions_show_finite(low, sum_abs):  # see passes: Σa and min x
                    self.nonfinite.add_nonfinite(count_nonfinite(x))
                from_z = z is not None
                self.deriv_max.defer(sum_abs, derivative, from_z)
                self.deriv_min.defer(low, derivative, from_z)
                self.act.add(sum_abs, self._positions(a, dims))
                return
        self.observe(ForwardObservation(z, a, derivative, dims, shortcuts))

    def _positions(self, x: Tensor, dims: tuple[int, ...]) -> int:
        """Positions per neuron of a call on x (numel / neurons: no loop on the hot path)."""
        neurons = self.neurons
        return x.numel() // neurons if neurons else positions_of(x.shape, dims)

    def tensor_hook(self, dims: tuple[int, ...]) -> Callable[[Tensor], None]:
        """A ``Tensor.register_hook`` hook feeding ∂L/∂a to these statistics (one per dims)."""
        hook = self._tensor_hooks.get(dims)
        if hook is None:

            def hook(grad: Tensor) -> None:
                self.observe_grad(grad.detach(), dims)

            self._tensor_hooks[dims] = hook
        return hook

    def node_hook(self, dims: tuple[int, ...], output_nr: int) -> NodePreHook:
        """The same hook as a pre-hook of a's autograd node (``a.grad_fn.register_prehook``).

        Cheaper than a tensor hook (no Python wrapper around the registration, no handle dict on
        the tensor); it receives the node's incoming gradients and takes ∂L/∂a at a's output
        index, skipping undefined ones as tensor hooks are skipped.
        """
        key = (dims, output_nr)
        hook = self._node_hooks.get(key)
        if hook is None:

            def hook(grads: Sequence[Tensor | None]) -> None:
                grad = grads[output_nr]
                if grad is not None:
                    self.observe_grad(grad.detach() if grad.requires_grad else grad, dims)

            self._node_hooks[key] = hook
        return hook

    def observe_grad(self, grad: Tensor, dims: tuple[int, ...]) -> None:
        grad_acc = self.grad
        if grad_acc is None:
            return
        if dims and grad.is_cpu and grad.numel() <= SCRATCH_ELEMENTS:  # the common small case
            g = abs_in_scratch(grad)
            total = g.sum(dims, dtype=self.dtype)
            grad_acc.add_sum(total, self._positions(grad, dims))
            if not host_check(grad):
                self.nonfinite.add_finite_one(grad.numel(), finite_in_place(g))
            elif not reductions_show_finite(total):  # Σ|∂L/∂a| is finite iff every entry is
                self.nonfinite.add_nonfinite(count_nonfinite(grad))
            return
        # one sweep: Σ|∂L/∂a| per neuron and the non-finite count, sharing |∂L/∂a|
        sum_abs, finite, nonfinite = grad_sweep(grad, dims, self.dtype)
        grad_acc.update_sum(sum_abs, grad.shape, dims)
        if finite is not None:
            self.nonfinite.add_finite(grad.numel(), (finite,))
        elif nonfinite is not None:
            self.nonfinite.add_nonfinite(nonfinite)

    def merge(self, other: SiteStats) -> None:
        for mine, theirs in zip(self.accumulators(), other.accumulators(), strict=True):
            mine.merge(theirs)

    def all_reduce(self, group: dist.ProcessGroup | None = None) -> None:
        for acc in self.accumulators():
            acc.all_reduce(group)

    def flush(self) -> None:
        """Fold the pending host counts of every accumulator into their tensor states."""
        for acc in self.accumulators():
            acc.flush()

    def summarize(self, delta_bar: float | None) -> SiteSummary:
        """Divide sums by counts and apply ε/τ; reads the states back to the host (one site)."""
        return summarize_sites([self], [delta_bar])[0]

    def host_payload(self) -> tuple[list[Tensor], list[Tensor]]:
        """The per-neuron states and the counts a summary needs (flushed), still on the device."""
        grad = self.grad
        per_neuron = [
            self.deriv_max.max_abs_deriv,
            self.deriv_min.min_abs_deriv,
            self.act.sum_abs_act,
        ]
        if grad is not None:
            per_neuron.append(grad.sum_abs_grad)
        counts = [self.act.positions, self.nonfinite.count]
        if grad is not None:
            counts.append(grad.grad_positions)
        if self.batch_dead is not None:
            counts.append(self.batch_dead.calls)
        return per_neuron, counts

    def summarize_host(
        self, host: np.ndarray, host_counts: list[int], delta_bar: float | None
    ) -> SiteSummary:
        """The summary from ``host_payload`` read back: ``host`` is (states, F), the counts ints.

        The arithmetic runs on numpy arrays of the state dtype (a report summarises every site:
        per-op torch dispatch on F-sized tensors would cost more than the scan's hooks on small
        models).
        """
        opts = self.options
        grad = self.grad
        positions, nonfinite = host_counts[0], host_counts[1]
        grad_positions = host_counts[2] if grad is not None else 0
        dead_sum = float(self.batch_dead.dead_fraction_sum) if self.batch_dead is not None else 0.0
        with np.errstate(all="ignore"):  # non-finite neurons are expected: no warnings
            max_d, min_d = host[0], host[1]
            mean_act = host[2] / host.dtype.type(max(positions, 1))
            dead = max_d <= opts.eps
            if self.batch_dead is not None:
                calls = host_counts[-1]
                dead_pct = 100.0 * dead_sum / calls if calls else 0.0
            else:
                dead_pct = fn.percent_np(dead)
            act_scores = fn.normalized_scores_np(mean_act)
            if grad_positions > 0:
                sum_grad = host[3]
                mean_grad = sum_grad / host.dtype.type(grad_positions)
                grad_scores = fn.normalized_scores_np(mean_grad)
                grad_dormant: float = fn.dormant_percent_np(grad_scores, opts.tau)
                mag = fn.mean_abs_gradient_np(sum_grad, grad_positions)
            else:
                mean_grad = np.full_like(mean_act, math.nan)
                grad_scores = mean_grad.copy()
                grad_dormant = math.nan
                mag = math.nan
            min_abs = fn.nan_min_np(min_d)
            dormant = fn.dormant_percent_np(act_scores, opts.tau)
        bound_ok: bool | None = None
        if delta_bar is not None and not math.isnan(min_abs):
            bound_ok = bool(min_abs >= delta_bar * (1 - 1e-5) - 1e-7)
        row = {
            "neurons": self.neurons,
            "dead_pct": dead_pct,
            "dormant_pct": dormant,
            "grad_dormant_pct": grad_dormant,
            "mag": mag,
            "min_abs_deriv": min_abs,
            "delta_bar": delta_bar if delta_bar is not None else math.nan,
            "bound_ok": bound_ok,
            "nonfinite": nonfinite,
        }
        neurons = {
            "dead": torch.from_numpy(dead),
            "dormant_score": torch.from_numpy(act_scores),
            "grad_score": torch.from_numpy(grad_scores),
            "mean_abs_activation": torch.from_numpy(mean_act),
            "mean_abs_grad": torch.from_numpy(mean_grad),
            "max_abs_deriv": torch.from_numpy(max_d),
            "min_abs_deriv": torch.from_numpy(min_d),
        }
        return SiteSummary(row, neurons)


def summarize_sites(
    sites: Sequence[SiteStats], delta_bars: Sequence[float | None]
) -> list[SiteSummary]:
    """``summarize`` of many sites with one device-to-host transfer per state dtype.

    A report reads every site; one ``cat``/``stack`` and one copy instead of two per site keeps
    the report's cost flat in the number of sites (50 small sites: ~4x faster).
    """
    payloads = [stats.host_payload() for stats in sites]
    host_rows: list[np.ndarray | None] = [None] * len(sites)
    by_dtype: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, stats in enumerate(sites):
        by_dtype.setdefault((stats.device, stats.dtype), []).append(i)
    for members in by_dtype.values():
        flat = torch.cat([t.reshape(-1) for i in members for t in payloads[i][0]])
        host_flat = flat.detach().cpu().numpy()
        offset = 0
        for i in members:
            per_neuron = payloads[i][0]
            size = len(per_neuron) * sites[i].neurons
            host_rows[i] = host_flat[offset : offset + size].reshape(
                len(per_neuron), sites[i].neurons
            )
            offset += size
    all_counts = [c for _, counts in payloads for c in counts]
    flat_counts = (
        [
            int(c)
            for c in torch.stack([c.to(all_counts[0].device) for c in all_counts]).cpu().tolist()
        ]
        if all_counts
        else []
    )
    summaries = []
    offset = 0
    for stats, (_, counts), host, delta_bar in zip(
        sites, payloads, host_rows, delta_bars, strict=True
    ):
        assert host is not None
        host_counts = flat_counts[offset : offset + len(counts)]
        offset += len(counts)
        summaries.append(stats.summarize_host(host, host_counts, delta_bar))
    return summaries
