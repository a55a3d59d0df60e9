"""Finding activation sites and attaching (and always removing) the hooks that measure them.

Module sites are activation modules (by registry type, or by the rule for unknown activation
modules); functional sites are calls such as ``F.gelu`` seen through the function mode of
``neurodiag.sites.tracer`` (the tracer ``swap_activations`` uses too), active only while the
model's own ``forward`` runs. Every handle is removed in ``close()``, which ``SiteRecorder`` calls
in ``__exit__`` whatever happened; forward hooks use ``always_call`` so that the bookkeeping
(module stack, function mode) unwinds even when a forward raises.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from fnmatch import fnmatchcase
from types import TracebackType
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from neurodiag.activations.naming import function_label, identify_module
from neurodiag.activations.registry import (
    REGISTRY,
    ActivationKind,
    ActivationRegistry,
    FunctionBinding,
    looks_like_activation,
)
from neurodiag.errors import NeurodiagError
from neurodiag.sites.axes import AxisTracker
from neurodiag.sites.experts import Routing, Share, experts_size, read_routing
from neurodiag.sites.feature_dim import auto_feature_dim, override_feature_dim
from neurodiag.sites.site import (
    DerivativeFn,
    Fold,
    SinkFactory,
    Site,
    SiteKey,
    display_names,
    step_folder,
)
from neurodiag.sites.tracer import FunctionalTracer, module_names


def _recomputing() -> bool:
    """True inside a backward pass: activation checkpointing re-running a forward.

    Such calls are not new data (counting them would double the forward statistics); the
    gradients still reach the hooks registered on the original forward's outputs.
    """
    return _graph_task_id() != -1


_graph_task_id = torch._C._current_graph_task_id


def _inplace(module: nn.Module) -> bool:
    return bool(getattr(module, "inplace", False))


@dataclass(slots=True)
class _Plan:
    """What a lean module site's call needs once its first call went through ``_measure``.

    Valid while the call looks the same (shape, dtype, in-place-ness); anything else takes the
    general path again, which rebuilds the plan.
    """

    site: Site
    shape: torch.Size
    dtype: torch.dtype
    output_is_z: bool
    inplace_flag: bool
    inplace: bool
    derivative: DerivativeFn
    step: bool
    dims: tuple[int, ...]
    #: The sink's hot path for these calls (``step_folder``), built for ``fold_owner``, the
    #: site's sink then (a Monitor's new window brings a new sink: built again).
    fold: Fold | None = None
    fold_owner: object = None

    def __deepcopy__(self, memo: dict[int, Any]) -> _Plan:
        """A copied plan (a deep copy of a monitored model copies its hooks) builds its own hot
        path: ``fold`` folds into the states it was built for, never the copy's."""
        kept = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in _HOT_PATH}
        return _Plan(**copy.deepcopy(kept, memo))


#: The fields of ``_Plan`` a copy does not keep.
_HOT_PATH = ("fold", "fold_owner")


@dataclass(frozen=True)
class ModuleSitePlan:
    """What a hook on ``module`` needs to measure its site without the recorder."""

    module: nn.Module
    site: Site
    derivative: DerivativeFn
    step: bool
    inplace: bool


class SiteRecorder:
    """Attach to ``model`` on enter, detach on exit; accumulates per-site statistics.

    ``discovery`` (the first forward) runs with the module-stack hooks and the function mode; call
    ``end_discovery()`` afterwards to drop them when no functional site was found, which keeps
    later batches as cheap as module hooks alone.
    """

    def __init__(
        self,
        model: nn.Module,
        make_sink: SinkFactory,
        *,
        registry: ActivationRegistry = REGISTRY,
        include: Sequence[str] = (),
        exclude: Sequence[str] = (),
        feature_dims: Mapping[str, int] | None = None,
        functional: bool = True,
        on_close: Callable[[], None] | None = None,
    ) -> None:
        self.model = model
        self.make_sink = make_sink
        self.on_close = on_close
        self.registry = registry
        self.include = tuple(include)
        self.exclude = tuple(exclude)
        self.feature_dims = dict(feature_dims or {})
        self.functional = functional
        self.sites: dict[SiteKey, Site] = {}
        self.skipped: set[SiteKey] = set()
        self._names = module_names(model)
        self._module_kinds: dict[nn.Module, ActivationKind | None] = {}
        #: activation modules whose σ' is exact from their output (no copy of z kept)
        self._output_suffices: set[nn.Module] = set()
        self._not_elementwise: set[nn.Module] = set()
        self._module_calls: dict[nn.Module, int] = {}
        #: activation module of a Hugging Face experts module -> that module (sites/experts.py)
        self._expert_acts: dict[nn.Module, nn.Module] = {}
        self._routing: dict[nn.Module, Routing | None] = {}
        self._expert_calls: dict[tuple[nn.Module, int], int] = {}
        self._module_keys: dict[tuple[nn.Module, int], SiteKey] = {}
        self._saved_inputs: dict[nn.Module, list[Tensor | None]] = {}
        self._handles: list[RemovableHandle] = []
        self._leanable: dict[nn.Module, tuple[RemovableHandle, RemovableHandle]] = {}
        self._lean_modules: set[nn.Module] = set()
        self._plans: dict[tuple[nn.Module, int], _Plan] = {}
        self._discovery_handles: list[RemovableHandle] = []
        self.found_functional = False
        self.forwards = 0
        #: True during discovery: the function mode tags tensors with their feature dims and
        #: recognises gates (``neurodiag.sites.axes``); off afterwards, it costs per torch call
        self.tracking = functional
        self.tracker = AxisTracker(self._mark_gate)
        #: names functional sites and hands their calls to ``functional_call`` (attached for
        #: discovery, and for good when it found functional sites)
        self.tracer = FunctionalTracer(
            self.functional_call,
            registry=registry,
            observe=self.tracker.observe if self.tracking else None,
            on_forward_end=self._forward_end,
        )
        self._unknown_names: dict[nn.Module, str] = {}
        #: an unregistered module found to compute a registered function exactly: its σ'
        self._identified: dict[nn.Module, DerivativeFn | None] = {}
        self._unknown_in_place_modules: set[nn.Module] = set()
        #: False: the hooks stay attached but measure nothing (``Monitor(measure_every=K)``).
        self.enabled = True
        #: When a list: the autograd node of every site output whose gradient a hook waits for
        #: (the scan empties it per batch to choose its gradient targets; None: not collected).
        self.watched: list[Any] | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def __enter__(self) -> SiteRecorder:
        try:
            self._attach()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Remove every hook and leave no function mode behind; safe to call twice."""
        for handle in self._handles + self._discovery_handles:
            handle.remove()
        self._handles.clear()
        self._discovery_handles.clear()
        self.tracer.clear()
        self._saved_inputs.clear()
        self._plans.clear()
        self.tracker.clear()
        self._lean_modules.clear()
        if self.on_close is not None:
            self.on_close()

    def module_site_plans(self) -> list[ModuleSitePlan] | str:
        """How each site of this model is measured by a hook alone, or why one cannot be.

        For measuring inside a compiled graph (``neurodiag.monitor.graph``): every site must be
        an activation module called once per forward whose σ' is plain torch ops (a registered
        kind other than Bernstein, or an unregistered module differentiated by ``torch.func.jvp``
        of its forward) and that needs no copy of an input overwritten in place. A reason names
        the first site that is not.
        """
        if self.found_functional:
            return "functional activation calls (F.gelu, torch.relu, ...) are seen only eagerly"
        by_key = {key: module for (module, _), key in self._module_keys.items()}
        plans = []
        for key, site in self.sites.items():
            module = by_key.get(key)
            name = key.candidate_names()[0]
            if module is None or module in self._expert_acts:
                return f"{name} is not one activation module (mixture-of-experts site)"
            if key.index > 0 or (module, 1) in self._module_keys:
                return f"{name} is called more than once per forward"
            kind = self._module_kinds.get(module)
            if kind is None:  # σ' by forward-mode autograd of its own forward (Dynamo traces it)
                if module in self._unknown_in_place_modules:
                    return f"{name} works in place and its σ' needs the overwritten input"
                plans.append(ModuleSitePlan(module, site, _jvp_derivative(module), False, False))
                continue
            if kind.delta_bar is not None:
                return f"{name} is a Bernstein activation (its σ' is not traced)"
            inplace = _inplace(module)
            if inplace and module not in self._output_suffices:
                return f"{name} works in place and its σ' needs the overwritten input"
            params = kind.module_params(module)
            plans.append(
                ModuleSitePlan(
                    module=module,
                    site=site,
                    derivative=_bind_derivative(kind, params),
                    step=kind.step and not params,
                    inplace=inplace,
                )
            )
        return plans

    def end_discovery(self) -> None:
        """After the first forward: keep the function mode only if it found functional sites.

        Without the function mode, activation modules whose derivative works from the output
        need no pre-hook (it only tracks the nesting depth for the mode and saves inputs that
        in-place ops overwrite): their pre/post pair is replaced by one lean post-hook.
        Feature-dim tracking ends here either way.
        """
        self.tracking = False
        self.tracer.observe = None
        self.tracker.clear()
        if self.found_functional:
            return
        for handle in self._discovery_handles:
            handle.remove()
        self._discovery_handles.clear()
        for module, (pre, post) in self._leanable.items():
            pre.remove()
            post.remove()
            self._lean_modules.add(module)
            # not always_call: nothing to unwind when a forward raises (no depth, no saved input)
            self._handles.append(module.register_forward_hook(self._module_lean_hook))
        self._leanable.clear()

    def _attach(self) -> None:
        for experts in self.model.modules():
            count = experts_size(experts)
            if count is None:
                continue
            for child in experts.children():
                if self.registry.for_module(child) is not None or looks_like_activation(child):
                    self._expert_acts[child] = experts
            if any(self._expert_acts.get(child) is experts for child in experts.children()):
                hook = functools.partial(self._experts_pre_hook, count)
                self._handles.append(experts.register_forward_pre_hook(hook, with_kwargs=True))
        for module in self.model.modules():
            kind = self.registry.for_module(module)
            if kind is None and not looks_like_activation(module):
                continue
            self._module_kinds[module] = kind
            if kind is not None and kind.output_suffices(kind.module_params(module)):
                self._output_suffices.add(module)
            pre = module.register_forward_pre_hook(self._module_pre_hook)
            post = module.register_forward_hook(self._module_post_hook, always_call=True)
            self._handles += [pre, post]
            if module in self._output_suffices and module not in self._expert_acts:
                self._leanable[module] = (pre, post)
        root = self.model
        self._handles.append(root.register_forward_pre_hook(self._root_pre_hook, prepend=True))
        if self.functional:
            self._discovery_handles += self.tracer.attach(root)

    # -- steps as forwards (Monitor steps="manual") ---------------------------------------------
    def begin_scope(self) -> None:
        """Treat what runs until ``end_scope`` as one forward of the model.

        For training steps that may never call the model's own ``forward`` (Lightning's
        ``training_step`` calling ``self.net(x)``): call indices start again, and while the
        function mode is needed (discovery, or functional sites found) it covers the whole step.
        Forwards of the model inside the scope do not enter the mode again.
        """
        self._root_pre_hook(self.model, ())
        if self.functional and self._discovery_handles and not self.tracer.scoped:
            self.tracer.begin_scope()

    def end_scope(self) -> None:
        """End the scope begun by ``begin_scope``; the first measured one ends discovery."""
        if not self.tracer.scoped:
            return
        self.tracer.end_scope()
        self._forward_end(True)

    # -- bookkeeping hooks -------------------------------------------------------------------
    def _root_pre_hook(self, module: nn.Module, args: Any) -> None:
        if not self.tracer.depth:  # a new top-level forward: call indices start again
            self._module_calls.clear()
            self._expert_calls.clear()
            self._routing.clear()
            # a forward that raised may have skipped our post-hooks: start from a clean slate
            self._saved_inputs.clear()

    def _forward_end(self, output: Any) -> None:
        """A top-level forward (or a step's scope) ended and left the function mode."""
        # Only after a forward that completed (output given): on the exception path PyTorch
        # iterates the hook dict itself, so removing hooks there would break the iteration.
        if output is not None and self.enabled:
            # (a forward with the hooks inert measured nothing: discovery is not over)
            self.forwards += 1
            if self.forwards == 1:
                self.end_discovery()

    def _experts_pre_hook(
        self, count: int, module: nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self._routing[module] = read_routing(module, count, args, kwargs) if self.enabled else None

    # -- module sites --------------------------------------------------------------------------
    def _module_pre_hook(self, module: nn.Module, args: tuple[Any, ...]) -> None:
        z = args[0] if args else None
        saved: Tensor | None = None
        kind = self._module_kinds.get(module)
        needs_copy = module not in self._output_suffices
        if (
            self.enabled
            and isinstance(z, Tensor)
            and z.is_floating_point()
            and needs_copy
            and (
                _inplace(module)
                or module in self._unknown_in_place_modules
                or (
                    kind is None
                    and module not in self._unknown_names
                    and module not in self._not_elementwise
                )
            )
        ):
            # the op will overwrite the true pre-activation; an unknown module's first call is
            # copied too: it may work in place without an ``inplace`` flag (see _measure)
            saved = z.detach().clone()
        self._saved_inputs.setdefault(module, []).append(saved)

    def _module_post_hook(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        # (runs before the tracer pops the module: calls made while measuring are no sites)
        if self.tracer.active:
            # the measuring ops need no trip through the function mode's Python handler
            with torch._C.DisableTorchFunction():
                self._measure_module(module, args, output)
        else:
            self._measure_module(module, args, output)

    def _module_lean_hook(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        # no pre-hook ran: nothing was saved (from_output kinds), and with no function mode left
        # the nesting depth has no reader
        if output is None or not self.enabled or _graph_task_id() != -1:
            return  # (a graph task running: checkpointing recomputes the forward, see above)
        calls = self._module_calls
        index = calls.get(module, 0)
        plan = self._plans.get((module, index))
        if plan is not None and args and isinstance(output, Tensor):
            z = args[0]
            if (
                output.shape == plan.shape
                and output.dtype == plan.dtype
                and (output is z) == plan.output_is_z
                and (plan.output_is_z or (isinstance(z, Tensor) and z.shape == plan.shape))
                and bool(getattr(module, "inplace", False)) == plan.inplace_flag
            ):
                calls[module] = index + 1
                self._run_plan(plan, z, output)
                return
        self._measure(module, args, output, None)

    def _run_plan(self, plan: _Plan, z: Tensor, a: Tensor) -> None:
        """The steady state of a lean site call: what ``_measure`` + ``_record`` would do."""
        site = plan.site
        stats = site.stats
        if plan.fold_owner is not stats:
            # the fold first, then its owner: a thread that sees the new owner (DataParallel
            # replicas run these hooks at once) sees the new fold, never the last window's
            from_z = not plan.inplace
            plan.fold = step_folder(stats, plan.shape, plan.dims, from_z) if plan.step else None
            plan.fold_owner = stats
        fold = plan.fold
        requires_grad = a.requires_grad
        if fold is None or not fold(a if plan.inplace else z):  # (it reads only data)
            pre = None if plan.inplace else (z.detach() if z.requires_grad else z)
            stats.observe_forward(
                pre, a.detach() if requires_grad else a, plan.derivative, plan.dims, plan.step
            )
        if requires_grad and stats.wants_grad:
            self._watch_grad(site, a, plan.dims)

    def _measure_module(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        saved_stack = self._saved_inputs.get(module)
        self._measure(module, args, output, saved_stack.pop() if saved_stack else None)

    def _measure(
        self, module: nn.Module, args: tuple[Any, ...], output: Any, saved: Tensor | None
    ) -> None:
        if (
            output is None
            or not self.enabled
            or module in self._not_elementwise
            or _graph_task_id() != -1
        ):
            return  # (a graph task running: checkpointing recomputes the forward, see above)
        z = args[0] if args else None
        if not (
            isinstance(z, Tensor)
            and isinstance(output, Tensor)
            and z.is_floating_point()
            and output.shape == z.shape
        ):
            self._not_elementwise.add(module)
            return
        experts = self._expert_acts.get(module)
        routing = self._routing.get(experts) if experts is not None else None
        shares = routing.shares(z.shape[0]) if routing is not None and z.dim() else None
        index = self._module_calls.get(module, 0)
        self._module_calls[module] = index + 1
        key = self._module_key(module, index)
        kind = self._module_kinds.get(module)
        inplace = output is z or bool(getattr(module, "inplace", False))
        if kind is None and output is z and not self._unknown_in_place(module, saved, output):
            return  # an identity ("LinearActivation"): nothing to measure
        pre = saved if inplace else z  # saved is None for in-place from_output kinds
        delta_bar = None
        params: Mapping[str, Any] = {}
        step = False
        if kind is None:
            activation = self._unknown_names.get(module) or self._name_unknown(module, output)
            derivative = self._identified.get(module) or _autograd_derivative(module, self)
            if module not in self._identified and pre is not None and not inplace:
                derivative = self._identify_derivative(module, activation, pre, output, derivative)
        else:
            params = kind.module_params(module)
            activation = kind.name_for(params)
            derivative = _bind_derivative(kind, params)
            step = kind.step and not params
            if kind.delta_bar:
                delta_bar = kind.delta_bar(module)
        impl = type(module).__name__
        if shares is not None and experts is not None and pre is not None:
            self._module_calls[module] = index  # counted per expert instead
            self._record_experts(
                module,
                experts,
                shares,
                (activation, impl, derivative, delta_bar, step),
                pre,
                output,
            )
            return
        self._record(key, activation, impl, "module", pre, output, derivative, delta_bar, step, z)
        if (
            (module in self._lean_modules or module in self._leanable)  # plans ready for batch 2
            and kind is not None
            and not params
            and delta_bar is None
        ):
            site = self.sites.get(key)
            if site is not None:
                self._plans[(module, index)] = _Plan(
                    site=site,
                    shape=output.shape,
                    dtype=output.dtype,
                    output_is_z=output is z,
                    inplace_flag=bool(getattr(module, "inplace", False)),
                    inplace=inplace,
                    derivative=derivative,
                    step=step,
                    dims=site.dims(output.dim()),
                )

    def _record_experts(
        self,
        module: nn.Module,
        experts: nn.Module,
        shares: list[Share],
        how: tuple[str, str, DerivativeFn, float | None, bool],
        z: Tensor,
        a: Tensor,
    ) -> None:
        """One activation call of an experts module: each expert's rows feed its own site."""
        activation, impl, derivative, delta_bar, step = how
        fed: list[tuple[Site, slice | Tensor]] = []
        for expert, rows in shares:
            key = self._expert_key(module, experts, expert)
            if rows is None:  # the whole call is this expert's (eager)
                self._record(key, activation, impl, "module", z, a, derivative, delta_bar, step, z)
                continue
            self._record(
                key,
                activation,
                impl,
                "module",
                z[rows],
                a[rows],
                derivative,
                delta_bar,
                step,
                z,
                watch=False,
            )
            site = self.sites.get(key)
            if site is not None:
                fed.append((site, rows))
        if fed and a.requires_grad and any(site.stats.wants_grad for site, _ in fed):
            dims = fed[0][0].dims(a.dim())

            def split_grad(grad: Tensor) -> None:
                grad = grad.detach()
                for site, rows in fed:
                    site.stats.observe_grad(grad[rows], dims)

            a.register_hook(split_grad)  # type: ignore[no-untyped-call]
            if self.watched is not None:
                self.watched.append(a.grad_fn)

    def _expert_key(self, module: nn.Module, experts: nn.Module, expert: int) -> SiteKey:
        """``experts.E.act_fn``: expert E's site, named as if each expert had its own module."""
        calls = self._expert_calls
        index = calls.get((module, expert), 0)
        calls[(module, expert)] = index + 1
        base = self._names.get(experts, "")
        own = self._names.get(module, type(module).__name__)
        suffix = own[len(base) + 1 :] if base and own.startswith(base + ".") else own
        prefix = f"{base}." if base else ""
        return SiteKey(f"{prefix}{expert}.{suffix}", None, index)

    def _unknown_in_place(self, module: nn.Module, saved: Tensor | None, a: Tensor) -> bool:
        """An unknown module returned its input: in place (copy its input from now on), or an
        identity, which is no site. Decided at its first call, whose input was copied."""
        if module in self._unknown_in_place_modules:
            return True
        if saved is None or torch.equal(saved, a):
            self._not_elementwise.add(module)
            return False
        self._unknown_in_place_modules.add(module)
        return True

    def _name_unknown(self, module: nn.Module, a: Tensor) -> str:
        """The canonical name of what an unregistered module computes, else its class name.

        A function of the module alone: its forward on a fixed probe grid (``identify_module``),
        never the site's data, on which many functions agree (gelu and x/2 near 0).
        """

        def run(z: Tensor) -> Tensor:
            self.tracer.activation_depth += 1  # the probe's own torch calls are no sites
            try:
                with torch._C.DisableTorchFunction():
                    out: Tensor = module.forward(z)
            finally:
                self.tracer.activation_depth -= 1
            return out

        name = self._unknown_names[module] = identify_module(run, a) or type(module).__name__
        return name

    def _identify_derivative(
        self, module: nn.Module, name: str, z: Tensor, a: Tensor, autograd: DerivativeFn
    ) -> DerivativeFn:
        """σ' of an unregistered module that computes a registered function (Hugging Face's
        ``GELUActivation`` is ``F.gelu``): that function's own derivative, one kernel instead of
        a second forward and a backward through autograd. Taken only when, on this first call's
        data, the module's output equals the function's exactly and so does σ' (autograd's
        against the registered one); else autograd stays. Decided once per module."""
        found: DerivativeFn | None = None
        kind = self.registry.get(name)
        if kind is not None and kind.functions and z.is_floating_point():
            self.tracer.activation_depth += 1  # these calls are no sites
            try:
                with torch._C.DisableTorchFunction(), torch.no_grad():
                    same = torch.equal(kind.functions[0].func(z.detach()), a.detach())
                    own = kind.derivative(z.detach(), a.detach()) if same else None
                if own is not None and torch.equal(own, autograd(z.detach(), a.detach())):
                    found = kind.derivative
            except Exception:  # a function that refuses these inputs: autograd it is
                found = None
            finally:
                self.tracer.activation_depth -= 1
        self._identified[module] = found
        return found or autograd

    def _mark_gate(self, site: Site) -> None:
        site.role = "gate"

    def _module_key(self, module: nn.Module, index: int) -> SiteKey:
        """SiteKey of call ``index`` of ``module`` (cached: built once, not per batch)."""
        cache = self._module_keys
        key = cache.get((module, index))
        if key is None:
            name = self._names.get(module, type(module).__name__)
            key = cache[(module, index)] = SiteKey(name, None, index)
        return key

    # -- functional sites ----------------------------------------------------------------------
    def functional_call(
        self,
        kind: ActivationKind,
        binding: FunctionBinding,
        func: Any,
        args: Sequence[Any],
        kwargs: Mapping[str, Any],
    ) -> Any:
        if not self.enabled or _recomputing():
            return func(*args, **kwargs)
        bound = binding.bind(args, kwargs)
        inplace = binding.inplace or bound.get("inplace") is True
        key = self.tracer.next_key(kind.name)
        z: Tensor = args[0]
        if key in self.skipped:
            return func(*args, **kwargs)
        pre: Tensor | None = z
        if inplace:
            pre = None if kind.output_suffices(bound) else z.detach().clone()
        out = func(*args, **kwargs)
        if isinstance(out, Tensor) and out.shape == z.shape:
            self.found_functional = True
            params = kind.derivative_kwargs(bound)
            derivative = _bind_derivative(kind, params)
            step = kind.step and not params
            activation = kind.name_for(params)
            impl = function_label(func)
            self._record(key, activation, impl, "functional", pre, out, derivative, None, step, z)
        return out

    # -- shared ----------------------------------------------------------------------------------
    def _record(
        self,
        key: SiteKey,
        activation: str,
        impl: str,
        kind: str,
        z: Tensor | None,
        a: Tensor,
        derivative: DerivativeFn,
        delta_bar: float | None,
        step: bool,
        source: Tensor | None,
        watch: bool = True,
    ) -> None:
        """Feed one call to its site; ``source`` is the input tensor as the model passed it
        (``z`` is None or a copy for in-place sites), whose tag says the feature dim."""
        site = self.sites.get(key)
        if site is None:
            if key in self.skipped or not self._wanted(key):
                self.skipped.add(key)
                return
            site = self._new_site(key, activation, impl, kind, a, delta_bar, source)
        if self.tracking:
            self.tracker.mark_site_output(a, site)
        ndim = a.dim()
        dims = site.dims(ndim)
        if ndim and a.shape[site.feature_dim] != site.neurons:
            raise NeurodiagError(
                f"site {key.candidate_names()[0]} had {site.neurons} neurons along dim "
                f"{site.feature_dim} and now {a.shape[site.feature_dim]}; set its neuron dim with "
                f"--feature-dim '{key.candidate_names()[0]}=DIM'"
            )
        # z and a are detached, so measuring builds no autograd graph (no no_grad needed)
        requires_grad = a.requires_grad
        if z is not None and z.requires_grad:
            z = z.detach()
        stats = site.stats
        stats.observe_forward(z, a.detach() if requires_grad else a, derivative, dims, step)
        if watch and requires_grad and stats.wants_grad:
            self._watch_grad(site, a, dims)

    def _watch_grad(self, site: Site, a: Tensor, dims: tuple[int, ...]) -> None:
        """Have ∂L/∂a of this call measured; note a's autograd node for the scan's targets."""
        site.watch_grad(a, dims)
        if self.watched is not None:
            self.watched.append(a.grad_fn)

    def _wanted(self, key: SiteKey) -> bool:
        if not (self.include or self.exclude):
            return True
        names = key.candidate_names()
        if self.include and not any(fnmatchcase(n, p) for n in names for p in self.include):
            return False
        return not any(fnmatchcase(n, p) for n in names for p in self.exclude)

    def _new_site(
        self,
        key: SiteKey,
        activation: str,
        impl: str,
        kind: str,
        a: Tensor,
        delta_bar: float | None,
        source: Tensor | None,
    ) -> Site:
        feature_dim, axis_source, axis_note = self._feature_dim(key, a, source)
        if a.dim() == 0:
            neurons = 1
        else:
            if not -a.dim() <= feature_dim < a.dim():
                raise NeurodiagError(
                    f"neuron dim {feature_dim} is out of range for site "
                    f"{key.candidate_names()[0]} with shape {tuple(a.shape)}"
                )
            feature_dim %= a.dim()
            neurons = a.shape[feature_dim]
        stats = self.make_sink(neurons, a.device, a.dtype)
        site = Site(
            key,
            activation,
            kind,
            feature_dim,
            neurons,
            delta_bar,
            stats,
            impl=impl,
            axis_source=axis_source,
            axis_note=axis_note,
        )
        self.sites[key] = site
        return site

    def _feature_dim(
        self, key: SiteKey, a: Tensor, source: Tensor | None
    ) -> tuple[int, str, str | None]:
        """(dim, where it came from, a note when it may be wrong): override, layer, shape rule."""
        override = override_feature_dim(key.candidate_names(), self.feature_dims)
        if override is not None:
            return override, "override", None
        axis = self.tracker.axis(source) if self.tracking and source is not None else None
        if axis is not None and axis.dim < a.dim():
            return axis.dim, axis.origin, axis.conflict
        dim = auto_feature_dim(a.dim(), self.tracer.last_module)
        note = None
        if a.dim() >= 3:
            note = f"no layer feeding it was followed; the shape rule chose dim {dim}"
        return dim, "rule", note

    def ordered_sites(self) -> list[tuple[str, Site]]:
        """Sites in forward execution order (first seen first) with their display names."""
        names = display_names(list(self.sites))
        return [(names[key], site) for key, site in self.sites.items()]

    def unmatched_includes(self) -> list[str]:
        """--include globs that matched no site (usually a typo)."""
        seen = [n for key in list(self.sites) + list(self.skipped) for n in key.candidate_names()]
        final = [name for name, _ in self.ordered_sites()]
        return [p for p in self.include if not any(fnmatchcase(n, p) for n in seen + final)]


def _bind_derivative(kind: ActivationKind, params: Mapping[str, Any]) -> DerivativeFn:
    derivative = kind.derivative
    if not params:
        return derivative
    return functools.partial(derivative, **params)


def _jvp_derivative(module: nn.Module) -> DerivativeFn:
    """σ'(z) of an unknown elementwise module by forward-mode autograd (traceable by Dynamo,
    unlike ``torch.autograd.grad``): the eager path's ``_autograd_derivative``, in a graph."""

    def derivative(z: Tensor | None, a: Tensor) -> Tensor:
        if z is None:
            raise RuntimeError(f"cannot differentiate {type(module).__name__} without its input")
        slope: Tensor = torch.func.jvp(module.forward, (z,), (torch.ones_like(z),))[1]
        return slope

    return derivative


def _autograd_derivative(module: nn.Module, recorder: SiteRecorder) -> DerivativeFn:
    """σ'(z) of an unknown elementwise activation module by autograd on a fresh copy of z."""

    def derivative(z: Tensor | None, a: Tensor) -> Tensor:
        if z is None:
            raise RuntimeError(
                f"cannot differentiate in-place {type(module).__name__} without its input"
            )
        with torch.enable_grad():
            leaf = z.detach().requires_grad_(True)
            recorder.tracer.activation_depth += 1
            try:
                out = module.forward(leaf.clone())
            finally:
                recorder.tracer.activation_depth -= 1
            (grad,) = torch.autograd.grad(out, leaf, torch.ones_like(out))
        return grad

    return derivative
