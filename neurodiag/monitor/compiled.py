"""``torch.compile`` and the Monitor: while the hooks are attached, compiled code runs eagerly.

Why (torch 2.13): Dynamo guards no forward-hook dict by default
(``torch._dynamo.config.skip_nnmodule_hook_guards``), so a model compiled and run before the
hooks were added keeps running its cached graph and never calls them (pytorch#117758: a loop
that reads as "0 sites"); and tracing while a TorchFunctionMode pushed outside the compiled
region is active (the functional sites' mode) fails with ``NameError:
___get_torch_function_mode_stack_at``. ``torch.compiler.set_stance("force_eager")`` (torch >=
2.6) makes every compiled module and function run its original Python, hooks and mode included,
without touching the compiled caches: the Monitor holds that stance while its hooks are attached
and puts the user's stance back after, when the cached compiled code runs again. Nothing is
traced meanwhile, so neurodiag adds no graph break (``EagerStance.graph_breaks`` counts them).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

#: where Dynamo's wrappers of compiled modules and functions live (``_fn``/``compile_wrapper``)
_EVAL_FRAME = str(Path("torch", "_dynamo", "eval_frame.py"))


def stance_available() -> bool:
    """True when this torch can run compiled code eagerly on demand (torch >= 2.6)."""
    return hasattr(torch.compiler, "set_stance")


def compiled_parts(model: nn.Module) -> list[str]:
    """Qualified names of the compiled modules in ``model`` ("<root>" for the model itself).

    ``torch.compile(m)`` (an ``OptimizedModule``), ``m.compile()`` (``_compiled_call_impl``) and a
    forward or step method replaced by its compiled wrapper (Lightning's ``from_compiled``).
    """
    found = []
    for name, module in model.named_modules():
        if _is_compiled(module):
            found.append(name or "<root>")
    return found


def _is_compiled(module: nn.Module) -> bool:
    if type(module).__name__ == "OptimizedModule":
        return True
    if getattr(module, "_compiled_call_impl", None) is not None:
        return True
    methods = vars(module)
    return any(
        hasattr(methods.get(name), "_torchdynamo_orig_callable")
        for name in ("forward", "training_step")
    )


def called_from_compiled_code() -> bool:
    """True when a compiled module or function is on the call stack (``torch.compile(step)``)."""
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code.co_filename.endswith(_EVAL_FRAME):
            return True
        frame = frame.f_back  # type: ignore[assignment]
    return False


#: Functions of neurodiag that Dynamo is told not to trace (``torch._dynamo.disable``): a break
#: whose reason names one is neurodiag's own (they run eagerly, outside any forward graph).
OWN_BREAKS = ("Monitor._on_forward",)


def graph_break_total(own: bool = False) -> int:
    """Graph breaks Dynamo has counted in this process so far (``own``: neurodiag's only)."""
    from torch._dynamo.utils import counters

    return int(
        sum(
            count
            for reason, count in counters["graph_break"].items()
            if not own or any(name in reason for name in OWN_BREAKS)
        )
    )


class BreakCounter:
    """Graph breaks counted between ``start`` and ``stop`` (any number of times): all, ours."""

    def __init__(self) -> None:
        self.running = False
        self._done = (0, 0)
        self._at = (0, 0)

    def start(self) -> None:
        if not self.running:
            self.running = True
            self._at = (graph_break_total(), graph_break_total(own=True))

    def stop(self) -> None:
        if self.running:
            self._done = self.counts
            self.running = False

    @property
    def counts(self) -> tuple[int, int]:
        """(all breaks, neurodiag's own) while running."""
        if not self.running:
            return self._done
        now = (graph_break_total() - self._at[0], graph_break_total(own=True) - self._at[1])
        return (self._done[0] + now[0], self._done[1] + now[1])


# One force_eager stance for every Monitor attached at once: nested or overlapping Monitors
# (exited in any order) must hand back the stance the first one found, never each other's.
_holders = 0
_held: Any = None


class EagerStance:
    """Holds ``set_stance("force_eager")`` between ``hold`` and ``release`` (both idempotent) and
    counts the graph breaks Dynamo made meanwhile."""

    def __init__(self) -> None:
        self.held = False
        #: graph breaks Dynamo counted while this stance was held (by anyone in the process)
        self.breaks = BreakCounter()

    def hold(self) -> bool:
        """Run compiled code eagerly from now on; False when this torch cannot."""
        global _holders, _held
        if self.held:
            return True
        if not stance_available():
            return False
        if _holders == 0:
            # the call sets the stance and remembers the one it replaced; __exit__ restores it
            _held = torch.compiler.set_stance("force_eager")
        _holders += 1
        self.held = True
        self.breaks.start()
        return True

    def release(self) -> None:
        """Give the user's own stance back (their compiled code runs compiled again)."""
        global _holders, _held
        if not self.held:
            return
        self.breaks.stop()
        self.held = False
        _holders -= 1
        if _holders == 0:
            stance, _held = _held, None
            stance.__exit__(None, None, None)
