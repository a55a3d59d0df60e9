"""One activation site: identity, naming, and the sink its hooks feed.

The sites layer knows nothing of statistics: a site's ``stats`` is anything with the
``SiteSink`` methods (``neurodiag.stats.SiteStats`` in a scan, a moments recorder when
``swap_activations`` calibrates), made by the factory given to ``SiteRecorder``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, fields
from typing import Protocol

import torch
from torch import Tensor

ROOT_NAME = "<root>"

DerivativeFn = Callable[[Tensor | None, Tensor], Tensor]
NodePreHook = Callable[[Sequence[Tensor | None]], None]
#: A sink's hot path for one kind of call: fold(x) measures it, False: it did not (use the
#: sink's ``observe_*`` method).
Fold = Callable[[Tensor], bool]


class SiteSink(Protocol):
    """What a site's hooks feed: one forward call, one gradient."""

    @property
    def wants_grad(self) -> bool: ...

    def observe_forward(
        self,
        z: Tensor | None,
        a: Tensor,
        derivative: DerivativeFn,
        dims: tuple[int, ...],
        step: bool = False,
    ) -> None: ...

    def observe_grad(self, grad: Tensor, dims: tuple[int, ...]) -> None: ...


def step_folder(
    sink: SiteSink, shape: torch.Size, dims: tuple[int, ...], from_z: bool
) -> Fold | None:
    """A sink's optional hot path for a step site's calls (``SiteStats.step_folder``): fold(x),
    x the call's z when ``from_z``, else its a; None when the sink offers none."""
    make = getattr(sink, "step_folder", None)
    return None if make is None else make(shape, dims, from_z)


def grad_folder(sink: SiteSink, shape: torch.Size, dims: tuple[int, ...]) -> Fold | None:
    """A sink's optional hot path for gradients of ``shape`` (``SiteStats.grad_folder``)."""
    make = getattr(sink, "grad_folder", None)
    return None if make is None else make(shape, dims)


#: Makes the sink of a new site: (neurons, device, activation dtype).
SinkFactory = Callable[[int, torch.device, torch.dtype], SiteSink]


def reduction_dims(ndim: int, feature_dim: int) -> tuple[int, ...]:
    """All dims but the neuron dim: the "positions" of each neuron."""
    if ndim == 0:
        return ()
    fd = feature_dim % ndim
    return tuple(i for i in range(ndim) if i != fd)


@dataclass(frozen=True)
class SiteKey:
    """Stable identity across batches and ranks: qualified name, op (functional) and call index."""

    module: str
    op: str | None
    index: int

    def candidate_names(self) -> tuple[str, ...]:
        """Names an --include/--exclude glob may match before the final name is known."""
        if self.op is None:
            base = self.module or ROOT_NAME
            return (base, f"{base}#{self.index}")
        return (f"{self.module or ROOT_NAME}:{self.op}#{self.index}",)


#: ``Site.role`` values: an activation proper, or a gate whose output scales another tensor.
ROLES = ("activation", "gate")


@dataclass
class Site:
    """One activation site.

    ``activation`` is the canonical function name (``gelu``), ``impl`` what computed it (the module
    class, or ``F.gelu`` for a call); ``axis_source`` says where ``feature_dim`` came from: the
    producing op (``linear``, ``conv2d``...; ``neurodiag.sites.axes``), ``override`` or ``rule``
    (the shape rule of ``neurodiag.sites.feature_dim``); ``axis_note`` says why it may be wrong.
    """

    key: SiteKey
    activation: str
    kind: str  # "module" | "functional"
    feature_dim: int
    neurons: int
    delta_bar: float | None
    stats: SiteSink
    impl: str = ""
    role: str = "activation"
    axis_source: str = "rule"
    axis_note: str | None = None
    _dims: dict[int, tuple[int, ...]] = field(default_factory=dict, repr=False, compare=False)
    _hooks: dict[tuple[tuple[int, ...], int], NodePreHook] = field(
        default_factory=dict, repr=False, compare=False
    )

    def dims(self, ndim: int) -> tuple[int, ...]:
        """Reduction dims for a call with ``ndim`` dims (cached: the hot path asks every call)."""
        cached = self._dims.get(ndim)
        if cached is None:
            cached = self._dims[ndim] = reduction_dims(ndim, self.feature_dim)
        return cached

    def __deepcopy__(self, memo: dict[int, object]) -> Site:
        """A copy with no gradient hooks yet: each hook holds the sink it was made for, so a
        copy's hooks are made again for its own sink (see ``watch_grad``)."""
        copied = copy.copy(self)
        memo[id(self)] = copied
        for f in fields(self):
            value = {} if f.name == "_hooks" else copy.deepcopy(getattr(self, f.name), memo)
            object.__setattr__(copied, f.name, value)
        return copied

    def replace_stats(self, stats: SiteSink) -> None:
        """Feed a new sink from now on (a new Monitor window); hooks are rebuilt for it."""
        self.stats = stats
        self._hooks = {}

    def watch_grad(self, a: Tensor, dims: tuple[int, ...]) -> None:
        """Feed ∂L/∂a of this call to the current sink during backward.

        A pre-hook on a's autograd node when it has one (what ``Tensor.register_hook`` does under
        the hood, minus its Python wrapper), else a tensor hook.
        """
        node = a.grad_fn
        if node is None:
            sink = self.stats
            a.register_hook(lambda grad: sink.observe_grad(grad.detach(), dims))  # type: ignore[no-untyped-call]
            return
        key = (dims, a.output_nr)
        hook = self._hooks.get(key)
        if hook is None:
            fold = grad_folder(self.stats, a.shape, dims)
            hook = self._hooks[key] = _node_hook(self.stats, dims, a.output_nr, fold)
        node.register_prehook(hook)


def _node_hook(
    sink: SiteSink, dims: tuple[int, ...], output_nr: int, fold: Fold | None
) -> NodePreHook:
    """A pre-hook of a's autograd node: takes ∂L/∂a at a's output index (skips undefined ones);
    ``fold``: the sink's hot path for the gradients of a's first shape (it reads only data)."""

    def hook(grads: Sequence[Tensor | None]) -> None:
        grad = grads[output_nr]
        if grad is not None and not (fold is not None and fold(grad)):
            sink.observe_grad(grad.detach() if grad.requires_grad else grad, dims)

    return hook


def display_names(keys: list[SiteKey]) -> dict[SiteKey, str]:
    """Module sites called once keep their plain name; reused modules get ``#i`` per call."""
    calls: dict[str, int] = {}
    for key in keys:
        if key.op is None:
            calls[key.module] = max(calls.get(key.module, 0), key.index + 1)
    names: dict[SiteKey, str] = {}
    for key in keys:
        if key.op is None:
            base = key.module or ROOT_NAME
            names[key] = base if calls[key.module] == 1 else f"{base}#{key.index}"
        else:
            names[key] = key.candidate_names()[0]
    return names
