"""``neurodiag.scan``: forward + backward over a data source, statistics at every activation site.

The scan never changes the model (see ``model_state.preserved``); gradients are taken with
``torch.autograd.grad`` so no ``.grad`` is written, and statistics are read back to the host once,
at the end.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import replace
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from neurodiag.activations.registry import REGISTRY, ActivationRegistry
from neurodiag.batch import SplitBatch, batch_size_of, map_tensors, split_batch
from neurodiag.config import DEFAULT_EPS, DEFAULT_TAU, ScanConfig
from neurodiag.errors import NeurodiagError, Terminated
from neurodiag.grad_targets import choose_targets
from neurodiag.loading.declared import forward_parameters, main_input, unknown_keywords
from neurodiag.loading.synthetic import infer_recipe
from neurodiag.loss import LossResolver, UserLoss, first_line
from neurodiag.model_state import model_device, model_dtype, preserved
from neurodiag.report.build import build_report
from neurodiag.report.model import Report, ScanHeader
from neurodiag.sites.capture import SiteRecorder
from neurodiag.stats.bundle import SiteStats, StatisticsLayout
from neurodiag.stats.reductions import release_scratch
from neurodiag.stats.sync import all_reduce_sites


class ScanInterrupted(Exception):
    """Ctrl-C during a scan; ``report`` holds what was measured so far (marked partial)."""

    def __init__(self, report: Report, terminated: bool = False) -> None:
        super().__init__("scan terminated" if terminated else "scan interrupted")
        self.report = report
        #: SIGTERM (``neurodiag.errors.Terminated``) rather than Ctrl-C
        self.terminated = terminated


def unwrap_compiled(model: nn.Module) -> tuple[nn.Module, bool]:
    """A ``torch.compile``d model is scanned through the eager module it wraps.

    Hooks and a torch function mode do not survive Dynamo tracing reliably, and the compiled
    module shares its parameters with the original, so the numbers are those of the same model.
    """
    original = getattr(model, "_orig_mod", None)
    if isinstance(original, nn.Module) and type(model).__name__ == "OptimizedModule":
        return original, True
    return model, False


def sink_factory(config: ScanConfig) -> Callable[[int, torch.device, torch.dtype], SiteStats]:
    """What a scan or Monitor hands ``SiteRecorder``: every registered statistic per site."""

    layout = StatisticsLayout(config)  # shared by every site (a Monitor's windows too)

    def make(neurons: int, device: torch.device, dtype: torch.dtype) -> SiteStats:
        return SiteStats(neurons, device, dtype, config, layout=layout)

    return make


def recorder_for(
    model: nn.Module, config: ScanConfig, registry: ActivationRegistry = REGISTRY
) -> SiteRecorder:
    """The site recorder of a scan or Monitor under ``config``."""
    return SiteRecorder(
        model,
        sink_factory(config),
        registry=registry,
        include=config.include,
        exclude=config.exclude,
        feature_dims=config.feature_dims,
        on_close=release_scratch,
    )


def scan(
    model: nn.Module,
    data: Iterable[Any],
    config: ScanConfig | None = None,
    *,
    loss_fn: UserLoss | None = None,
    registry: ActivationRegistry = REGISTRY,
    on_batch: Callable[[int], None] | None = None,
    model_name: str | None = None,
    data_name: str | None = None,
    **options: Any,
) -> Report:
    """Scan ``model`` on ``data`` (a DataLoader or any iterable of ``x``/``(x, y)``/dict batches).

    ``config`` (a ``ScanConfig``) or its fields as keywords (``eps``, ``tau``, ``dead_window``,
    ``gradients``, ``mode``, ``include``, ``exclude``, ``feature_dims``, ``max_batches``,
    ``seed``, ``timeout_s``) say how to measure; their defaults live in ``ScanConfig`` only.
    Statistics are accumulated per neuron over all finite positions of all batches; see
    docs/metrics.md. ``mode`` picks the model's train/eval behaviour during the scan (eval by
    default); the model's own mode is restored afterwards. ``gradients=False`` runs the forward
    alone (no autograd graph, no loss, no backward): the forward columns only, the gradient ones
    are NaN.
    """
    cfg = (config or ScanConfig()).with_options(**options)
    gradients, mode, seed = cfg.gradients, cfg.mode, cfg.seed
    max_batches, timeout_s = cfg.max_batches, cfg.timeout_s
    notes: list[str] = []
    model, compiled = unwrap_compiled(model)
    if compiled:
        notes.append("scanned the eager module behind torch.compile (same weights)")
    device = model_device(model)
    dtype = model_dtype(model)
    started = time.perf_counter()
    recorder = recorder_for(model, cfg, registry)
    state = _Progress()
    state.notes.extend(notes)
    timed_out = False
    resolver = LossResolver(loss_fn, _generator(device, seed))
    interrupted = terminated = False
    rank, world = distributed_rank_world()
    rng_devices = [device.index or 0] if device.type == "cuda" else []
    with preserved(model), torch.random.fork_rng(devices=rng_devices):
        torch.manual_seed(seed)
        model.train(mode == "train")
        params = _GradParams(model)
        recorder.watched = []
        with recorder:
            try:
                for index, batch in enumerate(_batches(data)):
                    if max_batches is not None and index >= max_batches:
                        break
                    if index % world != rank:  # rank r takes batches r, r + W, r + 2W, ...
                        continue
                    if gradients:
                        _step(model, batch, device, dtype, resolver, state, params, recorder)
                    else:
                        _forward_step(model, batch, device, dtype, state)
                    if state.batches == 1:
                        _check_includes(recorder)
                    if on_batch is not None:
                        on_batch(index + 1)
                    if timeout_s is not None and time.perf_counter() - started >= timeout_s:
                        timed_out = True
                        state.notes.append(f"stopped by the timeout of {timeout_s:g} s")
                        break
            except KeyboardInterrupt as stop:
                interrupted = True
                terminated = isinstance(stop, Terminated)
    sites = recorder.sites
    state.finish()
    if world > 1:
        try:
            sites = all_reduce_sites(sites, cfg, device)
            state.reduce(device)
        except RuntimeError as exc:  # gloo/nccl: a peer rank failed and left the group
            raise NeurodiagError(
                f"merging the statistics of the {world} ranks failed ({first_line(exc)}); "
                "another rank stopped: see its error"
            ) from exc
    if state.batches == 0 and not interrupted:
        raise NeurodiagError("the data yielded no batches; check --data (is the dataset empty?)")
    if state.samples == 0 and not interrupted:
        raise NeurodiagError(
            f"the data gave {state.batches} batch(es) but no samples (every batch has 0 rows); "
            "check --data"
        )
    if state.nonfinite_losses:
        state.notes.append(nonfinite_loss_note(state.nonfinite_losses, state.batches))
    header = ScanHeader(
        model=model_name or type(model).__name__,
        data=data_name or type(data).__name__,
        loss=resolver.name if gradients else "none (forward only: no backward)",
        samples=state.samples,
        batches=state.batches,
        device=str(device),
        dtype=str(dtype).removeprefix("torch."),
        seed=seed,
        wall_time_s=time.perf_counter() - started,
        eps=cfg.eps,
        tau=cfg.tau,
        dead_window=cfg.dead_window,
        mode=mode,
        partial=interrupted or timed_out,
        flag_gates=cfg.flag_gates,
        notes=tuple(state.notes) + (() if recorder.sites else ("no activation sites found",)),
    )
    report = build_report(sites, header)
    hint = vanishing_gradient_hint(report, _has_batchnorm(model))
    if hint:
        report.header = replace(report.header, notes=(*report.header.notes, hint))
    if interrupted:
        raise ScanInterrupted(report, terminated)
    return report


#: Below this MAG at every site, eval mode is the usual suspect (issue 12): an untrained
#: BatchNorm net's running statistics (mean 0, variance 1) scale gradients down by orders;
#: without BatchNorm, a zero-initialised head (random-init ViT, MLP-Mixer) does.
VANISHING_MAG = 1e-10


def _has_batchnorm(model: nn.Module) -> bool:
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules())


def vanishing_gradient_hint(report: Report, has_batchnorm: bool = True) -> str | None:
    """A note when every site's MAG is below ``VANISHING_MAG`` in an eval-mode scan; the cause it
    names depends on whether the model has BatchNorm (issue 26: ViT and Mixer have none, their
    zero-initialised heads are the cause)."""
    if report.header.mode != "eval" or not report.rows:
        return None
    mags = [float(row["mag"]) for row in report.rows]
    if not all(math.isfinite(m) and m < VANISHING_MAG for m in mags):
        return None
    cause = (
        "possibly its BatchNorm layers' running statistics, if never trained, shrink the "
        "gradients: try --mode train (mode='train')"
        if has_batchnorm
        else "the model has no BatchNorm; possibly a zero-initialised head or output layer "
        "(random-init ViT, MLP-Mixer) passes no gradient back: load trained weights"
    )
    return f"every site's MAG is below {VANISHING_MAG:g} in eval mode; {cause}"


#: Starts the report note of a scan whose loss was NaN or infinite (``check`` refuses it).
NONFINITE_LOSS = "the loss was NaN or infinite"


def nonfinite_loss_note(bad: int, batches: int) -> str:
    return (
        f"{NONFINITE_LOSS} on {bad} of {batches} batch(es), so the gradient columns mean "
        "nothing (every target ignored, e.g. all labels -100? or a diverged model); check the "
        "targets and the loss"
    )


class _Progress:
    def __init__(self) -> None:
        self.batches = 0
        self.samples = 0
        self.nonfinite_losses = 0
        self._bad_loss: Tensor | None = None  # on the device: no sync per batch
        self.notes: list[str] = []

    def count(self, raw_batch: Any) -> None:
        self.batches += 1
        self.samples += batch_size_of(raw_batch)

    def check_loss(self, loss: Tensor) -> None:
        bad = (~torch.isfinite(loss.detach())).to(torch.int64)
        self._bad_loss = bad if self._bad_loss is None else self._bad_loss + bad

    def finish(self) -> None:
        """Read the non-finite loss count back (one sync, at the end)."""
        if self._bad_loss is not None:
            self.nonfinite_losses = int(self._bad_loss)
            self._bad_loss = None

    def reduce(self, device: torch.device) -> None:
        """Sum the counts over ranks (notes and the loss name are rank 0's)."""
        counts = torch.tensor(
            [self.batches, self.samples, self.nonfinite_losses], device=device, dtype=torch.int64
        )
        dist.all_reduce(counts)
        self.batches, self.samples, self.nonfinite_losses = (int(v) for v in counts.tolist())


def distributed_rank_world() -> tuple[int, int]:
    """(rank, world size) of the default process group, (0, 1) without one."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _generator(device: torch.device, seed: int) -> torch.Generator:
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    return generator


class _GradParams:
    """The parameters a batch's backward may ask autograd for, listed once per scan."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.trainable: list[Tensor] = [p for p in model.parameters() if p.requires_grad]
        self._unfrozen: list[Tensor] | None = None

    def for_batch(self, has_leaves: bool) -> list[Tensor]:
        if self.trainable or has_leaves or self._unfrozen is not None:
            return self._unfrozen or self.trainable
        # a frozen model fed token ids: grads for the scan only (``preserved`` restores the flags)
        self._unfrozen = [
            p.requires_grad_(True) for p in self.model.parameters() if p.is_floating_point()
        ]
        return self._unfrozen


def _step(
    model: nn.Module,
    raw_batch: Any,
    device: torch.device,
    dtype: torch.dtype,
    resolver: LossResolver,
    state: _Progress,
    grad_params: _GradParams,
    recorder: SiteRecorder,
) -> None:
    """One forward + backward; the hooks of the recorder do the measuring.

    The backward asks only for what the sites need (``grad_targets``): usually the input's
    gradient alone, so no weight gradient is computed.
    """
    leaves: list[Tensor] = []
    fed_inputs: list[Tensor] = []

    def to_model(t: Tensor) -> Tensor:
        t = t.to(device, non_blocking=True)
        if t.is_floating_point():
            leaf = t.to(dtype).detach().requires_grad_(True)
            leaves.append(leaf)
            fed = leaf.clone()  # the model may write into its input; keep the batch intact
            fed_inputs.append(fed)
            return fed
        return t

    split = _split(raw_batch)
    fed = SplitBatch(
        map_tensors(split.args, to_model),
        map_tensors(split.kwargs, to_model),
        split.targets.to(device, non_blocking=True) if split.targets is not None else None,
    )
    if isinstance(fed.kwargs.get("labels"), Tensor):
        fed.targets = fed.kwargs["labels"]
    params = grad_params.for_batch(bool(leaves))
    watched = recorder.watched
    assert watched is not None
    watched.clear()
    output = _call(model, fed, split)
    loss = resolver(output, fed, _raw_on_device(raw_batch, device))
    state.check_loss(loss)
    if loss.requires_grad:
        targets = choose_targets(leaves, fed_inputs, params, watched)
        watched.clear()
        try:
            torch.autograd.grad(loss, targets, allow_unused=True)
        except NeurodiagError:
            raise
        except Exception as exc:  # a custom autograd Function's backward, an OOM...
            raise NeurodiagError(
                f"the backward pass raised {type(exc).__name__}: {first_line(exc)}; "
                f"{_backward_advice(model, exc)}"
            ) from exc
    elif "the loss does not depend on anything that requires grad" not in state.notes:
        state.notes.append("the loss does not depend on anything that requires grad")
    state.count(raw_batch)


def _backward_advice(model: nn.Module, exc: BaseException) -> str:
    """What to try after a failed backward. Some models update a state in place in eval mode
    only (RWKV's recurrent state), which breaks the backward: train mode avoids that path."""
    advice = "check the model's custom autograd functions, or scan with --forward-only"
    if not model.training and "inplace operation" in str(exc):
        return (
            "in eval mode the model modified a tensor autograd still needed (an RWKV-style "
            f"recurrent state): try --mode train (mode='train'); else {advice}"
        )
    return advice


def _forward_step(
    model: nn.Module, raw_batch: Any, device: torch.device, dtype: torch.dtype, state: _Progress
) -> None:
    """``gradients=False``: the forward alone, without an autograd graph (no loss, no backward).

    Dead %, τ-dormant %, min |σ'| and the forward's non-finite counts need nothing else; the
    gradient columns stay empty.
    """

    def to_model(t: Tensor) -> Tensor:
        t = t.to(device, non_blocking=True)
        # a copy: the model may write into its input; keep the batch intact
        return t.to(dtype, copy=True) if t.is_floating_point() else t

    split = _split(raw_batch)
    fed = SplitBatch(map_tensors(split.args, to_model), map_tensors(split.kwargs, to_model), None)
    with torch.no_grad():
        _call(model, fed, split)
    state.count(raw_batch)


def _batches(data: Iterable[Any]) -> Iterator[Any]:
    """``data``'s batches; an exception while producing one is a one-line error naming it."""
    iterator = iter(data)
    while True:
        try:
            batch = next(iterator)
        except StopIteration:
            return
        except NeurodiagError:
            raise
        except Exception as exc:  # a loader's bug, an allocation too large for memory...
            raise NeurodiagError(
                f"the data source raised {type(exc).__name__} while producing a batch: "
                f"{first_line(exc)}; check --data (or --input-shape/--batch-size)"
            ) from exc
        yield batch


def _split(raw_batch: Any) -> SplitBatch:
    """The batch as (args, kwargs, targets), or a one-line error naming the data source."""
    try:
        return split_batch(raw_batch)
    except (TypeError, ValueError) as exc:
        raise NeurodiagError(f"bad batch from the data source: {exc}") from exc


def _call(model: nn.Module, fed: SplitBatch, split: SplitBatch) -> Any:
    """The model's forward on ``fed``; its exceptions become one-line errors (see below)."""
    try:
        return fed.call(model)
    except NeurodiagError:
        raise
    except Exception as exc:
        raise NeurodiagError(_forward_error(model, split, exc)) from exc


def _raw_on_device(batch: Any, device: torch.device) -> Any:
    return map_tensors(batch, lambda t: t.to(device, non_blocking=True))


def _forward_error(model: nn.Module, split: SplitBatch, exc: Exception) -> str:
    named = [(None, a) for a in split.args] + list(split.kwargs.items())
    shapes = [
        f"{key + ' ' if key else ''}{tuple(a.shape)} {str(a.dtype).removeprefix('torch.')}"
        for key, a in named
        if isinstance(a, Tensor)
    ]
    unknown = unknown_keywords(model, list(split.kwargs))
    if unknown:
        takes = ", ".join(forward_parameters(model)) or "no parameters"
        expected: str | None = (
            f"the forward has no parameter {', '.join(unknown)} (it takes {takes})"
        )
    else:
        expected = expected_input(model)
    hint = f"; {expected}" if expected else ""
    message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    return (
        f"the model raised {type(exc).__name__} on an input of shape {', '.join(shapes) or '?'}: "
        f"{message}{hint}; check --data/--input-shape"
    )


_CONV_INPUTS = {1: ("L", "signals"), 2: ("H, W", "images"), 3: ("D, H, W", "volumes")}


def expected_input(model: nn.Module) -> str | None:
    """What the model expects as input, in words (for error messages).

    A Hugging Face model is described by its main input as synthetic data would make it (its
    first layer, e.g. Wav2Vec2's Conv1d, does not see the tensor the forward takes); any other
    model by its first Linear, Conv or Embedding layer.
    """
    if main_input(model) is not None:
        try:
            recipe = infer_recipe(model)
        except NeurodiagError:
            recipe = None
        if recipe is not None and recipe.named:
            return f"the model's forward takes e.g. {recipe.describe()}"
    for module in model.modules():
        if isinstance(module, nn.Linear):
            return f"the model's first layer expects (batch, {module.in_features}) float features"
        if isinstance(module, nn.modules.conv._ConvNd):
            rank = len(module.kernel_size)
            spatial, what = _CONV_INPUTS.get(rank, (", ".join(["L"] * rank), "tensors"))
            return (
                f"the model's first layer expects (batch, {module.in_channels}, {spatial}) "
                f"float {what}"
            )
        if isinstance(module, nn.Embedding):
            return (
                "the model's first layer expects (batch, seq) integer ids below "
                f"{module.num_embeddings}"
            )
    return None


def _check_includes(recorder: SiteRecorder) -> None:
    unmatched = recorder.unmatched_includes()
    if unmatched:
        # every site the model has, measured or left out by the globs
        names = [name for name, _ in recorder.ordered_sites()]
        names += sorted({key.candidate_names()[0] for key in recorder.skipped} - set(names))
        names = names or ["(none found)"]
        raise NeurodiagError(
            f"--include {', '.join(repr(p) for p in unmatched)} matched no site; "
            f"sites: {', '.join(names[:12])}{' ...' if len(names) > 12 else ''}"
        )


__all__ = ["DEFAULT_EPS", "DEFAULT_TAU", "ScanConfig", "ScanInterrupted", "scan"]
