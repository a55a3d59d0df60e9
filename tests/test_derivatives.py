"""Every registered activation's σ' equals autograd of the activation itself, from z and from a.

The kinds come from the registry: a kind registered without an entry in ``FORMS`` fails.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from neurodiag.activations.bernstein import Bernstein
from neurodiag.activations.golu import GoLU
from neurodiag.activations.nrelu import NReLU
from neurodiag.activations.registry import REGISTRY, FunctionBinding, looks_like_activation


class ScaledBernstein(Bernstein):
    """A subclass that redefines forward: its σ' comes from autograd of that forward."""

    def forward(self, x: Tensor) -> Tensor:
        return 2 * super().forward(x)


def _bernstein(degree: int, lower: float, upper: float, features: int | None) -> nn.Module:
    """Random coefficients (seeded), not the ReLU fit: every increment differs."""
    module = Bernstein(degree, lower=lower, upper=upper, num_features=features)
    generator = torch.Generator().manual_seed(degree)
    with torch.no_grad():
        module.theta.copy_(torch.randn(module.theta.shape, generator=generator))
        module.c0.copy_(torch.randn(module.c0.shape, generator=generator))
    return module


@dataclass(frozen=True)
class Form:
    """One parameter setting of an activation kind: its module and the keyword arguments of its
    functional entry points (None: that side is not exercised), with the setting's kinks."""

    label: str
    module: Callable[[], nn.Module] | None = None
    kwargs: Mapping[str, Any] | None = None
    kinks: tuple[float, ...] = ()
    #: PyTorch evaluates some constants in float32 even for float64 tensors (1/6, 1/alpha)
    tol: float = 1e-10
    #: the in-place entry points (relu_, ...) too; PyTorch refuses some (leaky_relu_, slope < 0)
    inplace: bool = True


#: Every registered kind needs an entry: its module and functional forms under representative
#: parameters, so that its σ' is checked against autograd (a new kind without one fails).
FORMS: dict[str, list[Form]] = {
    "relu": [Form("relu", nn.ReLU, {}, (0.0,))],
    "relu6": [Form("relu6", nn.ReLU6, {}, (0.0, 6.0))],
    "hardtanh": [
        Form("default", nn.Hardtanh, {}, (-1.0, 1.0)),
        Form("-0.7,1.3", lambda: nn.Hardtanh(-0.7, 1.3), {"min_val": -0.7, "max_val": 1.3},
             (-0.7, 1.3)),
    ],
    "leaky_relu": [
        Form("default", nn.LeakyReLU, {}, (0.0,)),
        Form("0.2", lambda: nn.LeakyReLU(0.2), {"negative_slope": 0.2}, (0.0,)),
        Form("0", lambda: nn.LeakyReLU(0.0), {"negative_slope": 0.0}, (0.0,)),
        Form("-0.5", lambda: nn.LeakyReLU(-0.5), {"negative_slope": -0.5}, (0.0,), inplace=False),
    ],
    "elu": [
        Form("default", nn.ELU, {}, (0.0,)),
        Form("0.4", lambda: nn.ELU(alpha=0.4), {"alpha": 0.4}, (0.0,)),
    ],
    "selu": [Form("selu", nn.SELU, {}, (0.0,))],
    "celu": [
        Form("2", lambda: nn.CELU(alpha=2.0), {"alpha": 2.0}, (0.0,)),
        Form("0.6", lambda: nn.CELU(alpha=0.6), {"alpha": 0.6}, (0.0,), tol=1e-6),
    ],
    "gelu": [
        Form("erf", nn.GELU, {}),
        Form("tanh", lambda: nn.GELU(approximate="tanh"), {"approximate": "tanh"}),
    ],
    "silu": [Form("silu", nn.SiLU, {})],
    "sigmoid": [Form("sigmoid", nn.Sigmoid, {})],
    "tanh": [Form("tanh", nn.Tanh, {})],
    "softplus": [
        Form("default", nn.Softplus, {}, (20.0,)),
        Form("1.5,3", lambda: nn.Softplus(beta=1.5, threshold=3.0),
             {"beta": 1.5, "threshold": 3.0}, (2.0,)),
    ],
    "mish": [Form("mish", nn.Mish, {})],
    "hardswish": [Form("hardswish", nn.Hardswish, {}, (-3.0, 3.0))],
    "hardsigmoid": [Form("hardsigmoid", nn.Hardsigmoid, {}, (-3.0, 3.0), tol=1e-6)],
    "logsigmoid": [Form("logsigmoid", nn.LogSigmoid, {})],
    "softsign": [Form("softsign", nn.Softsign, {}, (0.0,))],
    "tanhshrink": [Form("tanhshrink", nn.Tanhshrink, {})],
    "threshold": [
        Form("0.3,-1", lambda: nn.Threshold(0.3, -1.0), {"threshold": 0.3, "value": -1.0}, (0.3,))
    ],
    "prelu": [
        Form("4 channels", lambda: nn.PReLU(4, init=0.3),
             {"weight": torch.tensor([0.3, -0.2, 0.0, 1.5], dtype=torch.float64)}, (0.0,)),
        Form("shared", lambda: nn.PReLU(init=-0.4), {"weight": torch.tensor([-0.4]).double()},
             (0.0,)),
    ],
    "nrelu": [Form("eval", lambda: NReLU(0.1).eval(), None, (0.0,)),
              Form("train", lambda: NReLU(0.1).train(), None, (0.0,))],
    "golu": [Form("golu", GoLU, None, (-80.0, 0.0))],
    "bernstein": [
        Form("shared 9", lambda: _bernstein(9, -5.0, 5.0, None), None, (-5.0, 5.0), tol=1e-9),
        Form("per-neuron 5", lambda: _bernstein(5, -2.0, 3.0, 4), None, (-2.0, 3.0), tol=1e-9),
        Form("per-neuron 20", lambda: _bernstein(20, -1.0, 1.0, 4), None, (-1.0, 1.0), tol=1e-9),
        Form("subclass", lambda: ScaledBernstein(4, num_features=4), None, (-5.0, 5.0)),
    ],
}  # fmt: skip


def _inputs(kinks: tuple[float, ...]) -> Tensor:
    """(positions, 4 neurons), float64: a grid, each kink and points 1e-6 either side of it,
    far tails, and seeded random values that differ per neuron."""
    points = torch.tensor([*kinks, -100.0, 20.0, 25.0], dtype=torch.float64)
    near = torch.cat([points, points - 1e-6, points + 1e-6])
    grid = torch.cat([torch.linspace(-8, 8, 161, dtype=torch.float64), near])
    noise = torch.randn(64, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    return torch.cat([grid.unsqueeze(1).repeat(1, 4), 4 * noise])


def _cases() -> list[Any]:
    """(kind name, form) for every registered kind; a kind without forms gets one failing case."""
    return [
        pytest.param(name, form, id=f"{name}-{form.label}" if form else f"{name}-MISSING")
        for name in REGISTRY.names()
        for form in FORMS.get(name) or [None]
    ]


def _check(got: Tensor, expected: Tensor, form: Form, what: str) -> None:
    torch.testing.assert_close(
        got, expected, rtol=form.tol, atol=form.tol / 100, msg=lambda m: f"{what}: {m}"
    )


def _positional(binding: FunctionBinding, kwargs: Mapping[str, Any]) -> tuple[Any, ...] | None:
    """The call's parameters in ``binding.params`` order, when they are a prefix of it."""
    names = binding.params[: len(kwargs)]
    return tuple(kwargs[n] for n in names) if set(names) == set(kwargs) else None


@pytest.mark.parametrize(("name", "form"), _cases())
def test_derivative_matches_autograd(name: str, form: Form | None) -> None:
    """σ'(z) of every module and functional form of every registered kind equals autograd's."""
    if form is None:
        pytest.fail(
            f"activation {name!r} is registered but has no entry in FORMS "
            "(tests/test_derivatives.py): add its module/functional forms so its σ' is checked"
        )
    kind = REGISTRY[name]
    z0 = _inputs(form.kinks)
    if form.module is not None:
        module = form.module().double()
        assert REGISTRY.for_module(module) is kind
        z = z0.clone().requires_grad_(True)
        a = module(z)
        (expected,) = torch.autograd.grad(a.sum(), z)
        got = kind.derivative(z0, a.detach(), **kind.module_params(module))
        _check(got, expected, form, f"{type(module).__name__} module")
    for binding in kind.functions if form.kwargs is not None else ():
        if binding.inplace and not form.inplace:
            continue
        kwargs = dict(form.kwargs or {})
        args = _positional(binding, kwargs)
        z = z0.clone().requires_grad_(True)
        x = z.clone() if binding.inplace else z  # in place on a copy: the leaf stays z
        try:  # positionally, so ``binding.params`` is checked too
            if args is None:
                raise TypeError("not a prefix of binding.params")
            a = binding.func(x, *args)
            bound = binding.bind((x, *args), {})
        except TypeError:  # keyword-only parameters (F.gelu's approximate)
            a = binding.func(x, **kwargs)
            bound = binding.bind((x,), kwargs)
        assert REGISTRY.for_function(binding.func) == (kind, binding)
        (expected,) = torch.autograd.grad(a.sum(), z)
        got = kind.derivative(z0, a.detach(), **kind.derivative_kwargs(bound))
        _check(got, expected, form, getattr(binding.func, "__name__", str(binding.func)))


def _from_output_cases() -> list[Any]:
    """The cases of the kinds marked ``from_output``."""
    return [case for case in _cases() if REGISTRY[case.values[0]].from_output]


@pytest.mark.parametrize(("name", "form"), _from_output_cases())
def test_from_output_derivative_matches_autograd(name: str, form: Form | None) -> None:
    """Kinds marked ``from_output`` give σ' from the output alone (in-place sites keep no z)
    wherever ``output_suffices`` says so; where it says no (LeakyReLU with a negative slope),
    the derivative refuses to work from the output alone."""
    assert form is not None and form.module is not None, f"{name}: add a module form to FORMS"
    kind = REGISTRY[name]
    module = form.module().double()
    z = _inputs(form.kinks).requires_grad_(True)
    a = module(z)
    (expected,) = torch.autograd.grad(a.sum(), z)
    params = kind.module_params(module)
    if kind.output_suffices(params):
        _check(kind.derivative(None, a.detach(), **params), expected, form, "from the output")
    else:
        with pytest.raises(AssertionError):
            kind.derivative(None, a.detach(), **params)


def test_inplace_negative_slope_leaky_relu_scans_like_out_of_place() -> None:
    """An in-place LeakyReLU(-0.5) keeps a copy of z (its output has lost z's sign). PyTorch has
    no backward for it, so a full scan says so in one line; a forward-only scan measures it."""
    from neurodiag import scan
    from neurodiag.errors import NeurodiagError

    def model(inplace: bool) -> nn.Module:
        torch.manual_seed(0)
        return nn.Sequential(nn.Linear(6, 8), nn.LeakyReLU(-0.5, inplace=inplace), nn.Linear(8, 2))

    x = torch.randn(32, 6, generator=torch.Generator().manual_seed(1))
    rows = [scan(model(inplace), [x], gradients=False).rows[0] for inplace in (False, True)]
    assert rows[0]["min_abs_deriv"] == pytest.approx(0.5)
    same = {k: v == rows[1][k] or (v != v and rows[1][k] != rows[1][k]) for k, v in rows[0].items()}
    assert all(same.values()), same
    with pytest.raises(NeurodiagError, match="negative slope"):
        scan(model(True), [x])


def test_every_kind_has_its_modules_and_functions_exercised() -> None:
    """A module type or function added to a kind must get a form that builds or calls it."""
    missing = []
    for name in REGISTRY.names():
        kind, forms = REGISTRY[name], FORMS.get(name, [])
        built = [type(form.module()) for form in forms if form.module is not None]
        for module_type in kind.module_types:
            if not any(issubclass(t, module_type) for t in built):
                missing.append(f"{name}: no form builds {module_type.__name__}")
        if kind.functions and not any(form.kwargs is not None for form in forms):
            missing.append(f"{name}: no form calls its functions (give one kwargs)")
    assert not missing, "; ".join(missing) + " (FORMS in tests/test_derivatives.py)"
    assert set(FORMS) <= set(REGISTRY.names()), "FORMS names kinds that are not registered"


def test_positional_arguments_bind_by_name() -> None:
    kind, binding = REGISTRY.for_function(F.leaky_relu)  # type: ignore[misc]
    bound = binding.bind((torch.zeros(1), 0.25, True), {})
    assert bound == {"negative_slope": 0.25, "inplace": True}
    assert kind.derivative_kwargs(bound) == {"negative_slope": 0.25}


def test_inplace_functions_are_marked() -> None:
    for func in (torch.relu_, torch.Tensor.relu_, F.leaky_relu_, F.elu_, torch.Tensor.tanh_):
        hit = REGISTRY.for_function(func)
        assert hit is not None and hit[1].inplace, func


def test_registry_refuses_silent_override_and_lists_names() -> None:
    with pytest.raises(ValueError, match="already registered"):
        REGISTRY.register(REGISTRY["relu"])
    with pytest.raises(KeyError, match=r"known: .*gelu.*relu"):
        REGISTRY["nope"]


class MyFancyActivation(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.sigmoid(x)


class Projection(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x


def test_unknown_activation_rule() -> None:
    assert looks_like_activation(MyFancyActivation())
    assert not looks_like_activation(Projection())
    assert not looks_like_activation(nn.Softmax(dim=-1))
    assert not looks_like_activation(nn.Sequential(nn.ReLU()))  # containers are not sites
