"""Measuring inside a ``torch.compile``d step: hooks Dynamo traces, reductions Inductor fuses.

After the Monitor's first measured step has found the sites eagerly (discovery needs Python
at every call), a model whose sites are all activation modules gets one forward hook per site
module written in traceable ops (``neurodiag.stats.traced``): Dynamo inlines them into the
user's graph, so the per-site reductions run inside the compiled step instead of forcing it
eager. Gradients come from tensor hooks registered in the same forward hooks, written the same
way: AOTAutograd puts them into the compiled backward (one forward and one backward graph per
step; a hook that left the graph, e.g. behind ``torch._dynamo.disable``, would split the forward
at every site).

Two Dynamo settings make the hooks seen whenever the model was compiled:
``skip_nnmodule_hook_guards`` is turned off while they are attached (compiled code then
guards on the hook dicts, and recompiles when the hooks come or go: pytorch#117758), and code
compiled before (which has no such guard) is dropped once with
``torch._dynamo.reset_code_caches()``, so it is compiled again with the hooks. Both are
process-wide: every compiled function recompiles once, and once more after the Monitor exits.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from neurodiag.monitor.compiled import BreakCounter
from neurodiag.sites.capture import ModuleSitePlan
from neurodiag.sites.site import reduction_dims
from neurodiag.stats.bundle import SiteStats
from neurodiag.stats.traced import traced_states


class _SiteHook:
    """The forward hook of one site module (traced by Dynamo inside compiled code).

    It reads only objects of its own: Dynamo guards each object a hook reads, and an object
    that several hooks share (say, the measurement's ``enabled`` flag) gets an identity guard
    per hook that Dynamo evaluates in Python on every call of the compiled step.
    """

    def __init__(self, plan: ModuleSitePlan, enabled: bool) -> None:
        self.site = plan.site  # its ``stats`` change with each Monitor window: read when used
        stats = self._stats()
        self.states = traced_states(stats, plan.derivative, plan.step)
        self.wants_grad = stats.wants_grad
        self.inplace = plan.inplace
        self.feature_dim = plan.site.feature_dim
        #: False: measure nothing (set by ``GraphMeasurement.enabled`` for every hook)
        self.enabled = enabled

    def _stats(self) -> SiteStats:
        stats = self.site.stats
        assert isinstance(stats, SiteStats)
        return stats

    def __call__(self, module: nn.Module, args: tuple[Any, ...], output: Any) -> None:
        if not self.enabled or not isinstance(output, Tensor) or not args:
            return
        z = args[0]
        if not isinstance(z, Tensor) or z.shape != output.shape:
            return
        dims = reduction_dims(output.dim(), self.feature_dim)
        pre = None if (self.inplace or output is z) else z.detach()
        self.states.observe_forward(pre, output.detach(), dims)
        if output.requires_grad and self.wants_grad:
            hook = self

            def grad_hook(grad: Tensor) -> None:
                hook.states.observe_grad(grad.detach(), dims)

            output.register_hook(grad_hook)  # type: ignore[no-untyped-call]

    def drain(self) -> None:
        self.states.drain_into(self._stats())


class _HookGuards:
    """``skip_nnmodule_hook_guards = False`` held by any number of measurements at once."""

    holders = 0
    saved: bool = True

    @classmethod
    def hold(cls) -> None:
        config = torch._dynamo.config
        if cls.holders == 0:
            cls.saved = config.skip_nnmodule_hook_guards
            config.skip_nnmodule_hook_guards = False
            torch._dynamo.reset_code_caches()  # code compiled without hook guards: recompile
        cls.holders += 1

    @classmethod
    def release(cls) -> None:
        cls.holders -= 1
        if cls.holders == 0:
            torch._dynamo.config.skip_nnmodule_hook_guards = cls.saved


class GraphMeasurement:
    """The traced hooks of every site, attached together, drained together."""

    def __init__(self) -> None:
        self._enabled = True
        self._hooks: list[_SiteHook] = []
        self._handles: list[RemovableHandle] = []
        #: attached at least once (the report says the compiled code was measured in graph)
        self.used = False
        #: graph breaks Dynamo counted while the hooks were attached (by anyone)
        self.breaks = BreakCounter()

    @property
    def enabled(self) -> bool:
        """False: the hooks measure nothing (steps not measured, forwards outside a step)."""
        return self._enabled

    @enabled.setter
    def enabled(self, value: bool) -> None:
        self._enabled = value
        for hook in self._hooks:
            hook.enabled = value

    @property
    def attached(self) -> bool:
        return bool(self._handles)

    def attach(self, plans: Sequence[ModuleSitePlan]) -> None:
        _HookGuards.hold()
        self.used = True
        self.breaks.start()
        for plan in plans:
            hook = _SiteHook(plan, self._enabled)
            self._hooks.append(hook)
            self._handles.append(plan.module.register_forward_hook(hook))

    def detach(self) -> None:
        """Remove the hooks (after draining what they measured); safe to call twice."""
        if not self._handles:
            return
        self.drain()
        self.breaks.stop()
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        self._hooks.clear()
        _HookGuards.release()

    def drain(self) -> None:
        """Fold the compiled calls' states into each site's ``SiteStats`` (before any read)."""
        for hook in self._hooks:
            hook.drain()
