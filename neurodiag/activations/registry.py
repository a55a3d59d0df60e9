"""Registry of activation kinds: how to recognise a site and its exact derivative.

A new activation is one ``register(ActivationKind(...))`` call. Sites are recognised either by
module type (``nn.ReLU``) or by the function object a torch function mode sees (``F.relu``,
``torch.relu``, ``Tensor.relu_``...). Activation modules the registry does not know are still
sites when they look like activations (see ``looks_like_activation``); their derivative then
comes from autograd.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from neurodiag.activations import derivatives as d
from neurodiag.activations.golu import GoLU
from neurodiag.activations.nrelu import NReLU
from neurodiag.registry import Registry, RegistryView

Derivative = Callable[..., Tensor]


@dataclass(frozen=True)
class FunctionBinding:
    """One functional entry point of an activation, e.g. ``F.leaky_relu``.

    ``params`` names the positional parameters after the input, in order, so that arguments can
    be bound without ``inspect`` on the hot path. ``inplace`` is True for ``relu_``-style ops.
    """

    func: Callable[..., Any]
    params: tuple[str, ...] = ()
    inplace: bool = False

    def bind(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        bound = dict(zip(self.params, args[1:]))
        bound.update(kwargs)
        return bound


@dataclass(frozen=True)
class ActivationKind:
    """How neurodiag measures one activation function."""

    name: str
    derivative: Derivative
    #: the derivative is exact from the output alone (so in-place sites need no copy of z)
    from_output: bool = False
    #: parameters under which ``from_output`` fails (LeakyReLU with a negative slope: a > 0 on
    #: both sides of 0, so the sign of z is lost); None: never
    needs_input: Callable[[Mapping[str, Any]], bool] | None = None
    module_types: tuple[type[nn.Module], ...] = ()
    #: module -> derivative keyword arguments (e.g. LeakyReLU -> negative_slope)
    module_params: Callable[[nn.Module], dict[str, Any]] = field(default=lambda m: {})
    functions: tuple[FunctionBinding, ...] = ()
    #: parameters accepted by the derivative; other bound call arguments (inplace, ...) are dropped
    derivative_params: tuple[str, ...] = ()
    #: theoretical lower bound on |σ'| for this module (Bernstein), else None
    delta_bar: Callable[[nn.Module], float] | None = None
    #: σ' = [z > 0] exactly and a = max(z, 0) (ReLU): the step shortcut of
    #: ``neurodiag.stats.reductions`` counts a > 0 instead of evaluating σ'
    step: bool = False
    #: the canonical name under these parameters when they pick another function
    #: (``GELU(approximate="tanh")`` is ``gelu_tanh``); None: always ``name``
    variant: Callable[[Mapping[str, Any]], str] | None = None

    def name_for(self, params: Mapping[str, Any]) -> str:
        """The site's canonical ``activation`` name (see ``neurodiag.activations.naming``)."""
        return self.variant(params) if self.variant is not None else self.name

    def output_suffices(self, params: Mapping[str, Any]) -> bool:
        """σ' is exact from the output alone under these parameters (``from_output``)."""
        return self.from_output and not (self.needs_input is not None and self.needs_input(params))

    def derivative_kwargs(self, bound: Mapping[str, Any]) -> dict[str, Any]:
        return {k: bound[k] for k in self.derivative_params if k in bound}


class ActivationRegistry(RegistryView[ActivationKind]):
    """Name -> kind (a ``Registry``), plus the lookup tables the site finder needs on every
    call: by module type and by the function object a torch function mode sees."""

    def __init__(self) -> None:
        self.entries: Registry[ActivationKind] = Registry("activation")
        self._by_module: dict[type[nn.Module], ActivationKind] = {}
        self._by_function: dict[Any, tuple[ActivationKind, FunctionBinding]] = {}

    def register(self, kind: ActivationKind, *, overwrite: bool = False) -> ActivationKind:
        """Add ``kind`` under its ``name``; replacing one must be asked for with ``overwrite``."""
        old = self.entries.get(kind.name)
        self.entries.register(kind.name, kind, overwrite=overwrite)
        if old is not None:  # the replaced kind no longer answers for its types and functions
            self._by_module = {t: k for t, k in self._by_module.items() if k is not old}
            self._by_function = {f: h for f, h in self._by_function.items() if h[0] is not old}
        for module_type in kind.module_types:
            self._by_module[module_type] = kind
        for binding in kind.functions:
            self._by_function[binding.func] = (kind, binding)
        return kind

    def for_module(self, module: nn.Module) -> ActivationKind | None:
        kind = self._by_module.get(type(module))
        if kind is not None:
            return kind
        for module_type, candidate in self._by_module.items():
            if isinstance(module, module_type):
                return candidate
        return None

    def for_function(self, func: Any) -> tuple[ActivationKind, FunctionBinding] | None:
        try:
            return self._by_function.get(func)
        except TypeError:  # unhashable callables are never activations
            return None

    @property
    def functions(self) -> frozenset[Any]:
        return frozenset(self._by_function)


_ACTIVATION_NAME = re.compile(
    r"(relu|gelu|silu|swish|mish|elu|sigmoid|tanh|softplus|softsign|hardswish|activation|act$"
    r"|lu$|plus$)",
    re.IGNORECASE,
)
_NOT_ACTIVATION = re.compile(r"(softmax|softmin|glu$|dropout|identity)", re.IGNORECASE)


def looks_like_activation(module: nn.Module) -> bool:
    """The documented rule for activation modules the registry does not know.

    A leaf module (no children) whose class name contains an activation word (relu, gelu, silu,
    swish, mish, elu, sigmoid, tanh, softplus, softsign, hardswish, activation, or ends in "Act",
    "LU" or "Plus", case-insensitive)
    and is not softmax/softmin/GLU/dropout/identity. It becomes a site only if, when called, it maps
    one floating tensor to a tensor of the same shape (checked at the first call).
    """
    if any(True for _ in module.children()):
        return False
    name = type(module).__name__
    return bool(_ACTIVATION_NAME.search(name)) and not _NOT_ACTIVATION.search(name)


def _attrs(*names: str) -> Callable[[nn.Module], dict[str, Any]]:
    def read(module: nn.Module) -> dict[str, Any]:
        return {n: getattr(module, n) for n in names}

    return read


def _fn(func: Any, *params: str, inplace: bool = False) -> FunctionBinding:
    return FunctionBinding(func, tuple(params), inplace)


def _bernstein_types() -> tuple[type[nn.Module], ...]:
    try:
        from neurodiag.activations.bernstein import Bernstein
    except ImportError:  # pragma: no cover - the module ships with the package
        return ()
    return (Bernstein,)


def _bernstein_derivative(z: Tensor | None, a: Tensor | None, module: nn.Module) -> Tensor:
    """The layer's own σ' when its forward is Bernstein's; autograd of a redefined forward
    otherwise, so min |σ'| is always the slope of what forward computes."""
    assert z is not None
    from neurodiag.activations.bernstein import Bernstein

    if type(module).forward is Bernstein.forward:
        return module.derivative(z)  # type: ignore[operator, no-any-return]
    with torch.enable_grad():
        leaf = z.detach().requires_grad_(True)
        out = module.forward(leaf)  # no hooks: this is the measurement, not a call
        (grad,) = torch.autograd.grad(out, leaf, torch.ones_like(out))
    return grad.detach()


def _bernstein_delta_bar(module: nn.Module) -> float:
    return float(module.delta_bar)  # type: ignore[arg-type]


def _gelu_variant(params: Mapping[str, Any]) -> str:
    return "gelu_tanh" if params.get("approximate") == "tanh" else "gelu"


def _default_registry() -> ActivationRegistry:
    T = torch.Tensor
    reg = ActivationRegistry()
    kinds = [
        ActivationKind(
            "relu",
            d.relu,
            from_output=True,
            module_types=(nn.ReLU,),
            functions=(
                _fn(F.relu, "inplace"),
                _fn(torch.relu),
                _fn(T.relu),
                _fn(torch.relu_, inplace=True),
                _fn(T.relu_, inplace=True),
            ),
            step=True,
        ),
        ActivationKind(
            "relu6",
            lambda z, a: d.hardtanh(z, a, 0.0, 6.0),
            from_output=True,
            module_types=(nn.ReLU6,),
            functions=(_fn(F.relu6, "inplace"),),
        ),
        ActivationKind(
            "hardtanh",
            d.hardtanh,
            from_output=True,
            module_types=(nn.Hardtanh,),
            module_params=_attrs("min_val", "max_val"),
            functions=(
                _fn(F.hardtanh, "min_val", "max_val", "inplace"),
                _fn(F.hardtanh_, "min_val", "max_val", inplace=True),
            ),
            derivative_params=("min_val", "max_val"),
        ),
        ActivationKind(
            "leaky_relu",
            d.leaky_relu,
            from_output=True,
            needs_input=lambda params: float(params.get("negative_slope", 0.01)) < 0,
            module_types=(nn.LeakyReLU,),
            module_params=_attrs("negative_slope"),
            functions=(
                _fn(F.leaky_relu, "negative_slope", "inplace"),
                _fn(F.leaky_relu_, "negative_slope", inplace=True),
            ),
            derivative_params=("negative_slope",),
        ),
        ActivationKind(
            "elu",
            d.elu,
            from_output=True,
            module_types=(nn.ELU,),
            module_params=_attrs("alpha"),
            functions=(_fn(F.elu, "alpha", "inplace"), _fn(F.elu_, "alpha", inplace=True)),
            derivative_params=("alpha",),
        ),
        ActivationKind(
            "selu",
            d.selu,
            from_output=True,
            module_types=(nn.SELU,),
            functions=(
                _fn(F.selu, "inplace"),
                _fn(torch.selu),
                _fn(torch.selu_, inplace=True),
            ),
        ),
        ActivationKind(
            "celu",
            d.celu,
            from_output=True,
            module_types=(nn.CELU,),
            module_params=_attrs("alpha"),
            functions=(_fn(F.celu, "alpha", "inplace"),),
            derivative_params=("alpha",),
        ),
        ActivationKind(
            "gelu",
            d.gelu,
            module_types=(nn.GELU,),
            module_params=_attrs("approximate"),
            functions=(_fn(F.gelu, "approximate"),),
            derivative_params=("approximate",),
            variant=_gelu_variant,
        ),
        ActivationKind(
            "silu",
            d.silu,
            module_types=(nn.SiLU,),
            functions=(_fn(F.silu, "inplace"),),
        ),
        ActivationKind(
            "sigmoid",
            d.sigmoid,
            from_output=True,
            module_types=(nn.Sigmoid,),
            functions=(
                _fn(torch.sigmoid),
                _fn(T.sigmoid),
                _fn(torch.sigmoid_, inplace=True),
                _fn(T.sigmoid_, inplace=True),
            ),
        ),
        ActivationKind(
            "tanh",
            d.tanh,
            from_output=True,
            module_types=(nn.Tanh,),
            functions=(
                _fn(torch.tanh),
                _fn(T.tanh),
                _fn(torch.tanh_, inplace=True),
                _fn(T.tanh_, inplace=True),
            ),
        ),
        ActivationKind(
            "softplus",
            d.softplus,
            module_types=(nn.Softplus,),
            module_params=_attrs("beta", "threshold"),
            functions=(_fn(F.softplus, "beta", "threshold"),),
            derivative_params=("beta", "threshold"),
        ),
        ActivationKind(
            "mish", d.mish, module_types=(nn.Mish,), functions=(_fn(F.mish, "inplace"),)
        ),
        ActivationKind(
            "hardswish",
            d.hardswish,
            module_types=(nn.Hardswish,),
            functions=(_fn(F.hardswish, "inplace"),),
        ),
        ActivationKind(
            "hardsigmoid",
            d.hardsigmoid,
            module_types=(nn.Hardsigmoid,),
            functions=(_fn(F.hardsigmoid, "inplace"),),
        ),
        ActivationKind(
            "logsigmoid",
            d.logsigmoid,
            module_types=(nn.LogSigmoid,),
            functions=(_fn(F.logsigmoid),),
        ),
        ActivationKind(
            "softsign", d.softsign, module_types=(nn.Softsign,), functions=(_fn(F.softsign),)
        ),
        ActivationKind(
            "tanhshrink",
            d.tanhshrink,
            module_types=(nn.Tanhshrink,),
            functions=(_fn(F.tanhshrink),),
        ),
        ActivationKind(
            "threshold",
            d.threshold,
            module_types=(nn.Threshold,),
            module_params=_attrs("threshold"),
            functions=(_fn(F.threshold, "threshold", "value", "inplace"),),
            derivative_params=("threshold",),
        ),
        ActivationKind(
            "prelu",
            d.prelu,
            module_types=(nn.PReLU,),
            module_params=lambda m: {"weight": m.get_parameter("weight").detach()},
            functions=(_fn(F.prelu, "weight"), _fn(torch.prelu, "weight")),
            derivative_params=("weight",),
        ),
        ActivationKind(
            "nrelu",
            d.nrelu,
            module_types=(NReLU,),
        ),
        ActivationKind(
            "golu",
            d.golu,
            module_types=(GoLU,),
        ),
        ActivationKind(
            "bernstein",
            _bernstein_derivative,
            module_types=_bernstein_types(),
            module_params=lambda m: {"module": m},
            delta_bar=_bernstein_delta_bar,
        ),
    ]
    for kind in kinds:
        reg.register(kind)
    return reg


#: The registry every scan uses unless given another one.
REGISTRY = _default_registry()
