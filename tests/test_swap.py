"""swap_activations: a deep copy with every site replaced; the original never changes."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from typing import Any

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from neurodiag import scan
from neurodiag.activations.bernstein import Bernstein
from neurodiag.errors import NeurodiagError
from neurodiag.swap import SWAP_ATTRIBUTE, swap_activations, swap_with_report


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """Tiny tensors: one intra-op thread avoids spin-waits when the 2 cores are busy (10x)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


class MLP(nn.Module):
    """Two module sites of different widths (16, 12)."""

    def __init__(self, act: type[nn.Module] = nn.ReLU) -> None:
        super().__init__()
        self.fc1 = nn.Linear(6, 16)
        self.act1 = act()
        self.fc2 = nn.Linear(16, 12)
        self.act2 = act()
        self.head = nn.Linear(12, 3)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.head(self.act2(self.fc2(self.act1(self.fc1(x)))))
        return out


class CNN(nn.Module):
    """Channel-first conv tensors: neurons are channels (6, then 4), in-place ReLU first."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 3, padding=1)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(6, 4, 3, padding=1)
        self.act2 = nn.GELU()
        self.head = nn.Linear(4, 2)

    def forward(self, x: Tensor) -> Tensor:
        h = self.act2(self.conv2(self.act1(self.conv1(x))))
        out: Tensor = self.head(h.mean(dim=(2, 3)))
        return out


class Sequence(nn.Module):
    """(N, T, F) tensors: the neuron dim is the last one."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(5, 7)
        self.act = nn.SiLU()
        self.head = nn.Linear(7, 2)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.head(self.act(self.fc(x)).mean(dim=1))
        return out


class Functional(nn.Module):
    """Functional sites: F.relu, torch.tanh (in a child), x.relu_() (in place), F.gelu."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.block = Block()
        self.fc3 = nn.Linear(8, 8)
        self.head = nn.Linear(8, 3)

    def forward(self, x: Tensor) -> Tensor:
        h = self.block(F.relu(self.fc1(x)))
        h = self.fc3(h).relu_()
        out: Tensor = self.head(F.gelu(h))
        return out


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(8, 8)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = torch.tanh(self.fc(x))
        return out


class Reused(nn.Module):
    """One nn.ReLU applied to widths 10 and 6: per-neuron coefficients cannot fit both."""

    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 10)
        self.fc2 = nn.Linear(10, 6)
        self.act = nn.ReLU()
        self.head = nn.Linear(6, 2)

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.head(self.act(self.fc2(self.act(self.fc1(x)))))
        return out


def _snapshot(model: nn.Module) -> dict[str, Any]:
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "grads": {
            n: None if p.grad is None else p.grad.clone() for n, p in model.named_parameters()
        },
        "training": {n: m.training for n, m in model.named_modules()},
        "hooks": {
            n: (dict(m._forward_hooks), dict(m._forward_pre_hooks), dict(m._backward_hooks))
            for n, m in model.named_modules()
        },
        "modules": {n: type(m) for n, m in model.named_modules()},
    }


def _assert_same(before: dict[str, Any], after: dict[str, Any]) -> None:
    assert before["state"].keys() == after["state"].keys()
    for key, value in before["state"].items():
        assert torch.equal(value, after["state"][key]), key
    for name, grad in before["grads"].items():
        other = after["grads"][name]
        assert (grad is None) == (other is None) and (grad is None or torch.equal(grad, other))
    assert before["training"] == after["training"]
    assert before["hooks"] == after["hooks"]
    assert before["modules"] == after["modules"]


@pytest.mark.parametrize("spec", ["bern9", "gelu", "bern9:range=auto"])
def test_original_is_bit_identical_after_swap(spec: str) -> None:
    torch.manual_seed(0)
    model = CNN()
    x = torch.randn(2, 3, 5, 5)
    model(x).sum().backward()  # grads present
    model.act2.eval()  # a mixed training flag must survive
    model.register_forward_hook(lambda m, a, o: None)
    model.act1.register_forward_pre_hook(lambda m, a: None)
    before = _snapshot(model)
    rng = torch.get_rng_state()
    swapped = swap_activations(model, spec, example_batch=x)
    assert swapped is not model
    _assert_same(before, _snapshot(model))
    assert torch.equal(rng, torch.get_rng_state())
    assert not hasattr(model, SWAP_ATTRIBUTE)


@pytest.mark.parametrize(
    ("make", "batch", "widths", "feature_dims"),
    [
        (MLP, torch.randn(8, 6), {"act1": 16, "act2": 12}, {"act1": 1, "act2": 1}),
        (CNN, torch.randn(2, 3, 5, 5), {"act1": 6, "act2": 4}, {"act1": 1, "act2": 1}),
        (Sequence, torch.randn(3, 4, 5), {"act": 7}, {"act": 2}),
    ],
    ids=["mlp", "cnn", "sequence"],
)
def test_every_module_site_gets_a_bernstein_of_its_width(
    make: type[nn.Module], batch: Tensor, widths: dict[str, int], feature_dims: dict[str, int]
) -> None:
    torch.manual_seed(0)
    model = make()
    swapped = swap_activations(model, "bern9", example_batch=batch)
    found = {n: m for n, m in swapped.named_modules() if isinstance(m, Bernstein)}
    assert {n: m.num_features for n, m in found.items()} == widths
    assert {n: m.feature_dim for n, m in found.items()} == feature_dims
    assert not any(
        isinstance(m, (nn.ReLU, nn.GELU, nn.SiLU)) for m in swapped.modules()
    )  # every site replaced
    swapped(batch)  # the widths fit a real forward


def test_scan_of_swapped_model_reports_bernstein_sites_within_the_bound() -> None:
    torch.manual_seed(0)
    model = MLP()
    with torch.no_grad():
        model.fc1.bias[:8] = -50.0  # dead for ReLU
    x = torch.randn(32, 6)
    assert scan(model, [x]).rows[0]["dead_pct"] >= 50.0
    frame = scan(swap_activations(model, "bern9", example_batch=x), [x]).to_frame()
    assert list(frame["activation"]) == ["bernstein", "bernstein"]
    assert list(frame["delta_bar"]) == pytest.approx([9 * 0.01 / 10] * 2)
    assert list(frame["bound_ok"]) == [True, True]
    assert all(frame["min_abs_deriv"].to_numpy() >= frame["delta_bar"].to_numpy())
    assert (frame["dead_pct"] == 0).all()


@pytest.mark.parametrize(("act", "fit_error"), [(nn.ReLU, 0.36), (nn.Tanh, 0.27)])
def test_swapped_bernstein_starts_close_to_the_old_activation(
    act: type[nn.Module], fit_error: float
) -> None:
    """Tolerance: init_from is the monotone least-squares degree-9 fit on [-5, 5], whose sup
    error is 0.35 for ReLU (the kink) and 0.26 for tanh (measured on a 10^4-point grid; the
    default ReLU-shaped init is 3.9 away from tanh). With one activation layer the output error
    is W2 (σ_bern(z) − σ(z)), so |Δ_i| ≤ Σ_j |W2_ij| · sup-error, for z inside [l, u]."""
    torch.manual_seed(0)
    first, last = nn.Linear(4, 32), nn.Linear(32, 3)
    model = nn.Sequential(first, act(), last).double()
    x = torch.rand(256, 4, dtype=torch.float64) - 0.5  # |z| <= 0.5·Σ|w| + |b| < 5
    z = first(x)
    assert z.abs().max() < 5
    swapped = swap_activations(model, "bern9", example_batch=x)
    bern = swapped.get_submodule("1")
    assert isinstance(bern, Bernstein)
    grid = torch.linspace(-5, 5, 10001, dtype=torch.float64).unsqueeze(1).expand(-1, 32)
    with torch.no_grad():
        sup = (bern(grid) - act()(grid)).abs().max()
        assert sup <= fit_error
        bound = last.weight.abs().sum(dim=1).max() * fit_error
        assert (swapped(x) - model(x)).abs().max() <= bound


def test_functional_sites_are_swapped_except_in_place_ones() -> None:
    torch.manual_seed(0)
    model = Functional()
    x = torch.randn(16, 4)
    result = swap_with_report(model, "bern9", example_batch=x)
    assert [(s.site, s.kind, s.num_features) for s in result.swapped] == [
        ("<root>:relu#0", "functional", 8),
        ("block:tanh#0", "functional", 8),
        ("<root>:gelu#0", "functional", 8),
    ]
    assert [site for site, _ in result.not_swapped] == ["<root>:relu#1"]
    frame = scan(result.model, [x]).to_frame()
    bern = frame[frame["activation"] == "bernstein"]
    assert list(bern["site"]) == [
        f"{SWAP_ATTRIBUTE}.<root>:relu#0",
        f"{SWAP_ATTRIBUTE}.block:tanh#0",
        f"{SWAP_ATTRIBUTE}.<root>:gelu#0",
    ]
    assert list(frame[frame["activation"] == "relu"]["kind"]) == ["functional"]  # the relu_()
    # the replacements are trained: their coefficients receive gradients
    result.model(x).sum().backward()
    for name, module in result.model.named_modules():
        if isinstance(module, Bernstein):
            assert module.theta.grad is not None and module.theta.grad.abs().sum() > 0, name


def test_functional_swap_survives_deepcopy_and_state_dict() -> None:
    torch.manual_seed(0)
    model = Functional()
    x = torch.randn(16, 4)
    swapped = swap_with_report(model, "bern9", example_batch=x).model
    with torch.no_grad():
        for module in swapped.modules():
            if isinstance(module, Bernstein):
                module.theta.add_(torch.randn_like(module.theta))
    expected = swapped(x)
    assert not torch.allclose(expected, model(x), atol=1e-3)
    assert torch.equal(copy.deepcopy(swapped)(x), expected)
    fresh = swap_with_report(model, "bern9", example_batch=x).model
    fresh.load_state_dict(swapped.state_dict())
    assert torch.equal(fresh(x), expected)


def test_without_example_batch_coefficients_are_shared_and_noted() -> None:
    model = MLP()
    result = swap_with_report(model, "bern9")
    assert [m.num_features for m in result.model.modules() if isinstance(m, Bernstein)] == [
        None,
        None,
    ]
    assert any("shared" in note for note in result.notes)
    assert any("functional" in note for note in result.notes)
    with pytest.raises(NeurodiagError, match="range=auto"):
        swap_with_report(model, "bern9:range=auto")


def test_sites_globs_restrict_the_swap_and_typos_fail() -> None:
    model = MLP()
    x = torch.randn(4, 6)
    swapped = swap_activations(model, "gelu", sites=["act2"], example_batch=x)
    assert isinstance(swapped.act1, nn.ReLU) and isinstance(swapped.act2, nn.GELU)
    with pytest.raises(NeurodiagError, match="'nope' matched no activation site; sites: act1"):
        swap_activations(model, "gelu", sites=["nope"], example_batch=x)
    cnn = swap_activations(CNN(), "bern9", sites=["act2"], example_batch=torch.randn(1, 3, 4, 4))
    assert isinstance(cnn.act1, nn.ReLU) and cnn.act1.inplace  # left exactly as it was


def test_reused_module_with_different_widths_shares_coefficients() -> None:
    model = Reused()
    x = torch.randn(4, 4)
    result = swap_with_report(model, "bern9", example_batch=x)
    assert isinstance(result.model.act, Bernstein) and result.model.act.num_features is None
    assert any("different widths" in note for note in result.notes)
    result.model(x)


def test_swap_warns_about_sites_it_left_alone() -> None:
    with pytest.warns(UserWarning, match=r"<root>:relu#1 not swapped: in-place"):
        swap_activations(Functional(), "gelu", example_batch=torch.randn(2, 4))


def test_a_failing_example_batch_is_a_one_line_error() -> None:
    with pytest.raises(NeurodiagError, match="example batch failed"):
        swap_activations(MLP(), "bern9", example_batch=torch.randn(2, 99))


def _he_relu_mlp(depth: int, width: int) -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = []
    features = width
    for _ in range(depth):
        linear = nn.Linear(features, width)
        nn.init.kaiming_normal_(linear.weight, nonlinearity="relu")
        nn.init.zeros_(linear.bias)
        layers += [linear, nn.ReLU()]
    layers.append(nn.Linear(width, 3))
    return nn.Sequential(*layers)


def _slope_ratios(model: nn.Module, x: Tensor) -> list[float]:
    """Per Bernstein site, E[σ'(z)²] / E[relu'(z)²] on its actual pre-activations z: the
    factor by which the site passes the squared gradient, relative to the ReLU it replaced."""
    ratios: list[float] = []

    def measure(module: nn.Module, args: tuple[Tensor, ...]) -> None:
        z = args[0]
        assert isinstance(module, Bernstein)
        slope = module.derivative(z).double().square().mean()
        ratios.append(float(slope / (z > 0).double().mean()))

    handles = [
        m.register_forward_pre_hook(measure) for m in model.modules() if isinstance(m, Bernstein)
    ]
    with torch.no_grad():
        model(x)
    for handle in handles:
        handle.remove()
    return ratios


def test_critical_init_keeps_every_layer_passing_gradients_like_relu() -> None:
    """A 20-layer He-initialised ReLU MLP: swapped to the ReLU fit, every site passes only
    ~0.6 of the squared gradient (0.6^20 ≈ 4e-5 over the net, the cause of deep MLPs collapsing
    in compare); with init="critical" every site stays within 0.8-1.25 of ReLU (measured
    0.84-1.23 over 50-layer nets and six seeds; the spread is finite-width noise)."""
    model = _he_relu_mlp(20, 32)
    x = torch.randn(64, 32, generator=torch.Generator().manual_seed(1))
    fit = swap_with_report(model, "bern9", example_batch=x).model
    ratios = _slope_ratios(fit, x)
    assert len(ratios) == 20 and sum(ratios) / len(ratios) < 0.7
    critical = swap_with_report(model, "bern9", example_batch=x, init="critical").model
    assert all(0.8 <= r <= 1.25 for r in _slope_ratios(critical, x))


def test_init_option_fit_by_default_critical_on_request() -> None:
    model = MLP()
    x = torch.randn(8, 6)
    fit = swap_with_report(model, "bern9", example_batch=x)
    assert fit.init == "fit"
    critical = swap_with_report(model, "bern9", example_batch=x, init="critical")
    assert critical.init == "critical"
    for name, width in (("act1", 16), ("act2", 12)):
        fitted = fit.model.get_submodule(name)
        started = critical.model.get_submodule(name)
        assert isinstance(fitted, Bernstein) and isinstance(started, Bernstein)
        want_fit = Bernstein(num_features=width).init_from(torch.relu).coefficients
        want_critical = Bernstein(num_features=width).init_critical().coefficients
        torch.testing.assert_close(fitted.coefficients, want_fit)
        torch.testing.assert_close(started.coefficients, want_critical)
    with pytest.warns(UserWarning, match="no example batch"):  # shared coefficients
        blind = swap_activations(model, "bern9", init="critical")
    assert isinstance(blind.act1, Bernstein) and blind.act1.num_features is None
    torch.testing.assert_close(blind.act1.coefficients, Bernstein().init_critical().coefficients)
    gelu = swap_with_report(model, "gelu", example_batch=x, init="critical").model
    assert isinstance(gelu.act1, nn.GELU)  # nothing to initialise
    with pytest.raises(NeurodiagError, match="init must be one of fit, critical"):
        swap_with_report(model, "bern9", init="relu")
