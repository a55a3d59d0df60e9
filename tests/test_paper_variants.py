"""The paper's variants as specs: ``:bn`` (SELU_BN, the Bernstein layer) and ``:res`` (ReLU_res)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import neurodiag
from neurodiag.activations.bernstein import Bernstein
from neurodiag.activations.normalized import FeatureBatchNorm, NormalizedActivation
from neurodiag.activations.residual import Residual, add_residuals
from neurodiag.activations.specs import parse_spec
from neurodiag.errors import NeurodiagError
from neurodiag.swap import swap_with_report


def _mlp(depth: int = 4, width: int = 8) -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(5, width), nn.ReLU()]
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, 3))


@pytest.mark.parametrize(
    ("text", "name", "residual"),
    [
        ("selu:bn", "selu:bn", False),
        ("relu:res", "relu:res", True),
        ("bern9:res:bn", "bern9:bn:res", True),
        ("BERN9:delta=0.05:bn", "bern9:delta=0.05:bn", False),
        ("lrelu0.005", "lrelu0.005", False),
    ],
)
def test_modifiers_parse_to_canonical_names(text: str, name: str, residual: bool) -> None:
    spec = parse_spec(text)
    assert (spec.name, spec.residual) == (name, residual)


def test_modifier_errors_are_one_line() -> None:
    with pytest.raises(NeurodiagError, match="given twice"):
        parse_spec("selu:bn:bn")
    with pytest.raises(NeurodiagError, match="malformed option 'norm'"):
        parse_spec("selu:norm")
    with pytest.raises(NeurodiagError, match="needs each site's width"):
        parse_spec("selu:bn").build(None, 1)


@pytest.mark.parametrize(
    ("shape", "feature_dim"), [((6, 4), 1), ((6, 3, 4), 2), ((6, 4, 3, 2), 1), ((6, 3, 2, 4), 3)]
)
def test_feature_batch_norm_normalises_each_neuron_over_batch_and_positions(
    shape: tuple[int, ...], feature_dim: int
) -> None:
    norm = FeatureBatchNorm(4, feature_dim).train()
    x = torch.randn(*shape, dtype=torch.float64) * 3 + 2
    norm.double()
    y = norm(x)
    dims = tuple(d for d in range(len(shape)) if d != feature_dim)
    mean, var = x.mean(dims, keepdim=True), x.var(dims, unbiased=False, keepdim=True)
    assert torch.allclose(y, (x - mean) / torch.sqrt(var + 1e-5), atol=1e-10)


def test_normalized_bernstein_keeps_the_bound_and_is_the_site() -> None:
    spec = parse_spec("bern9:bn")
    model = _mlp()
    batch = (torch.randn(16, 5), torch.randint(0, 3, (16,)))
    result = swap_with_report(model, spec, example_batch=batch, init="critical")
    wrappers = [m for m in result.model.modules() if isinstance(m, NormalizedActivation)]
    assert len(wrappers) == 4 and all(isinstance(w.activation, Bernstein) for w in wrappers)
    report = neurodiag.scan(result.model, [batch], mode="train")
    assert len(report.rows) == 4  # the Bernstein inside each wrapper, not the wrapper
    assert all(row["neurons"] == 8 and row["bound_ok"] is True for row in report.rows)
    assert all(row["delta_bar"] == pytest.approx(0.009) for row in report.rows)


def test_residual_blocks_add_the_input_where_the_shape_is_kept() -> None:
    model = _mlp(depth=4)
    x = torch.randn(7, 5)
    layers = [m for m in model if isinstance(m, nn.Linear)]
    assert add_residuals(model) == 3  # the 5->8 input layer and the 8->3 head are left alone
    blocks = [m for m in model if isinstance(m, Residual)]
    assert len(blocks) == 3 and len(model) == 2 + 3 + 1
    h = torch.relu(layers[0](x))
    assert torch.allclose(model(x), layers[4](h))  # SkipInit: α = 0, every block the identity
    alphas = (0.5, -0.25, 2.0)
    with torch.no_grad():
        for block, alpha in zip(blocks, alphas):
            block.alpha.fill_(alpha)
    for layer, alpha in zip(layers[1:4], alphas):
        h = h + alpha * torch.relu(layer(h))
    assert torch.allclose(model(x), layers[4](h), atol=1e-6)


def test_residual_convs_need_same_shape_and_other_containers_are_left_alone() -> None:
    convs = nn.Sequential(
        nn.Conv2d(3, 3, 3, padding=1), nn.ReLU(),  # same shape: wrapped
        nn.Conv2d(3, 3, 3, padding=1, stride=2), nn.ReLU(),  # stride 2: not
        nn.Conv2d(3, 4, 1), nn.ReLU(),  # 3 -> 4 channels: not
    )  # fmt: skip
    assert add_residuals(convs) == 1 and isinstance(convs[0], Residual)

    class Plain(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)
            self.act = nn.ReLU()

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.act(self.fc(x))

    assert add_residuals(Plain()) == 0


def test_relu_res_swap_on_the_papers_mlp_wraps_49_blocks_and_says_so() -> None:
    from sample_models.plain_mlp import build_model

    model = build_model()
    batch = (torch.randn(4, 64), torch.randint(0, 10, (4,)))
    result = swap_with_report(model, "relu:res", example_batch=batch)
    assert sum(isinstance(m, Residual) for m in result.model.modules()) == 49
    assert any("49 shape-preserving" in note for note in result.notes)
    assert not any(isinstance(m, Residual) for m in model.modules())  # the original untouched
    assert len(neurodiag.scan(result.model, [batch]).rows) == 50


def test_auto_range_behind_the_norm_is_three_std_of_a_unit_variance_input() -> None:
    """The paper's 'default range' (no [l, u] given) is range=auto: ±3 std of the activation's
    input; behind ':bn' that input has unit variance, so [-3, 3] at every site, no calibration."""
    spec = parse_spec("bern9:range=auto:bn")
    assert (spec.name, spec.auto_range) == ("bern9:range=auto:bn", False)
    module = spec.build(8, 1)
    assert isinstance(module, NormalizedActivation)
    bern = module.activation
    assert isinstance(bern, Bernstein)
    assert (bern.lower, bern.upper) == (-3.0, 3.0)
    assert bern.delta_bar == pytest.approx(9 * 0.01 / 6)
