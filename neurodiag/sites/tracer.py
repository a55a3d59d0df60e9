"""The one functional-site tracer, shared by the recorder (scan, Monitor) and ``swap_activations``.

A functional site (``F.gelu(x)`` inside a forward) is keyed by the innermost module whose forward
made the call, the op, and the call index of that op inside that module during one top-level
forward. ``FunctionalTracer`` keeps that module stack (hooks on every module), enters a torch
function mode around the model's forward, and hands each call of a registered activation function
to its owner, which names it with ``next_key``. Both users trace with this class and name modules
with ``strip_wrapper``, so the site a report names is the site a swap replaces, whatever wraps
the model (DDP, FSDP, torch.compile, activation checkpointing).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Collection, Mapping, Sequence
from typing import Any

from torch import Tensor, nn
from torch.overrides import TorchFunctionMode
from torch.utils.hooks import RemovableHandle

from neurodiag.activations.registry import (
    REGISTRY,
    ActivationKind,
    ActivationRegistry,
    FunctionBinding,
    looks_like_activation,
)
from neurodiag.sites.site import SiteKey

#: Module levels that wrappers insert inside the user's model: torch.compile (``_orig_mod``),
#: FSDP (``_fsdp_wrapped_module``), activation checkpointing (``_checkpoint_wrapped_module``).
WRAPPER_PARTS = frozenset({"_orig_mod", "_fsdp_wrapped_module", "_checkpoint_wrapped_module"})

#: (kind, binding, func, args, kwargs) -> the call's output: the owner runs the call.
OnCall = Callable[
    [ActivationKind, FunctionBinding, Callable[..., Any], Sequence[Any], Mapping[str, Any]], Any
]
#: (func, args, kwargs, output) of every torch call while the mode is on (feature-dim tracking).
Observe = Callable[[Any, Sequence[Any], Mapping[str, Any], Any], None]


def strip_wrapper(name: str) -> str:
    """The user's own name of a module, the one naming rule of sites.

    DDP/DataParallel wrap the model as ``module``; torch.compile, FSDP and activation
    checkpointing insert a level (``WRAPPER_PARTS``). Reports name what the user wrote:
    ``module.block._orig_mod.act`` and ``block._fsdp_wrapped_module.act`` are ``block.act``.
    """
    parts = [part for part in name.split(".") if part not in WRAPPER_PARTS]
    if parts[:1] == ["module"]:
        parts = parts[1:]
    return ".".join(parts)


def module_names(model: nn.Module) -> dict[nn.Module, str]:
    """Every module of ``model`` under its user's name (``strip_wrapper``)."""
    return {module: strip_wrapper(name) for name, module in model.named_modules()}


def is_activation(module: nn.Module, registry: ActivationRegistry = REGISTRY) -> bool:
    """An activation module: registered, or unknown but looking like one. Calls made inside its
    forward are its own business, never functional sites."""
    return registry.for_module(module) is not None or looks_like_activation(module)


class FunctionalTracer:
    """Module stack, per-(owner, op) call counters and the function mode of one model.

    ``attach`` hooks the model; from then on every top-level forward runs inside a fresh
    ``_TracerMode`` and each call of a registered activation function on a floating tensor,
    outside an activation module's own forward, goes to ``on_call``, which runs it (and calls
    ``next_key`` if it wants the site's name). ``observe`` sees every torch call; ``on_forward_end``
    gets the output of each top-level forward once the mode is left. ``begin_scope`` keeps the
    mode on across several forwards (a training step). After a forward that raised, the next
    top-level forward starts clean: it leaves any mode left over and counts calls afresh.

    Deep copies and pickles of a model that keeps a tracer attached (a swapped model) copy the
    tracer with it; the default registry is referred to, never copied.
    """

    def __init__(
        self,
        on_call: OnCall,
        *,
        registry: ActivationRegistry = REGISTRY,
        observe: Observe | None = None,
        on_forward_end: Callable[[Any], None] | None = None,
    ) -> None:
        self.on_call = on_call
        self.registry = registry
        self.observe = observe
        self.on_forward_end = on_forward_end
        self.stack: list[str] = []
        #: activation modules whose forward is running: while > 0, calls are not sites
        self.activation_depth = 0
        #: the module whose forward ended last (the layer feeding the next site)
        self.last_module: nn.Module | None = None
        self.scoped = False
        self._calls: dict[tuple[str, str], int] = {}
        self._modes: list[_TracerMode] = []
        self._functions: frozenset[Any] | None = None

    # -- naming ---------------------------------------------------------------------------------
    @property
    def depth(self) -> int:
        """Modules whose forward is running (0 between top-level forwards)."""
        return len(self.stack)

    @property
    def functions(self) -> frozenset[Any]:
        """The registered activation functions (looked up once: the mode checks every call)."""
        if self._functions is None:
            self._functions = self.registry.functions
        return self._functions

    @property
    def active(self) -> bool:
        """The function mode is on."""
        return bool(self._modes)

    def new_forward(self) -> None:
        """A new top-level forward: call indices start again."""
        self._calls.clear()
        self.activation_depth = 0

    def next_key(self, op: str) -> SiteKey:
        """The key of this call of ``op``, counting it."""
        owner = self.stack[-1] if self.stack else ""
        counter = (owner, op)
        index = self._calls.get(counter, 0)
        self._calls[counter] = index + 1
        return SiteKey(owner, op, index)

    # -- hooks ----------------------------------------------------------------------------------
    def attach(self, model: nn.Module, skip: Collection[nn.Module] = ()) -> list[RemovableHandle]:
        """Hook ``model`` (not the modules in ``skip``); the caller removes the handles."""
        handles = [
            model.register_forward_pre_hook(self._forward_start, prepend=True),
            model.register_forward_hook(self._forward_end, always_call=True),
        ]
        for module, name in module_names(model).items():
            if module in skip:
                continue
            activation = is_activation(module, self.registry)
            push = functools.partial(self._push, name, activation)
            pop = functools.partial(self._pop, activation)
            handles.append(module.register_forward_pre_hook(push))
            handles.append(module.register_forward_hook(pop, always_call=True))
        return handles

    def begin_scope(self) -> None:
        """Keep the mode on until ``end_scope``, across the forwards in between."""
        self._forward_start(None, ())
        self.scoped = True

    def end_scope(self) -> None:
        self.scoped = False
        self._leave()

    def clear(self) -> None:
        """Leave every mode and forget the forward in progress."""
        self.leave_all()
        self.scoped = False
        self.stack.clear()
        self.new_forward()

    def leave_all(self) -> None:
        while self._modes:
            self._leave()

    def _forward_start(self, module: nn.Module | None, args: Any) -> None:
        top_level = not self.stack
        if top_level:
            self.new_forward()
        if self.scoped:  # the scope holds the mode
            return
        if top_level:
            self.leave_all()  # left over from a forward that raised
        mode = _TracerMode(self)
        mode.__enter__()  # type: ignore[no-untyped-call]
        self._modes.append(mode)

    def _forward_end(self, module: nn.Module, args: Any, output: Any) -> None:
        if self.scoped:
            return
        self._leave()
        if self.on_forward_end is not None and len(self.stack) <= 1:  # the root is still pushed
            self.on_forward_end(output)

    def _leave(self) -> None:
        if self._modes:
            self._modes.pop().__exit__(None, None, None)  # type: ignore[no-untyped-call]

    def _push(self, name: str, activation: bool, module: nn.Module, args: Any) -> None:
        self.stack.append(name)
        self.activation_depth += activation

    def _pop(self, activation: bool, module: nn.Module, args: Any, output: Any) -> None:
        if self.stack:
            self.stack.pop()
        self.activation_depth -= activation
        self.last_module = module

    # -- copies ---------------------------------------------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        if state["registry"] is REGISTRY:
            state["registry"] = None
        state["_modes"] = []
        state["last_module"] = None
        state["_functions"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        if state["registry"] is None:
            state["registry"] = REGISTRY
        self.__dict__.update(state)


class _TracerMode(TorchFunctionMode):
    """Sends calls of registered activation functions to the tracer's owner; all else passes."""

    def __init__(self, tracer: FunctionalTracer) -> None:
        super().__init__()
        self.tracer = tracer
        self.functions = tracer.functions

    def __torch_function__(
        self,
        func: Any,
        types: Any,
        args: Sequence[Any] = (),
        kwargs: Mapping[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        tracer = self.tracer
        hit = None
        if func in self.functions and tracer.activation_depth == 0 and _is_float_tensor(args):
            hit = tracer.registry.for_function(func)
        if hit is not None:
            out = tracer.on_call(hit[0], hit[1], func, args, kwargs)
        else:
            out = func(*args, **kwargs)
        observe = tracer.observe
        if observe is not None:
            observe(func, args, kwargs, out)
        return out


def _is_float_tensor(args: Sequence[Any]) -> bool:
    return bool(args) and isinstance(args[0], Tensor) and args[0].is_floating_point()
