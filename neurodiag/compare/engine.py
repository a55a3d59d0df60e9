"""``compare``: train the model and swapped-activation variants under identical conditions.

Per variant: the same initial weights (deep copies), the same batches in the same order, the
global RNG seeded with ``seed`` inside ``torch.random.fork_rng`` (the caller's RNG is untouched),
then after each epoch a ``neurodiag.scan`` of the training data. Two calls with the same seed give
identical numbers on the same machine.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from neurodiag.activations.bernstein import use_compiled_kernels
from neurodiag.compare.summary import (
    Comparison,
    VariantResult,
    site_summary,
    train_window_summary,
)
from neurodiag.compare.training import (
    INITS,
    SCHEDULES,
    EpochBatches,
    Runner,
    epoch_lengths,
    initialise,
    make_optimizer,
    make_schedule,
    optimizer_class,
)
from neurodiag.compare.variants import (
    BASELINE,
    Variant,
    build_variants,
    copy_model,
    parse_specs,
)
from neurodiag.config import ScanConfig
from neurodiag.errors import NeurodiagError, Terminated
from neurodiag.loss import UserLoss
from neurodiag.model_state import model_device
from neurodiag.monitor import Monitor, Window
from neurodiag.report.model import Report
from neurodiag.scan import ScanInterrupted, scan


@dataclass(frozen=True)
class CompareProgress:
    """Passed to ``on_step`` after every optimizer step and every scan; ``done``/``total`` count
    both over all variants, so a single progress bar can follow the whole comparison."""

    variant: str
    phase: str  # "train" | "scan"
    epoch: int
    done: int
    total: int


def compare(
    model: nn.Module,
    data: Iterable[Any],
    specs: Sequence[str],
    *,
    epochs: int = 0,
    steps: int | None = None,
    optimizer: str = "adam",
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    momentum: float = 0.0,
    schedule: str = "constant",
    init: str = "model",
    train_window: bool = True,
    batch_size: int | None = None,
    seed: int = 0,
    eval_data: Iterable[Any] | None = None,
    loss_fn: UserLoss | None = None,
    scan_batches: int | None = None,
    compiled_kernels: bool = False,
    on_step: Callable[[CompareProgress], None] | None = None,
    config: ScanConfig | None = None,
    data_name: str | None = None,
    **scan_options: Any,
) -> Comparison:
    """Compare ``model`` ("baseline") with one copy per activation spec in ``specs``.

    ``epochs == 0`` and ``steps is None``: one scan of each variant at initialisation. Otherwise
    each variant trains (``optimizer`` adam/adamw/sgd at ``lr`` with ``weight_decay``, SGD
    ``momentum``, the ``schedule`` constant/cosine/step over all steps; the scan's default
    loss: cross-entropy for class ids, MSE for float targets) for ``epochs`` passes over
    ``data``, stopping after ``steps`` optimizer steps in total if given. ``init`` (model, he,
    xavier, torch) re-initialises the Linear/Conv weights of a copy first, the same for all.
    ``train_window`` also measures every training step (``neurodiag.Monitor``, always with
    ``dead_window="batch"``): each epoch's training batches are one window whose dead % is the
    per-batch dead % averaged over its batches (``train_*_dead_pct`` in the history; the last
    one is the paper's Fig. 3 window, ``VariantResult.train_window``), beside the post-epoch
    scan (which keeps ``config.dead_window``).
    ``batch_size`` re-batches and reshuffles the samples each epoch; without it the batches are
    used as given, in order. ``compiled_kernels`` runs every Bernstein activation of the
    variants through the shared torch.compile'd kernels (``Bernstein.compiled_kernel``): a few
    seconds of compiling per input shape; the last bits differ from the eager kernels.
    After each epoch (and at epoch 0) the variant is scanned on the training data
    (``scan_batches`` caps the batches; ``config`` or its fields as ``scan_options`` say how,
    as for ``neurodiag.scan``; every variant is scanned with ``seed``), its eval-mode
    training loss is measured and, with ``eval_data``, its accuracy when targets are class ids.
    ``data_name`` (what the data is, e.g. a DataSource's description) and the loss the scans
    used are kept in ``settings`` (``data``, ``loss``) so that every output says them.
    """
    _check(epochs, steps, lr, batch_size, scan_batches, optimizer)
    _check_training(optimizer, weight_decay, momentum, schedule, init)
    scan_config = (config or ScanConfig()).with_options(**scan_options, seed=seed)
    parsed = parse_specs(specs)
    started = time.perf_counter()
    batches = EpochBatches(data, batch_size, seed)
    eval_batches = list(eval_data) if eval_data is not None else None
    plan = epoch_lengths(epochs, steps, len(batches))
    variants = build_variants(_initialised(model, init, seed), parsed, batches.epoch(0)[0], seed)
    if compiled_kernels:
        for variant in variants:
            use_compiled_kernels(variant.model)
    progress = _Progress(on_step, len(variants) * (sum(plan) + len(plan) + 1))
    scan_data = batches.epoch(0)[:scan_batches]
    training = _Training(optimizer, lr, weight_decay, momentum, schedule, train_window)
    context = _Context(batches, scan_data, eval_batches, plan, training, seed, loss_fn)
    results: list[VariantResult] = []
    stopped: BaseException | None = None
    for variant in variants:
        try:
            results.append(_run(variant, context, progress, scan_config))
        except (KeyboardInterrupt, ScanInterrupted) as stop:  # Ctrl-C / SIGTERM
            stopped = stop
            break
    settings = {
        "optimizer": optimizer,
        "lr": lr,
        "weight_decay": weight_decay,
        "momentum": momentum,
        "schedule": schedule,
        "init": init,
        "train_window": train_window,
        "batch_size": batch_size,
        "epochs_requested": epochs,
        "steps": steps,
        "scan_batches": scan_batches,
        "compiled_kernels": compiled_kernels,
        "batches_per_epoch": len(batches),
        "data": data_name,
        "loss": results[0].report.header.loss if results else None,
        **{k: v for k, v in asdict(scan_config).items() if isinstance(v, (int, float, str, bool))},
    }
    comparison = Comparison(results, seed, len(plan), settings, time.perf_counter() - started)
    if stopped is not None:
        terminated = isinstance(stopped, Terminated) or getattr(stopped, "terminated", False)
        raise CompareInterrupted(comparison, len(variants), terminated)
    return comparison


class CompareInterrupted(Exception):
    """Ctrl-C or SIGTERM during ``compare``: ``comparison`` holds the variants that finished."""

    def __init__(self, comparison: Comparison, planned: int, terminated: bool) -> None:
        super().__init__("compare interrupted")
        self.comparison = comparison
        self.planned = planned
        self.terminated = terminated


@dataclass(frozen=True)
class _Training:
    optimizer: str
    lr: float
    weight_decay: float
    momentum: float
    schedule: str
    train_window: bool


@dataclass
class _Context:
    batches: EpochBatches
    scan_data: list[Any]  # the training batches in their own order, capped by scan_batches
    eval_batches: list[Any] | None
    plan: list[int]
    training: _Training
    seed: int
    loss_fn: UserLoss | None


class _Progress:
    def __init__(self, callback: Callable[[CompareProgress], None] | None, total: int) -> None:
        self.callback = callback
        self.total = total
        self.done = 0

    def tick(self, variant: str, phase: str, epoch: int) -> None:
        self.done += 1
        if self.callback is not None:
            self.callback(CompareProgress(variant, phase, epoch, self.done, self.total))


def _run(variant: Variant, ctx: _Context, progress: _Progress, config: ScanConfig) -> VariantResult:
    """Train and scan one variant with the global RNG seeded identically for every variant."""
    started = time.perf_counter()
    device = model_device(variant.model)
    devices = [device.index or 0] if device.type == "cuda" else []
    training = ctx.training
    monitor: Monitor | None = None
    window: Window | None = None
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(ctx.seed)
        runner = Runner(variant.model, ctx.loss_fn, ctx.seed)
        opt = schedule = None
        if ctx.plan:
            opt = make_optimizer(
                training.optimizer,
                variant.model,
                training.lr,
                weight_decay=training.weight_decay,
                momentum=training.momentum,
            )
            schedule = make_schedule(training.schedule, opt, sum(ctx.plan))
            if training.train_window:
                # the paper's Fig. 3 window: the per-batch dead % averaged over the epoch's
                # training batches, whatever window the post-epoch scans use
                window_config = config.with_options(dead_window="batch")
                monitor = Monitor(variant.model, steps="manual", config=window_config).__enter__()
                monitor.pause()  # hooks only while training steps run
        try:
            history: list[dict[str, Any]] = []
            report = _record(variant, runner, ctx, history, 0, 0, config, progress, None)
            if variant.name == BASELINE:
                variant.activation = _activations(report)
            step = 0
            for epoch, length in enumerate(ctx.plan, start=1):
                assert opt is not None
                if monitor is not None:
                    monitor.resume()
                    monitor.epoch = epoch
                for batch in ctx.batches.epoch(epoch)[:length]:
                    if monitor is not None:
                        monitor.begin_step()
                    loss = runner.step(batch, opt)
                    if monitor is not None:
                        monitor.end_step()
                    if schedule is not None:
                        schedule.step()
                    step += 1
                    if not math.isfinite(loss) and not any(
                        "non-finite" in n for n in variant.notes
                    ):
                        variant.notes.append(f"training loss became non-finite at step {step}")
                    progress.tick(variant.name, "train", epoch)
                if monitor is not None:
                    window = monitor.end_window("epoch")
                    monitor.pause()
                report = _record(
                    variant, runner, ctx, history, epoch, step, config, progress, window
                )
        finally:
            if monitor is not None:
                monitor.__exit__(None, None, None)
    return VariantResult(
        variant.name,
        variant.activation,
        history,
        report,
        variant.model,
        variant.notes,
        train_window=window.report if window is not None else None,
        wall_time_s=time.perf_counter() - started,
    )


def _record(
    variant: Variant,
    runner: Runner,
    ctx: _Context,
    history: list[dict[str, Any]],
    epoch: int,
    step: int,
    config: ScanConfig,
    progress: _Progress,
    window: Window | None,
) -> Report:
    """Scan after an epoch; ``window``: the epoch's training steps as the Monitor measured them."""
    data = ctx.scan_data
    report = scan(
        variant.model,
        data,
        config,
        loss_fn=ctx.loss_fn,
        model_name=variant.name,
        data_name="training data",
    )
    accuracy = runner.accuracy(ctx.eval_batches) if ctx.eval_batches is not None else None
    entry: dict[str, Any] = {"epoch": epoch, "step": step, "loss": runner.mean_loss(data)}
    entry["accuracy"] = accuracy
    entry.update(site_summary(report))
    trained = window.report if window is not None else None
    entry.update(train_window_summary(trained, first_site_mag=True))
    # per site, in forward order: what the figures draw by epoch (first, middle, last site)
    entry["site_min_abs_deriv"] = [float(r["min_abs_deriv"]) for r in report.rows]
    history.append(entry)
    progress.tick(variant.name, "scan", epoch)
    return report


def _initialised(model: nn.Module, init: str, seed: int) -> nn.Module:
    """``model`` itself (``init="model"``) or a copy re-initialised with the seeded RNG."""
    if init == "model":
        return model
    copy = copy_model(model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        initialise(copy, init)
    return copy


def _activations(report: Report) -> str:
    """The baseline's activation kinds in forward order, e.g. ``relu`` or ``gelu+tanh``."""
    kinds = dict.fromkeys(str(row["activation"]) for row in report.rows)
    return "+".join(kinds) or "none"


def _check(
    epochs: int,
    steps: int | None,
    lr: float,
    batch_size: int | None,
    scan_batches: int | None,
    optimizer: str,
) -> None:
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise NeurodiagError(f"epochs must be an integer >= 0, got {epochs!r}")
    for name, value in (
        ("steps", steps),
        ("batch_size", batch_size),
        ("scan_batches", scan_batches),
    ):
        if value is not None and (
            isinstance(value, bool) or not isinstance(value, int) or value < 1
        ):
            raise NeurodiagError(f"{name} must be an integer >= 1, got {value!r}")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise NeurodiagError(f"lr must be a number > 0, got {lr!r}")
    optimizer_class(optimizer)  # fail before any work


def _check_training(
    optimizer: str, weight_decay: float, momentum: float, schedule: str, init: str
) -> None:
    if not (isinstance(weight_decay, (int, float)) and math.isfinite(weight_decay)) or (
        weight_decay < 0
    ):
        raise NeurodiagError(f"weight_decay must be a number >= 0, got {weight_decay!r}")
    if not (isinstance(momentum, (int, float)) and 0 <= momentum < 1):
        raise NeurodiagError(f"momentum must be a number in [0, 1), got {momentum!r}")
    if momentum and str(optimizer).lower() != "sgd":
        raise NeurodiagError(f"momentum is an SGD setting; {optimizer} keeps its own moments")
    if schedule not in SCHEDULES:
        raise NeurodiagError(f"unknown schedule {schedule!r}; valid: {', '.join(SCHEDULES)}")
    if init not in INITS:
        raise NeurodiagError(f"unknown init {init!r}; valid: {', '.join(INITS)}")
