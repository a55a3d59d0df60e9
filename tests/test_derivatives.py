"""Every registry derivative equals autograd of the activation itself, from z and from a."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from neurodiag.activations.registry import REGISTRY, looks_like_activation

MODULES = [
    nn.ReLU(),
    nn.ReLU6(),
    nn.Hardtanh(-0.7, 1.3),
    nn.LeakyReLU(0.2),
    nn.ELU(alpha=0.5),
    nn.SELU(),
    nn.CELU(alpha=2.0),
    nn.GELU(),
    nn.GELU(approximate="tanh"),
    nn.SiLU(),
    nn.Sigmoid(),
    nn.Tanh(),
    nn.Softplus(beta=1.5, threshold=3.0),
    nn.Mish(),
    nn.Hardswish(),
    nn.Hardsigmoid(),
    nn.LogSigmoid(),
    nn.Softsign(),
    nn.Tanhshrink(),
    nn.Threshold(0.3, -1.0),
    nn.PReLU(4, init=0.3),
]

# values on both sides of every kink, plus the kinks themselves
# PyTorch evaluates these constants in float32 even for float64 tensors (1/6, 1/alpha)
LOOSE = {"Hardsigmoid": 1e-6, "celu": 1e-6}

Z = (
    torch.cat(
        [
            torch.linspace(-8, 8, 161, dtype=torch.float64),
            torch.tensor([-3.0, 0.0, 3.0, 6.0, -0.7, 1.3, 0.3, 20.0, 25.0], dtype=torch.float64),
        ]
    )
    .reshape(-1, 1)
    .repeat(1, 4)
)  # (positions, 4 neurons) so PReLU has per-channel weights


@pytest.mark.parametrize(
    "module", MODULES, ids=lambda m: type(m).__name__ + str(getattr(m, "approximate", ""))
)
def test_registry_derivative_matches_autograd(module: nn.Module) -> None:
    module = module.double()
    kind = REGISTRY.for_module(module)
    assert kind is not None
    z = Z.clone().requires_grad_(True)
    a = module(z)
    (expected,) = torch.autograd.grad(a.sum(), z)
    params = kind.module_params(module)
    got = kind.derivative(z.detach(), a.detach(), **params)
    tol = LOOSE.get(type(module).__name__, 1e-10)
    torch.testing.assert_close(got, expected, rtol=tol, atol=tol / 100)
    if kind.from_output:  # the in-place path: only the output is left
        got_from_a = kind.derivative(None, a.detach(), **params)
        torch.testing.assert_close(got_from_a, expected, rtol=1e-9, atol=1e-12)


FUNCTIONS = [
    (F.relu, {}),
    (torch.relu, {}),
    (torch.Tensor.relu, {}),
    (F.leaky_relu, {"negative_slope": 0.3}),
    (F.elu, {"alpha": 0.4}),
    (F.gelu, {"approximate": "tanh"}),
    (F.softplus, {"beta": 2.0, "threshold": 4.0}),
    (F.hardtanh, {"min_val": -2.0, "max_val": 0.5}),
    (torch.tanh, {}),
    (torch.sigmoid, {}),
    (F.silu, {}),
    (F.mish, {}),
    (F.hardswish, {}),
    (F.relu6, {}),
    (F.selu, {}),
    (F.celu, {"alpha": 0.6}),
    (F.logsigmoid, {}),
]


@pytest.mark.parametrize("func,kwargs", FUNCTIONS, ids=lambda v: getattr(v, "__name__", ""))
def test_functional_binding_and_derivative(func: object, kwargs: dict[str, object]) -> None:
    hit = REGISTRY.for_function(func)
    assert hit is not None
    kind, binding = hit
    z = Z[:, 0].clone().requires_grad_(True)
    a = func(z, **kwargs)  # type: ignore[operator]
    (expected,) = torch.autograd.grad(a.sum(), z)
    bound = binding.bind((z,), kwargs)
    got = kind.derivative(z.detach(), a.detach(), **kind.derivative_kwargs(bound))
    tol = LOOSE.get(getattr(func, "__name__", ""), 1e-10)
    torch.testing.assert_close(got, expected, rtol=tol, atol=tol / 100)


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
