"""Activation spec strings: every form builds, options parse, typos fail with the valid list."""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn

from neurodiag.activations.bernstein import Bernstein
from neurodiag.activations.golu import GoLU
from neurodiag.activations.nrelu import NReLU
from neurodiag.activations.registry import REGISTRY
from neurodiag.activations.specs import (
    SpecRegistry,
    parse_spec,
    register_spec,
    valid_forms,
)
from neurodiag.errors import NeurodiagError

BUILT = {
    "relu": nn.ReLU,
    "lrelu0.01": nn.LeakyReLU,
    "lrelu0.005": nn.LeakyReLU,
    "lrelu0.05": nn.LeakyReLU,
    "gelu": nn.GELU,
    "selu": nn.SELU,
    "elu": nn.ELU,
    "silu": nn.SiLU,
    "tanh": nn.Tanh,
    "sigmoid": nn.Sigmoid,
    "nrelu0.1": NReLU,
    "golu": GoLU,
    "bern9": Bernstein,
    "bern15": Bernstein,
    "bern3:delta=0.1:range=-2,2": Bernstein,
}


@pytest.mark.parametrize("text", list(BUILT))
def test_every_spec_builds_an_elementwise_module(text: str) -> None:
    spec = parse_spec(text)
    module = spec.build(5, 1)
    assert isinstance(module, BUILT[text])
    x = torch.randn(4, 5)
    assert module(x).shape == x.shape
    assert parse_spec(spec.name).name == spec.name  # canonical names parse to themselves


def test_every_built_module_is_a_registered_site_kind() -> None:
    for text in BUILT:
        assert REGISTRY.for_module(parse_spec(text).build(3, 1)) is not None, text


@pytest.mark.parametrize(
    ("text", "slope", "name"),
    [
        ("lrelu0.01", 0.01, "lrelu0.01"),
        ("lrelu0.005", 0.005, "lrelu0.005"),
        ("LReLU1e-2", 0.01, "lrelu0.01"),
    ],
)
def test_leaky_relu_slope_is_parsed(text: str, slope: float, name: str) -> None:
    spec = parse_spec(text)
    module = spec.build()
    assert isinstance(module, nn.LeakyReLU)
    assert module.negative_slope == slope
    assert spec.name == name


@given(st.floats(min_value=0.0, max_value=10.0, allow_nan=False))
def test_leaky_relu_canonical_name_round_trips(slope: float) -> None:
    spec = parse_spec(f"lrelu{slope!r}")
    again = parse_spec(spec.name)
    assert again.name == spec.name
    module = again.build()
    assert isinstance(module, nn.LeakyReLU) and module.negative_slope == slope


def test_bernstein_options_are_parsed() -> None:
    spec = parse_spec("bern15:delta=0.02:range=-3,4")
    module = spec.build(7, 1)
    assert isinstance(module, Bernstein)
    assert (module.degree, module.delta, module.lower, module.upper) == (15, 0.02, -3.0, 4.0)
    assert module.num_features == 7
    assert module.delta_bar == pytest.approx(15 * 0.02 / 7)
    assert spec.name == "bern15:delta=0.02:range=-3,4"
    assert spec.per_neuron and not spec.auto_range


def test_bernstein_defaults_follow_the_paper_and_print_short() -> None:
    spec = parse_spec("bern9:delta=0.01:range=-5,5")
    module = spec.build(None, 1)
    assert isinstance(module, Bernstein)
    assert spec.name == "bern9"
    assert (module.delta, module.lower, module.upper, module.num_features) == (0.01, -5, 5, None)


def test_bernstein_auto_range_needs_bounds() -> None:
    spec = parse_spec("bern9:range=auto")
    assert spec.auto_range and spec.name == "bern9:range=auto"
    with pytest.raises(NeurodiagError, match="range=auto"):
        spec.build(4, 1)
    module = spec.build(4, 1, bounds=(-1.5, 2.5))
    assert isinstance(module, Bernstein)
    assert (module.lower, module.upper) == (-1.5, 2.5)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("relu7", "unknown activation 'relu7'; valid: relu, "),
        ("lrelu", "unknown activation"),
        ("swish", "unknown activation"),
        ("", "unknown activation"),
        ("bern", "unknown activation"),
        ("bern9.5", "integer"),
        ("bern0", "integer"),
        ("bern9:delta", "key=value"),
        ("bern9:delta=abc", "not a number"),
        ("bern9:delta=-1", "> 0"),
        ("bern9:delta=inf", "finite"),
        ("bern9:range=5,-5", "L < U"),
        ("bern9:range=1,2,3", "L,U"),
        ("bern9:size=3", "unknown option 'size'"),
        ("bern9:delta=0.1:delta=0.2", "twice"),
        ("relu:delta=0.1", "takes no options"),
        ("lrelu0.1:delta=0.1", "takes no options"),
    ],
)
def test_malformed_specs_fail_with_one_line(text: str, message: str) -> None:
    with pytest.raises(NeurodiagError, match=message) as info:
        parse_spec(text)
    assert "\n" not in str(info.value)


def test_unknown_spec_lists_every_form() -> None:
    with pytest.raises(NeurodiagError) as info:
        parse_spec("relu7")
    for form in ("relu", "gelu", "golu", "lrelu<slope>", "nrelu<sigma>", "bern<degree>"):
        assert form in str(info.value)
    assert "bern<degree>[:delta=D][:range=L,U|auto]" in valid_forms()


def test_registry_refuses_silent_override() -> None:
    with pytest.raises(ValueError, match="already registered"):
        register_spec("relu", lambda n, d: nn.Tanh())
    assert isinstance(parse_spec("relu").build(), nn.ReLU)  # unchanged
    with pytest.raises(ValueError, match="already registered"):
        register_spec("bern", lambda n, d: nn.Tanh())  # a family prefix is taken too
    registry = SpecRegistry()
    registry.register("mine", lambda n, d: nn.Softsign())
    with pytest.raises(ValueError, match="already registered"):
        registry.register("mine", lambda n, d: nn.Tanh())
    registry.register("mine", lambda n, d: nn.Tanh(), overwrite=True)
    assert isinstance(registry.parse("mine").build(), nn.Tanh)


def test_nrelu_is_relu_in_eval_and_noisy_zero_mean_in_training() -> None:
    module = NReLU(0.1)
    x = torch.cat([torch.full((20000,), -2.0), torch.linspace(0.1, 3, 100)])
    module.eval()
    assert torch.equal(module(x), torch.relu(x))
    module.train()
    torch.manual_seed(0)
    y = module(x)
    noise = y[:20000]
    assert torch.equal(y[20000:], x[20000:])  # positive inputs pass unchanged
    assert abs(float(noise.mean())) < 0.005
    assert float(noise.std()) == pytest.approx(0.1, rel=0.05)


@pytest.mark.parametrize("module", [NReLU(0.2), GoLU()], ids=["nrelu", "golu"])
def test_new_activation_derivatives_match_autograd(module: nn.Module) -> None:
    module.train()
    z = torch.cat(
        [torch.linspace(-120, 40, 1601, dtype=torch.float64), torch.tensor([0.0, -1e-9, 1e-9])]
    ).requires_grad_(True)
    a = module(z)
    (expected,) = torch.autograd.grad(a.sum(), z)
    kind = REGISTRY.for_module(module)
    assert kind is not None
    got = kind.derivative(z.detach(), a.detach())
    assert torch.isfinite(expected).all() and torch.isfinite(got).all()
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-14)


def test_golu_values() -> None:
    x = torch.tensor([-1000.0, -1.0, 0.0, 1.0, 50.0], dtype=torch.float64)
    expected = [x_ * math.exp(-math.exp(-x_)) if x_ > -700 else 0.0 for x_ in x.tolist()]
    torch.testing.assert_close(GoLU()(x), torch.tensor(expected, dtype=torch.float64))
