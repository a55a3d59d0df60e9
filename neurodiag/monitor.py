"""``neurodiag.Monitor``: the scan's statistics inside the user's own training loop.

No extra forward or backward: the same hooks as ``scan`` ride along the user's forward passes and
``loss.backward()`` calls. Hooks are attached on ``__enter__`` and removed on ``__exit__``, also
when the loop raises. With ``every=N`` the statistics of each window of N forward passes are
summarised into ``history`` (one host read per window, none per step).
"""

from __future__ import annotations

import math
import time
from types import TracebackType
from typing import Any

import torch.distributed as dist
from torch import nn

from neurodiag.activations.registry import REGISTRY, ActivationRegistry
from neurodiag.config import ScanConfig
from neurodiag.model_state import model_device, model_dtype
from neurodiag.report.build import build_report
from neurodiag.report.model import Report, ScanHeader
from neurodiag.scan import recorder_for
from neurodiag.sites.site import SiteKey
from neurodiag.stats.bundle import SiteStats
from neurodiag.stats.sync import all_reduce_sites, copy_site, stats_of, summarize


class Monitor:
    """Context manager around a training loop; ``report()`` returns the same Report as ``scan``.

    ``every=N`` summarises each window of N forward passes into ``history``;
    ``measure_every=K`` measures one forward pass (and its backward) in K — the first, then every
    K-th — for about 1/K of the hooks' cost; the statistics then describe the measured passes.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        every: int | None = None,
        measure_every: int = 1,
        config: ScanConfig | None = None,
        registry: ActivationRegistry = REGISTRY,
        **options: Any,
    ) -> None:
        """``config`` or its fields as keywords (``eps``, ``tau``, ``dead_window``, ``include``,
        ``exclude``, ``feature_dims``): the same measuring options as ``neurodiag.scan``."""
        if every is not None and every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        if measure_every < 1:
            raise ValueError(f"measure_every must be >= 1, got {measure_every}")
        self.model = model
        self.every = every
        self.measure_every = measure_every
        self._measured = 0
        self._soft_paused = False
        self.options = (config or ScanConfig()).with_options(**options)
        self._recorder = recorder_for(model, self.options, registry)
        self._totals: dict[SiteKey, SiteStats] = {}
        self._steps = 0
        self._window_start = 0
        self._window_measured = 0
        self._handle: Any = None
        self._started = 0.0
        self.history: list[dict[str, Any]] = []

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> Monitor:
        self._started = time.perf_counter()
        self._recorder.__enter__()
        try:
            self._handle = self.model.register_forward_pre_hook(self._on_forward)
        except BaseException:
            self._recorder.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None and self.every is not None:
                self._close_window()
        finally:
            if self._handle is not None:
                self._handle.remove()
                self._handle = None
            self._recorder.close()

    def pause(self, *, detach: bool = True) -> None:
        """Stop measuring (e.g. around evaluation passes), keeping everything measured so far.

        ``detach=True`` removes every hook (what you want before exporting or pickling the
        model); ``detach=False`` leaves them attached but inert, so that ``resume`` costs
        microseconds instead of re-attaching them (~1 ms on a 50-site model): what the framework
        callbacks do around every training step. Forward passes while paused are not steps.
        """
        if not detach:
            self._soft_paused = True
            self._recorder.enabled = False
            return
        self._soft_paused = False
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
            self._recorder.close()

    def resume(self) -> None:
        """Measure again after ``pause``; the same sites keep accumulating."""
        self._soft_paused = False
        if self._handle is None:
            self._recorder.__enter__()
            if self._recorder.forwards and not self._recorder.found_functional:
                self._recorder.end_discovery()  # discovery already happened before the pause
            self._handle = self.model.register_forward_pre_hook(self._on_forward)

    def _on_forward(self, module: nn.Module, args: Any) -> None:
        if self._soft_paused:
            self._recorder.enabled = False
            return
        # The window of step k is complete (its backward done) when step k+1 starts.
        if self.every is not None and self._steps - self._window_start >= self.every:
            self._close_window()
        # measure_every: the hooks stay attached but return at once on the passes not measured
        # (and register no gradient hook, so their backward costs nothing either)
        measured = self._steps % self.measure_every == 0
        self._recorder.enabled = measured
        self._measured += measured
        self._steps += 1

    # -- results -------------------------------------------------------------------------
    @property
    def steps(self) -> int:
        """Forward passes seen so far."""
        return self._steps

    @property
    def measured_steps(self) -> int:
        """Forward passes measured so far (all of them unless ``measure_every`` > 1)."""
        return self._measured

    def report(self) -> Report:
        """Everything measured since ``__enter__``; reduced across ranks under torch.distributed."""
        recorder = self._recorder
        merged: dict[SiteKey, SiteStats] = {}
        for key, site in recorder.sites.items():
            total = stats_of(site).fresh()
            total.merge(stats_of(site))
            if key in self._totals:
                total.merge(self._totals[key])
            merged[key] = total
        sites = {key: copy_site(site, merged[key]) for key, site in recorder.sites.items()}
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            sites = all_reduce_sites(sites, self.options)
        header = ScanHeader(
            model=type(_unwrap(self.model)).__name__,
            data="training loop (Monitor)",
            loss="the training loop's own",
            samples=0,
            batches=self._measured,
            device=str(model_device(self.model)),
            dtype=str(model_dtype(self.model)).removeprefix("torch."),
            seed=None,
            wall_time_s=time.perf_counter() - self._started,
            eps=self.options.eps,
            tau=self.options.tau,
            dead_window=self.options.dead_window,
            mode="train" if self.model.training else "eval",
            notes=self._notes(bool(sites)),
            flag_gates=self.options.flag_gates,
        )
        return build_report(sites, header)

    def _notes(self, found: bool) -> tuple[str, ...]:
        notes = [] if found else ["no activation sites found"]
        if self.measure_every > 1:
            notes.append(
                f"measured {self._measured} of {self._steps} forward passes "
                f"(measure_every={self.measure_every})"
            )
        return tuple(notes)

    def _close_window(self) -> None:
        """Summarise the window into history and fold it into the running totals.

        A window in which no step was measured (``measure_every`` > ``every``) has no data and
        adds no history entry (summarising empty statistics would read as 100 % dead).
        """
        if self._steps == self._window_start:
            return
        if self._measured == self._window_measured:
            self._window_start = self._steps
            return
        sites = self._recorder.sites
        rows = [summary.row for summary in summarize(sites.values())]
        for key, site in sites.items():
            stats = stats_of(site)
            if key in self._totals:
                self._totals[key].merge(stats)
            else:
                self._totals[key] = stats
            site.replace_stats(stats.fresh())
        self.history.append(_window_summary(self._steps, rows))
        self._window_start = self._steps
        self._window_measured = self._measured


def _unwrap(model: nn.Module) -> nn.Module:
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, nn.Module) else model


def _window_summary(step: int, rows: list[dict[str, Any]]) -> dict[str, Any]:
    dead = [float(r["dead_pct"]) for r in rows]
    mins = [float(r["min_abs_deriv"]) for r in rows if not math.isnan(float(r["min_abs_deriv"]))]
    return {
        "step": step,
        "mean_dead_pct": sum(dead) / len(dead) if dead else math.nan,
        "max_dead_pct": max(dead) if dead else math.nan,
        "first_site_mag": float(rows[0]["mag"]) if rows else math.nan,
        "min_abs_deriv": min(mins) if mins else math.nan,
        "nonfinite": sum(int(r["nonfinite"]) for r in rows),
    }
