"""``neurodiag.Monitor``: the scan's statistics inside the user's own training loop.

No extra forward or backward: the same hooks as ``scan`` ride along the user's forward passes and
``loss.backward()`` calls. Hooks are attached on ``__enter__`` and removed on ``__exit__``, also
when the loop raises.

Steps: by default each forward pass of the model is a training step. A loop or framework that
knows its steps better (a callback seeing each training batch, a step with several forwards)
creates the Monitor with ``steps="manual"`` and calls ``begin_step``/``end_step``; then only
what runs between them is measured, and validation passes outside never count.

Windows: the statistics of each window of steps (``every`` N steps, or up to each
``end_window()``, e.g. per epoch) become one ``Window`` in ``history``: one host read per window,
none per step. ``report()`` is cumulative: every measured step since ``__enter__``.

torch.compile: the hooks go on the eager module behind ``torch.compile(model)``, and while they
are attached every compiled module and function runs eagerly (``neurodiag.monitor.compiled``), so
a compiled loop measures what an eager one would; a one-line warning says so.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable, Iterable
from types import TracebackType
from typing import Any, Literal

import pandas as pd
import torch
import torch.distributed as dist
from torch import nn

from neurodiag.activations.registry import REGISTRY, ActivationRegistry
from neurodiag.batch import batch_size_of
from neurodiag.check.evaluation import ThresholdsLike
from neurodiag.config import ScanConfig
from neurodiag.model_state import model_device, model_dtype
from neurodiag.monitor.alerts import Alert, AlertTracker
from neurodiag.monitor.compiled import (
    EagerStance,
    called_from_compiled_code,
    compiled_parts,
    stance_available,
)
from neurodiag.monitor.graph import GraphMeasurement
from neurodiag.monitor.update_ratio import DEFAULT_BOUNDS, UpdateRatios
from neurodiag.monitor.window import (
    Window,
    WindowKind,
    describe_window,
    history_frame,
    update_frame,
)
from neurodiag.report.build import build_report
from neurodiag.report.model import Report, ScanHeader
from neurodiag.scan import recorder_for, unwrap_compiled
from neurodiag.sites.site import Site, SiteKey
from neurodiag.stats.bundle import SiteStats
from neurodiag.stats.sync import all_reduce_sites, copy_site, stats_of

StepCounting = Literal["forward", "manual"]
CompiledMeasuring = Literal["graph", "eager"]
WindowListener = Callable[[Window], None]


class Monitor:
    """Context manager around a training loop; ``report()`` returns the same Report as ``scan``.

    ``every=N`` summarises each window of N steps into ``history`` (``to_frame()``: one row per
    window and site); ``measure_every=K`` measures one step in K — the first, then every K-th —
    for about 1/K of the hooks' cost; the statistics then describe the measured steps.
    ``thresholds`` (as ``neurodiag check`` takes them) raise an ``Alert`` the first time a site
    breaks a limit in a window, passed to ``on_alert``; ``on_window`` listeners (logger adapters)
    receive each window as it closes, with its per-neuron values.
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        every: int | None = None,
        measure_every: int = 1,
        steps: StepCounting = "forward",
        thresholds: ThresholdsLike = None,
        on_alert: Callable[[Alert], None] | None = None,
        on_window: WindowListener | Iterable[WindowListener] = (),
        track_cumulative: bool = False,
        keep_neurons: bool = False,
        sync_windows: bool | None = None,
        compiled: CompiledMeasuring = "graph",
        update_ratio: bool = False,
        update_ratio_bounds: tuple[float, float] | None = DEFAULT_BOUNDS,
        config: ScanConfig | None = None,
        registry: ActivationRegistry = REGISTRY,
        **options: Any,
    ) -> None:
        """``config`` or its fields as keywords (``eps``, ``tau``, ``dead_window``, ``include``,
        ``exclude``, ``feature_dims``): the same measuring options as ``neurodiag.scan``.

        ``track_cumulative`` keeps, per window, the report of every step so far (one more host
        read per window); ``keep_neurons`` keeps per-neuron tensors of every window (only the
        listeners get them otherwise). ``sync_windows`` (default: when torch.distributed runs
        with 2+ ranks) reduces each window across ranks: every rank must then close the same
        windows, as with any collective.

        ``update_ratio=True`` gives each window's ``update_ratios`` (per layer's ``weight``:
        ‖W_end − W_start‖ / ‖W_start‖; ``neurodiag.monitor.update_ratio``) at the cost of one
        copy of the trainable weights on their device; a trainable layer outside
        ``update_ratio_bounds`` (None: no alert) in a window raises an ``Alert``.
        """
        if every is not None and every < 1:
            raise ValueError(f"every must be >= 1, got {every}")
        if measure_every < 1:
            raise ValueError(f"measure_every must be >= 1, got {measure_every}")
        if compiled not in ("graph", "eager"):
            raise ValueError(f"compiled must be 'graph' or 'eager', got {compiled!r}")
        if steps not in ("forward", "manual"):
            raise ValueError(f"steps must be 'forward' or 'manual', got {steps!r}")
        self.model = model
        #: what the hooks go on: the eager module behind ``torch.compile(model)``
        self._target = unwrap_compiled(model)[0]
        self.every = every
        self.measure_every = measure_every
        self.step_counting: StepCounting = steps
        self.track_cumulative = track_cumulative
        self.keep_neurons = keep_neurons
        self.sync_windows = sync_windows
        self.options = (config or ScanConfig()).with_options(**options)
        self.on_alert = on_alert
        self._alerts = AlertTracker(thresholds) if thresholds is not None else None
        self._listeners = [on_window] if callable(on_window) else list(on_window)
        self._recorder = recorder_for(self._target, self.options, registry)
        self._updates = UpdateRatios(self._target, update_ratio_bounds) if update_ratio else None
        #: the epoch the steps now running belong to (set it, or let a callback); labels windows
        self.epoch: int | None = None
        self.history: list[Window] = []
        self.alerts: list[Alert] = []
        self._totals: dict[SiteKey, SiteStats] = {}
        self._steps = 0
        self._measured = 0
        self._samples = 0
        self._window_start = 0
        self._window_measured = 0
        self._window_samples = 0
        self._in_step = False
        self._count_samples = False
        self._soft_paused = False
        self._handle: Any = None
        self._started = 0.0
        self._eager = EagerStance()
        #: "graph": measure compiled code inside its graph once the sites are known
        self.compiled_measuring: CompiledMeasuring = compiled
        self._graph = GraphMeasurement()
        self._graph_reason: str | None = None  # why compiled code is measured eagerly
        self._compiled: str | None = None  # what was found compiled, for the warning and notes
        self._stack_checked = False
        self._warned_empty = False

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> Monitor:
        self._started = time.perf_counter()
        self._recorder.__enter__()
        if self.step_counting == "manual":
            self._set_enabled(False)  # nothing counts until begin_step
        try:
            self._attach_root_hook()
        except BaseException:
            self._eager.release()
            self._recorder.close()
            raise
        parts = compiled_parts(self.model)
        if parts:
            self._found_compiled("the model" if parts == ["<root>"] else ", ".join(parts))
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        try:
            if exc_type is None and self.every is not None:
                self._close_window("steps")
        finally:
            self._detach()

    def _attach_root_hook(self) -> None:
        # compiled code could not call the hooks (torch.compile): run it eagerly meanwhile
        self._eager.hold()
        self._handle = self._target.register_forward_pre_hook(self._on_forward, with_kwargs=True)

    def _set_enabled(self, enabled: bool) -> None:
        self._recorder.enabled = enabled
        self._graph.enabled = enabled

    def _graph_ready(self) -> bool:
        """Compiled code found, the sites known (a step measured eagerly), not in graph yet."""
        return (
            self.compiled_measuring == "graph"
            and self._compiled is not None
            and self._graph_reason is None
            and not self._graph.attached
            and self._handle is not None
            and self._recorder.forwards > 0
            and stance_available()
        )

    def _enter_graph(self) -> None:
        """Measure compiled code inside its graph from now on, or say why it cannot be."""
        plans = self._recorder.module_site_plans()
        if isinstance(plans, str) or not plans:
            self._graph_reason = plans if isinstance(plans, str) else "no activation site found"
            warnings.warn(
                f"neurodiag.Monitor: the compiled model keeps running eagerly while measured: "
                f"{self._graph_reason}",
                RuntimeWarning,
                stacklevel=4,
            )
            return
        self._recorder.close()  # its hooks need Python at every call; the sites stay
        self._handle.remove()
        # step counting stays in Python: on the compiled wrapper when there is one (it runs
        # outside the graph; ``_target`` is the eager module behind it), else behind
        # torch._dynamo.disable (one graph break)
        if self._target is not self.model:
            self._handle = self.model.register_forward_pre_hook(self._on_forward, with_kwargs=True)
        else:
            counted = torch._dynamo.disable(self._on_forward)  # type: ignore[no-untyped-call]
            self._handle = self._target.register_forward_pre_hook(counted, with_kwargs=True)
        self._graph.attach(plans)
        self._eager.release()

    def _detach(self) -> None:
        self._graph.detach()
        self._eager.release()
        if self._handle is not None:
            self._handle.remove()
            self._handle = None
            self._recorder.close()

    def _found_compiled(self, what: str) -> None:
        """Warn once that ``what`` is compiled and what the Monitor does about it."""
        if self._compiled is not None:
            return
        self._compiled = what
        if self._eager.held and self.compiled_measuring == "graph":
            message = (
                f"neurodiag.Monitor: {what} is compiled (torch.compile); its first measured "
                "step runs eagerly to find the sites, then it is measured inside the compiled "
                "graph (compiled code recompiles once now and once after the Monitor)"
            )
        elif self._eager.held:
            message = (
                f"neurodiag.Monitor: {what} is compiled (torch.compile); while the Monitor is "
                "attached it runs eagerly, at eager speed, and runs compiled again after"
            )
        else:
            message = (
                f"neurodiag.Monitor: {what} is compiled (torch.compile) and torch "
                f"{torch.__version__} cannot run it eagerly (needs torch >= 2.6): activation "
                "sites inside compiled code are not measured"
            )
        warnings.warn(message, RuntimeWarning, stacklevel=3)

    def pause(self, *, detach: bool = True) -> None:
        """Stop measuring (e.g. around evaluation passes), keeping everything measured so far.

        ``detach=True`` removes every hook (what you want before exporting or pickling the
        model); ``detach=False`` leaves them attached but inert, so that ``resume`` costs
        microseconds instead of re-attaching them (~1 ms on a 50-site model). Forward passes
        while paused are not steps.
        """
        if not detach:
            self._soft_paused = True
            self._set_enabled(False)
            return
        self._soft_paused = False
        self._detach()

    def resume(self) -> None:
        """Measure again after ``pause``; the same sites keep accumulating."""
        self._soft_paused = False
        if self._handle is None:
            self._recorder.__enter__()
            if self._recorder.forwards and not self._recorder.found_functional:
                self._recorder.end_discovery()  # discovery already happened before the pause
            self._attach_root_hook()
        if self.step_counting == "manual":
            self._set_enabled(self._in_step and self._measuring_this_step)

    # -- steps -------------------------------------------------------------------------------
    def begin_step(self, samples: int | None = None) -> None:
        """Start a training step (``steps="manual"``): what runs until ``end_step`` is measured.

        ``samples`` is the step's batch size; None counts the first dimension of what the
        model's own forward receives during the step (every micro-batch of an accumulated step).
        """
        if self._in_step:
            self.end_step()
        self._in_step = True
        self._count_samples = samples is None
        self._begin(samples or 0)
        if self._recorder.enabled:
            self._recorder.begin_scope()  # the step is one forward, whatever it calls

    def end_step(self) -> None:
        """End the step begun with ``begin_step``; a window of ``every`` steps closes here."""
        if not self._in_step:
            return
        self._in_step = False
        self._recorder.end_scope()
        self._set_enabled(False)
        if self.every is not None and self._steps - self._window_start >= self.every:
            self._close_window("steps")

    def end_window(self, kind: WindowKind = "manual") -> Window | None:
        """Close the current window now (e.g. at the end of an epoch) and return it.

        None when the window holds no measured step (it would read as 100 % dead).
        """
        return self._close_window(kind)

    def _on_forward(self, module: nn.Module, args: Any, kwargs: Any) -> None:
        if not self._stack_checked:  # torch.compile(step) or a compiled wrapper of the model
            self._stack_checked = True
            if called_from_compiled_code():
                self._found_compiled("the code calling the model")
        if self._soft_paused:
            self._set_enabled(False)
            return
        if self.step_counting == "forward":
            # The window of step k is complete (its backward done) when step k+1 starts.
            if self.every is not None and self._steps - self._window_start >= self.every:
                self._close_window("steps")
            self._begin(batch_size_of((args, kwargs)))
        elif self._in_step and self._count_samples and self._measuring_this_step:
            self._add_samples(batch_size_of((args, kwargs)))

    @property
    def _measuring_this_step(self) -> bool:
        return (self._steps - 1) % self.measure_every == 0

    def _begin(self, samples: int) -> None:
        # measure_every: the hooks stay attached but return at once on the steps not measured
        # (and register no gradient hook, so their backward costs nothing either)
        measured = self._steps % self.measure_every == 0
        if self._updates is not None and self._steps == self._window_start:
            self._updates.snapshot()  # the weights at the window's start
        if measured and self._graph_ready():
            self._enter_graph()
        self._set_enabled(measured)
        self._steps += 1
        if measured:
            self._measured += 1
            self._add_samples(samples)

    def _add_samples(self, samples: int) -> None:
        self._samples += samples
        self._window_samples += samples

    # -- results -------------------------------------------------------------------------
    @property
    def steps(self) -> int:
        """Training steps seen so far."""
        return self._steps

    @property
    def measured_steps(self) -> int:
        """Steps measured so far (all of them unless ``measure_every`` > 1)."""
        return self._measured

    @property
    def samples(self) -> int:
        """Samples of the measured steps so far."""
        return self._samples

    def report(self) -> Report:
        """Everything measured since ``__enter__``; reduced across ranks under torch.distributed."""
        sites = self._cumulative_sites()
        batches, samples = self._measured, self._samples
        if _distributed():
            sites = all_reduce_sites(sites, self.options)
            batches, samples = self._global_counts(batches, samples)
        window = describe_window("cumulative", 0, self._steps, None, None) if self._steps else None
        header = self._header(batches, samples, window, bool(sites))
        if not sites and batches and not self._warned_empty:
            self._warned_empty = True
            warnings.warn(f"neurodiag.Monitor: {header.notes[0]}", RuntimeWarning, stacklevel=2)
        return build_report(sites, header)

    def to_frame(self, *, cumulative: bool = False) -> pd.DataFrame:
        """The history as one row per (window, site): window, window_kind, epoch, step_start,
        step_end, samples, batches, then every report column. ``cumulative=True``: each row
        covers every step up to the window's end (needs ``track_cumulative=True``)."""
        return history_frame(self.history, cumulative=cumulative)

    def update_frame(self) -> pd.DataFrame:
        """The update ratios (``update_ratio=True``) as one row per (window, layer): window,
        step_start, step_end, epoch, layer, update_ratio, frozen."""
        return update_frame(self.history)

    def _cumulative_sites(self) -> dict[SiteKey, Site]:
        self._graph.drain()
        merged: dict[SiteKey, Site] = {}
        for key, site in self._recorder.sites.items():
            total = _copy_stats(stats_of(site))
            if key in self._totals:
                total.merge(self._totals[key])
            merged[key] = copy_site(site, total)
        return merged

    def _header(self, batches: int, samples: int, window: str | None, found: bool) -> ScanHeader:
        return ScanHeader(
            model=_model_name(self._target),
            data="training loop (Monitor)",
            loss="the training loop's own",
            samples=samples,
            batches=batches,
            device=str(model_device(self._target)),
            dtype=str(model_dtype(self._target)).removeprefix("torch."),
            seed=None,
            wall_time_s=time.perf_counter() - self._started,
            eps=self.options.eps,
            tau=self.options.tau,
            dead_window=self.options.dead_window,
            mode="train" if self._target.training else "eval",
            notes=self._notes(found, batches),
            flag_gates=self.options.flag_gates,
            window=window,
        )

    def _notes(self, found: bool, batches: int) -> tuple[str, ...]:
        notes = []
        if not found and batches:
            notes.append(
                f"no activation site was seen in {batches} measured steps that ran "
                "(none in the model, or the steps ran code that calls no hook, "
                "e.g. a torch.export/AOTInductor graph)"
            )
        elif not found:
            notes.append("no activation sites found")
        if self._compiled is not None:
            if not stance_available():
                how = "could not run eagerly: sites inside compiled code are not measured"
            elif self._graph.used:
                how = (
                    "measured inside the compiled graph after its first measured step "
                    "(traced hooks; recompiled once)"
                )
            else:
                how = "ran eagerly while measured (torch.compiler.set_stance('force_eager'))"
                if self._graph_reason is not None:
                    how += f": {self._graph_reason}"
            eager, graph = self._eager.breaks.counts, self._graph.breaks.counts
            breaks, own = eager[0] + graph[0], eager[1] + graph[1]
            notes.append(
                f"torch.compile: {self._compiled} {how}; Dynamo graph breaks while attached: "
                f"{breaks}, neurodiag's own: {own}"
                + (" (its step counter, called from inside compiled code)" if own else "")
            )
        if self.measure_every > 1:
            notes.append(
                f"measured {self._measured} of {self._steps} steps "
                f"(measure_every={self.measure_every})"
            )
        return tuple(notes)

    def _close_window(self, kind: WindowKind) -> Window | None:
        """Summarise the window into ``history`` and fold it into the running totals.

        A window in which no step was measured (``measure_every`` > ``every``) has no data and
        adds no history entry (summarising empty statistics would read as 100 % dead).
        """
        self._graph.drain()
        start, end = self._window_start, self._steps
        batches, samples = self._measured - self._window_measured, self._window_samples
        sync = self._sync()
        if end == start and not sync:
            return None
        self._window_start, self._window_measured, self._window_samples = end, self._measured, 0
        if sync:  # every rank takes part, also one that ran no step in this window
            batches, samples = self._global_counts(batches, samples)
        if batches == 0:
            return None
        updates = self._updates.ratios() if self._updates is not None else None
        live = self._recorder.sites
        sites = {key: copy_site(site, stats_of(site)) for key, site in live.items()}
        if sync:  # reduce copies: the local states still fold into the local totals
            sites = all_reduce_sites(
                {key: copy_site(site, _copy_stats(stats_of(site))) for key, site in live.items()},
                self.options,
            )
        label = describe_window(kind, start, end, self.epoch, self.every)
        report = build_report(sites, self._header(batches, samples, label, bool(sites)))
        for key, site in live.items():
            stats = stats_of(site)
            if key in self._totals:
                self._totals[key].merge(stats)
            else:
                self._totals[key] = stats
            site.replace_stats(stats.fresh())
        cumulative = None
        if self.track_cumulative:
            cumulative = self.report()
        alerts: tuple[Alert, ...] = ()
        if self._alerts is not None:
            index = len(self.history)
            alerts = tuple(self._alerts.update(report, window=index, step=end, epoch=self.epoch))
        ratios, frozen = updates or ({}, ())
        if self._updates is not None and updates is not None:
            index = len(self.history)
            alerts += tuple(
                self._updates.alerts(ratios, frozen, window=index, step=end, epoch=self.epoch)
            )
        window = Window(
            index=len(self.history),
            kind=kind,
            step_start=start,
            step_end=end,
            epoch=self.epoch,
            samples=samples,
            batches=batches,
            report=report,
            cumulative=cumulative,
            alerts=alerts,
            update_ratios=ratios,
            frozen_layers=frozen,
        )
        self.history.append(window if self.keep_neurons else window.without_neurons())
        self.alerts.extend(alerts)
        for alert in alerts:
            if self.on_alert is not None:
                self.on_alert(alert)
        for listener in self._listeners:
            listener(window)
        return window

    def _global_counts(self, batches: int, samples: int) -> tuple[int, int]:
        """Measured steps and samples of the window summed over the ranks (one collective)."""
        counts = torch.tensor(
            [batches, samples], dtype=torch.int64, device=model_device(self.model)
        )
        dist.all_reduce(counts)
        total_batches, total_samples = counts.tolist()  # the window flush's one host read
        return int(total_batches), int(total_samples)

    def _sync(self) -> bool:
        if self.sync_windows is None:
            return _distributed()
        return self.sync_windows


def _copy_stats(stats: SiteStats) -> SiteStats:
    copy = stats.fresh()
    copy.merge(stats)
    return copy


def _distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def _unwrap(model: nn.Module) -> nn.Module:
    inner = getattr(model, "module", None)
    return inner if isinstance(inner, nn.Module) else model


def _model_name(model: nn.Module) -> str:
    """The user's class name, through DDP's ``.module`` and FSDP2's ``FSDP<Name>`` subclass."""
    cls: type = type(_unwrap(model))
    if dist.is_available():
        from torch.distributed.fsdp import FSDPModule

        # fully_shard sets model.__class__ to type(f"FSDP{Name}", (FSDPModule, Name), ...)
        if issubclass(cls, FSDPModule):
            cls = next(c for c in cls.__mro__ if not issubclass(c, FSDPModule))
    return cls.__name__
