"""``swap_activations``: a deep copy of a model with every activation site replaced by a spec.

The user's model is never touched: everything happens on ``copy.deepcopy(model)``.

- Module sites (what a scan reports as kind "module") are replaced by module surgery. With an
  ``example_batch``, one calibration forward through neurodiag's ``SiteRecorder`` finds the sites
  exactly as a scan does (elementwise check, feature dim, width); per-neuron activations
  (Bernstein) get one coefficient set per neuron of the site. A module called several times with
  different widths gets shared coefficients. Without an example batch, modules are recognised by
  the registry or the name rule alone and Bernstein coefficients are shared (a note says so).
- Functional sites (``F.relu(x)`` inside a forward) cannot be replaced by surgery. They are
  replaced through a torch function mode that a pre/post hook pair on the copy's root module
  enters and leaves around every forward; the new modules live under ``neurodiag_swapped`` so
  they train and save with the model. Calls are traced by ``neurodiag.sites.tracer``, the tracer
  a scan records with, so both name a site alike (wrapper prefixes such as DDP's ``module.``
  included). Limits: a site is identified by the innermost module whose forward made the call,
  the op and its call index, so control flow must call the same ops in the same order every
  forward; calling ``model.forward(x)`` directly (bypassing hooks), TorchScript
  and torch.compile skip the replacement; in-place calls (``x.relu_()``,
  ``F.relu(x, inplace=True)``) are left alone and reported, because replacing them out of place
  would silently break code that relies on the side effect. Functional sites need the example
  batch to be found at all. A scan of the swapped model names a replaced functional site
  ``neurodiag_swapped.<old site name>`` (a module site); functional sites left in the same
  forward are renumbered by the scan, since the replaced calls no longer happen.
- ``init="fit"`` (default): a new module with ``init_from`` (Bernstein) is fitted to the
  activation it replaces on its [l, u], so a trained model keeps (approximately) its function.
  ``init="critical"`` (what ``compare`` uses, to train from the model's weights): a new module
  with ``init_critical`` (Bernstein) starts in the shape that passes gradients through any
  number of He-initialised layers, whatever their scale, instead. The ReLU fit does not: its
  smoothed kink gives 2·E[σ'(z)²] ≈ 0.57 instead of ReLU's 1 at z ~ N(0, 1), so a plain
  50-layer ReLU MLP swapped to the fit loses ~100x of its first-layer gradient at once and,
  after a few optimiser steps, maps every input to the same output (see
  ``Bernstein.init_critical``).
"""

from __future__ import annotations

import copy
import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from fnmatch import fnmatchcase
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from neurodiag.activations.registry import REGISTRY, ActivationKind, FunctionBinding
from neurodiag.activations.residual import add_residuals
from neurodiag.activations.specs import AUTO_RANGE_STDS, ActivationSpec, parse_spec
from neurodiag.batch import map_tensors, split_batch
from neurodiag.errors import NeurodiagError
from neurodiag.model_state import model_device, model_dtype, preserved
from neurodiag.sites.capture import SiteRecorder
from neurodiag.sites.site import ROOT_NAME, SiteKey
from neurodiag.sites.tracer import FunctionalTracer, is_activation, module_names

SWAP_ATTRIBUTE = "neurodiag_swapped"
INITS = ("fit", "critical")
_INIT_ERRORS = (RuntimeError, ValueError, TypeError)


@dataclass(frozen=True)
class SwappedSite:
    """One replaced site: its scan name, kind, the old activation and the new module's width."""

    site: str
    kind: str
    old: str
    num_features: int | None


@dataclass
class SwapResult:
    """The swapped copy plus what was (not) swapped and why, for reports and warnings."""

    model: nn.Module
    spec: ActivationSpec
    swapped: list[SwappedSite] = field(default_factory=list)
    not_swapped: list[tuple[str, str]] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    init: str = "fit"


def swap_activations(
    model: nn.Module,
    spec: str | ActivationSpec,
    sites: Sequence[str] | None = None,
    *,
    example_batch: Any = None,
    init: str = "fit",
) -> nn.Module:
    """A deep copy of ``model`` with its activation sites replaced by ``spec``.

    ``sites`` restricts the swap to sites whose scan name matches one of the globs.
    ``example_batch`` (one batch as a scan sees it: ``x``, ``(x, y)`` or a dict) lets the swap
    find functional sites and per-site widths; notes about sites left alone become warnings.
    ``init``: ``"fit"`` keeps a trained model's function (Bernstein fitted to the old
    activation), ``"critical"`` is for training from the model's weights (deep nets included);
    see the module docstring.
    """
    result = swap_with_report(model, spec, sites, example_batch=example_batch, init=init)
    for site, reason in result.not_swapped:
        warnings.warn(f"site {site} not swapped: {reason}", stacklevel=2)
    for note in result.notes:
        warnings.warn(note, stacklevel=2)
    return result.model


def swap_with_report(
    model: nn.Module,
    spec: str | ActivationSpec,
    sites: Sequence[str] | None = None,
    *,
    example_batch: Any = None,
    init: str = "fit",
) -> SwapResult:
    """``swap_activations`` returning a ``SwapResult`` instead of warning."""
    parsed = parse_spec(spec) if isinstance(spec, str) else spec
    if parsed.init is not None:
        plain = parsed.name.replace(f":init={parsed.init}", "")
        raise NeurodiagError(
            f"activation {parsed.name!r}: init={parsed.init} re-initialises the weights, which "
            f"only compare does (per variant, seeded); a swap keeps them: use {plain!r}"
        )
    if init not in INITS:
        raise NeurodiagError(f"init must be one of {', '.join(INITS)}, got {init!r}")
    # The copy is of the model DataParallel/DDP wrap (their replicas, process group and hooks are
    # not the model's): it runs on one device, as a scan runs it. Site names are the same either
    # way (``strip_wrapper``).
    while isinstance(model, (nn.DataParallel, nn.parallel.DistributedDataParallel)):
        model = model.module
    try:
        clone = copy.deepcopy(model)
    except Exception as exc:
        raise NeurodiagError(f"cannot deep-copy the model to swap activations: {exc}") from exc
    result = SwapResult(clone, parsed, init=init)
    if example_batch is None:
        _swap_modules_blind(result, tuple(sites or ()))
    else:
        _swap_calibrated(result, tuple(sites or ()), example_batch)
    if parsed.residual:
        wrapped = add_residuals(result.model)
        result.notes.append(
            f"{wrapped} shape-preserving layer → activation block(s) of "
            "nn.Sequential containers got a skip connection"
        )
    return result


# -- without an example batch ---------------------------------------------------------------------
def _swap_modules_blind(result: SwapResult, globs: tuple[str, ...]) -> None:
    spec = result.spec
    if spec.auto_range:
        raise NeurodiagError(
            f"activation {spec.name!r} uses range=auto, which needs an example batch to measure "
            "each site's pre-activations"
        )
    found = [
        (name or ROOT_NAME, module)
        for module, name in module_names(result.model).items()
        if is_activation(module)
    ]
    chosen = [(n, m) for n, m in found if _matches((n,), globs)]
    _check_globs(globs, [n for n, _ in found])
    for name, old in chosen:
        new = _replacement(spec, old, None, 1, None, result)
        _replace_module(result, old, new)
        result.swapped.append(SwappedSite(name, "module", _label(old), None))
    result.notes.append(
        "no example batch: modules were swapped by type/name without a forward pass, and "
        "functional activation calls (F.relu, ...) were not looked for"
    )
    if spec.per_neuron and chosen:
        result.notes.append(
            f"no example batch: {spec.name} uses one coefficient set shared by all neurons of a "
            "site (pass example_batch for per-neuron coefficients)"
        )


# -- with an example batch ------------------------------------------------------------------------
@dataclass
class _SiteInfo:
    key: SiteKey
    name: str
    kind: str
    activation: str
    feature_dim: int
    neurons: int
    bounds: tuple[float, float] | None


def _swap_calibrated(result: SwapResult, globs: tuple[str, ...], batch: Any) -> None:
    model = result.model
    functional = _FunctionalSwap()
    infos = _calibrate(model, functional, batch, result.spec.auto_range)
    _check_globs(globs, [info.name for info in infos])
    chosen = [i for i in infos if _matches((i.name, *i.key.candidate_names()), globs)]
    by_module: dict[str, list[_SiteInfo]] = {}
    for info in chosen:
        if info.kind == "module":
            by_module.setdefault(info.key.module, []).append(info)
    # the sites' own names (a scan's): the last module of a name is the one wrappers wrap
    modules = {name: module for module, name in module_names(model).items()}
    for module_name, calls in by_module.items():
        old = modules[module_name]
        width, feature_dim = _width(calls, result)
        new = _replacement(result.spec, old, width, feature_dim, _union(calls), result)
        _replace_module(result, old, new)
        for info in calls:
            result.swapped.append(SwappedSite(info.name, "module", info.activation, width))
    for info in (i for i in chosen if i.kind == "functional"):
        call = functional.calls.get(info.key)
        if call is None or call.inplace:
            reason = "in-place functional call (x.relu_() style)" if call else "call not traced"
            result.not_swapped.append((info.name, reason))
            continue
        width = info.neurons if result.spec.per_neuron else None
        new = _replacement(result.spec, call, width, info.feature_dim, info.bounds, result)
        functional.add(info.key, info.name, new)
        result.swapped.append(SwappedSite(info.name, "functional", info.activation, width))
    if functional.targets:
        functional.install(result.model)
    if not infos:
        result.notes.append("no activation sites found; the copy is unchanged")


class _Moments:
    """A site sink that keeps the moments of the pre-activations z (``range=auto``)."""

    wants_grad = False

    def __init__(self) -> None:
        self.moments = [0.0, 0.0, 0.0]  # count, Σz, Σz²
        self.seen = False

    def observe_forward(
        self,
        z: Tensor | None,
        a: Tensor,
        derivative: Callable[[Tensor | None, Tensor], Tensor],
        dims: tuple[int, ...],
        step: bool = False,
    ) -> None:
        if z is not None:
            zd = z.detach().double()
            self.moments[0] += zd.numel()
            self.moments[1] += float(zd.sum())
            self.moments[2] += float((zd * zd).sum())
            self.seen = True

    def observe_grad(self, grad: Tensor, dims: tuple[int, ...]) -> None:
        """Calibration runs without gradients."""


def _calibrate(
    model: nn.Module, functional: _FunctionalSwap, batch: Any, auto_range: bool
) -> list[_SiteInfo]:
    """One eval-mode forward (no grad, model state and RNG restored) that finds every site."""
    inplace = [m for m in model.modules() if getattr(m, "inplace", False) is True]
    for module in inplace:  # so the recorder sees every pre-activation z (range=auto)
        module.inplace = False  # type: ignore[assignment]
    recorder = SiteRecorder(model, lambda neurons, device, dtype: _Moments())
    try:
        with (
            preserved(model),
            torch.random.fork_rng(devices=[]),
            torch.no_grad(),
            functional.recording(model),
            recorder,
        ):
            model.eval()
            _forward(model, batch)
    except NeurodiagError:
        raise
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise NeurodiagError(f"the example batch failed in the model's forward: {first}") from exc
    finally:
        for module in inplace:
            module.inplace = True  # type: ignore[assignment]
    infos = []
    for name, site in recorder.ordered_sites():
        sink = site.stats
        moments = sink.moments if isinstance(sink, _Moments) and sink.seen else None
        infos.append(
            _SiteInfo(
                site.key,
                name,
                site.kind,
                site.activation,
                site.feature_dim,
                site.neurons,
                _auto_bounds(moments, name) if auto_range and moments else None,
            )
        )
    return infos


def _forward(model: nn.Module, batch: Any) -> Any:
    device, dtype = _device_dtype(model)

    def to_model(t: Tensor) -> Tensor:
        t = t.to(device)
        return t.to(dtype) if t.is_floating_point() else t

    try:
        split = split_batch(batch)
    except (TypeError, ValueError) as exc:
        raise NeurodiagError(f"bad example batch: {exc}") from exc
    return model(*map_tensors(split.args, to_model), **map_tensors(split.kwargs, to_model))


def _device_dtype(model: nn.Module) -> tuple[torch.device, torch.dtype]:
    return model_device(model), model_dtype(model)


def _auto_bounds(moments: list[float], name: str) -> tuple[float, float]:
    """[mean − 3·std, mean + 3·std] of z at the site; ±1 around the mean if z is constant."""
    count, total, squares = moments
    mean = total / count
    std = max(squares / count - mean * mean, 0.0) ** 0.5
    if not (math.isfinite(mean) and math.isfinite(std)):
        raise NeurodiagError(f"site {name}: pre-activations are not finite; cannot use range=auto")
    half = AUTO_RANGE_STDS * std if std > 0 else 1.0
    return mean - half, mean + half


def _union(calls: list[_SiteInfo]) -> tuple[float, float] | None:
    bounds = [c.bounds for c in calls if c.bounds is not None]
    if not bounds:
        return None
    return min(b[0] for b in bounds), max(b[1] for b in bounds)


def _width(calls: list[_SiteInfo], result: SwapResult) -> tuple[int | None, int]:
    """Per-neuron width of a module site, or None when its calls disagree (shared coefficients)."""
    shapes = {(c.neurons, c.feature_dim) for c in calls}
    neurons, feature_dim = min(shapes)
    if not result.spec.per_neuron:
        return None, feature_dim
    if len(shapes) > 1:
        result.notes.append(
            f"{calls[0].key.module}: called with different widths {sorted(shapes)}; its "
            f"{result.spec.name} shares one coefficient set across neurons"
        )
        return None, feature_dim
    return neurons, feature_dim


# -- building and placing replacements ------------------------------------------------------------
def _replacement(
    spec: ActivationSpec,
    old: nn.Module | _Call,
    width: int | None,
    feature_dim: int,
    bounds: tuple[float, float] | None,
    result: SwapResult,
) -> nn.Module:
    """Build the new module on the model's device/dtype, initialised as ``result.init`` says:
    fitted to ``old`` if it can be, or in its critical shape."""
    device, dtype = _device_dtype(result.model)
    new = spec.build(width, feature_dim, bounds=bounds).to(device=device, dtype=dtype)
    init_critical = getattr(new, "init_critical", None)
    if result.init == "critical" and callable(init_critical):
        init_critical()
        return new
    init_from = getattr(new, "init_from", None)
    if callable(init_from):
        try:
            init_from(_as_function(old, device, dtype))
        except _INIT_ERRORS as exc:
            result.notes.append(f"{spec.name} replacing {_label(old)} kept its default init: {exc}")
    return new


def _as_function(
    old: nn.Module | _Call, device: torch.device, dtype: torch.dtype
) -> Callable[[Tensor], Tensor]:
    """The old activation as a deterministic function on a CPU float64 grid (eval behaviour)."""
    if isinstance(old, nn.Module):
        old.eval()  # the old module leaves the copy; eval makes N-ReLU/dropout-like ones fixed
    target: Callable[[Tensor], Tensor] = old.apply if isinstance(old, _Call) else old

    def fn(x: Tensor) -> Tensor:
        with torch.no_grad():
            # a copy: an in-place old activation must not overwrite the caller's grid
            return target(x.to(device=device, dtype=dtype, copy=True)).to("cpu", torch.float64)

    return fn


def _replace_module(result: SwapResult, old: nn.Module, new: nn.Module) -> None:
    """Point every reference to ``old`` inside the copy (aliases too) at ``new``."""
    if old is result.model:
        result.model = new
        return
    for parent in result.model.modules():
        for child_name, child in list(parent._modules.items()):
            if child is old:
                setattr(parent, child_name, new)


def _label(old: nn.Module | _Call) -> str:
    """The registry's kind name (``relu``), as a scan reports it; else the class/function name."""
    if isinstance(old, _Call):
        return str(getattr(old.func, "__name__", old.func))
    kind = REGISTRY.for_module(old)
    return kind.name if kind is not None else type(old).__name__


def _matches(names: tuple[str, ...], globs: tuple[str, ...]) -> bool:
    return not globs or any(fnmatchcase(n, g) for n in names for g in globs)


def _check_globs(globs: tuple[str, ...], names: list[str]) -> None:
    unmatched = [g for g in globs if not any(fnmatchcase(n, g) for n in names)]
    if unmatched:
        shown = ", ".join(names[:12]) or "(none)"
        raise NeurodiagError(
            f"sites {', '.join(repr(g) for g in unmatched)} matched no activation site; "
            f"sites: {shown}{' ...' if len(names) > 12 else ''}"
        )


# -- functional sites ------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Call:
    """A functional activation call seen in calibration: enough to re-run it for init_from."""

    func: Callable[..., Any]
    args: tuple[Any, ...]
    kwargs: Mapping[str, Any]
    inplace: bool

    def apply(self, x: Tensor) -> Tensor:
        out: Tensor = self.func(x, *self.args, **self.kwargs)
        return out


class _FunctionalSwap(nn.Module):
    """Holds the replacements of functional sites and the tracer that routes calls to them.

    Keys are the ones ``SiteRecorder`` gives (both trace with ``FunctionalTracer``). The tracer's
    hooks are bound to this module's tracer, so ``copy.deepcopy`` of the swapped model copies
    them consistently.
    """

    def __init__(self) -> None:
        super().__init__()
        self.targets: dict[tuple[str, str, int], str] = {}
        self.calls: dict[SiteKey, _Call] = {}
        self._recording = False
        self.tracer = FunctionalTracer(self.route)

    def add(self, key: SiteKey, name: str, module: nn.Module) -> None:
        child = name.replace(".", "/")
        self.add_module(child, module)
        self.targets[(key.module, key.op or "", key.index)] = child

    def install(self, model: nn.Module) -> None:
        """Attach for good: the copy routes its functional sites on every forward."""
        name, count = SWAP_ATTRIBUTE, 0
        while hasattr(model, name):  # swapping an already swapped model keeps both routers
            count += 1
            name = f"{SWAP_ATTRIBUTE}_{count}"
        model.add_module(name, self)
        self._attach(model)

    def recording(self, model: nn.Module) -> _Attached:
        """Attach only for a calibration forward that records the calls (for init_from)."""
        return _Attached(self, model)

    def _attach(self, model: nn.Module) -> list[RemovableHandle]:
        return self.tracer.attach(model, skip=set(self.modules()))

    def route(
        self,
        kind: ActivationKind,
        binding: FunctionBinding,
        func: Callable[..., Any],
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
    ) -> Any:
        key = self.tracer.next_key(kind.name)
        if self._recording:
            inplace = binding.inplace or binding.bind(args, kwargs).get("inplace") is True
            self.calls[key] = _Call(func, tuple(args[1:]), dict(kwargs), inplace)
            return func(*args, **kwargs)
        child = self.targets.get((key.module, key.op or "", key.index))
        if child is None:
            return func(*args, **kwargs)
        return self.get_submodule(child)(args[0])


class _Attached:
    """Context manager: hooks on, recording on; all removed on exit whatever happened."""

    def __init__(self, swap: _FunctionalSwap, model: nn.Module) -> None:
        self.swap = swap
        self.model = model
        self.handles: list[RemovableHandle] = []

    def __enter__(self) -> _Attached:
        self.swap._recording = True
        self.handles = self.swap._attach(self.model)
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self.handles:
            handle.remove()
        self.swap.tracer.clear()
        self.swap._recording = False


__all__ = ["SWAP_ATTRIBUTE", "SwapResult", "SwappedSite", "swap_activations", "swap_with_report"]
