"""Per-variant weight init (``selu:init=lecun``) and the SkipInit residual branch of ``:res``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from neurodiag.activations.residual import Residual, add_residuals
from neurodiag.activations.specs import WEIGHT_INITS, parse_spec
from neurodiag.compare import compare
from neurodiag.compare.training import INITS, initialise
from neurodiag.compare.variants import BASELINE, build_variants, parse_specs
from neurodiag.errors import NeurodiagError
from neurodiag.swap import swap_with_report


def _he_mlp(depth: int, width: int = 64, features: int = 16) -> nn.Sequential:
    torch.manual_seed(0)
    layers: list[nn.Module] = [nn.Linear(features, width), nn.ReLU()]
    for _ in range(depth - 1):
        layers += [nn.Linear(width, width), nn.ReLU()]
    model = nn.Sequential(*layers, nn.Linear(width, 4))
    for module in model.modules():
        if isinstance(module, nn.Linear):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
            nn.init.zeros_(module.bias)
    return model


# -- :res: x + α·σ(Wx + b), α learnable and 0 at init (SkipInit) -----------------------------------
def test_residual_forward_is_x_plus_alpha_times_the_branch() -> None:
    torch.manual_seed(1)
    layer = nn.Linear(6, 6)
    block = Residual(layer, nn.ReLU())
    assert isinstance(block.alpha, nn.Parameter) and float(block.alpha.detach()) == 0.0  # SkipInit
    x = torch.randn(5, 6)
    assert torch.equal(block(x), x)  # the identity at init
    with torch.no_grad():
        block.alpha.fill_(0.37)
    by_hand = x + 0.37 * torch.relu(x @ layer.weight.T + layer.bias)
    assert torch.allclose(block(x), by_hand, atol=1e-6)
    block(x).sum().backward()
    assert block.alpha.grad is not None and float(block.alpha.grad) != 0.0  # α learns


def test_residual_alpha_follows_the_layers_dtype() -> None:
    block = Residual(nn.Linear(3, 3).double(), nn.ReLU())
    assert block.alpha.dtype == torch.float64


def test_deep_he_relu_res_keeps_the_output_scale_where_the_unscaled_form_explodes() -> None:
    model = _he_mlp(depth=30)
    assert add_residuals(model) == 29
    x = torch.randn(512, 16)
    with torch.no_grad():
        ratio = float(model(x).std() / x.std())
        assert 0.1 < ratio < 10  # finite, input scale
        for block in model.modules():
            if isinstance(block, Residual):
                block.alpha.fill_(1.0)  # the old x + σ(Wx + b)
        old = float(model(x).std() / x.std())
    assert old > 1e4  # ~2x variance per block: the old failure mode


def test_relu_res_variant_says_skipinit_in_its_notes() -> None:
    model = _he_mlp(depth=3, width=8, features=8)
    batch = (torch.randn(8, 8), torch.randint(0, 4, (8,)))
    variants = build_variants(model, parse_specs(["relu:res"]), batch, seed=0)
    assert any("SkipInit" in note for note in variants[1].notes)
    assert not any("SkipInit" in note for note in variants[0].notes)


# -- :init=S ---------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "name", "init", "residual"),
    [
        ("selu:init=lecun:bn", "selu:init=lecun:bn", "lecun", False),
        ("SELU:bn:init=lecun", "selu:init=lecun:bn", "lecun", False),
        ("relu:res:init=he", "relu:init=he:res", "he", True),
        ("bern9:init=xavier:delta=0.05:bn", "bern9:delta=0.05:init=xavier:bn", "xavier", False),
        ("selu", "selu", None, False),
    ],
)
def test_init_modifier_parses_to_a_canonical_name_that_round_trips(
    text: str, name: str, init: str | None, residual: bool
) -> None:
    spec = parse_spec(text)
    assert (spec.name, spec.init, spec.residual) == (name, init, residual)
    again = parse_spec(spec.name)
    assert (again.name, again.init, again.residual) == (name, init, residual)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("selu:init=lecunn", "unknown init 'lecunn' in activation 'selu:init=lecunn'; valid: he, "),
        ("selu:init=model", "unknown init 'model'"),
        ("selu:init=", "unknown init ''"),
        ("selu:init=he:init=lecun", "given twice"),
    ],
)
def test_bad_init_values_are_one_line_errors_listing_the_valid_ones(
    text: str, message: str
) -> None:
    with pytest.raises(NeurodiagError, match=message) as info:
        parse_spec(text)
    assert "\n" not in str(info.value)
    if "unknown" in message:
        assert all(scheme in str(info.value) for scheme in WEIGHT_INITS)


def test_lecun_is_an_init_scheme_of_compare() -> None:
    assert "lecun" in INITS and INITS[0] == "model"
    with pytest.raises(NeurodiagError, match="valid: model, he, lecun"):
        initialise(nn.Linear(2, 2), "lecunn")


def test_lecun_init_draws_n_0_1_over_fan_in_with_zero_biases() -> None:
    model = nn.Sequential(nn.Linear(1000, 500), nn.Conv1d(20, 5000, 5))
    torch.manual_seed(0)
    initialise(model, "lecun")
    for module, fan_in in ((model[0], 1000), (model[1], 20 * 5)):
        weight = module.weight.detach()
        assert float(weight.mean()) == pytest.approx(0.0, abs=0.01 / fan_in**0.5)
        assert float(weight.std()) == pytest.approx(fan_in**-0.5, rel=0.005)
        assert module.bias is not None and bool((module.bias == 0).all())


def test_a_variants_init_is_applied_after_the_swap_seeded_and_only_to_that_variant() -> None:
    model = _he_mlp(depth=4, width=32, features=8)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batch = (torch.randn(16, 8), torch.randint(0, 4, (16,)))
    specs = parse_specs(["selu", "selu:init=lecun:bn"])
    variants = build_variants(model, specs, batch, seed=3)
    baseline, plain, lecun = (v.model.state_dict() for v in variants)
    assert [v.name for v in variants] == [BASELINE, "selu", "selu:init=lecun:bn"]
    assert torch.equal(baseline["0.weight"], before["0.weight"])  # the baseline's init kept
    assert torch.equal(plain["0.weight"], before["0.weight"])  # no init=: the model's weights
    # the same weights --init lecun would give (re-seeded with the comparison's seed)
    expected = _he_mlp(depth=4, width=32, features=8)
    torch.manual_seed(3)
    initialise(expected, "lecun")
    weights = [k for k in lecun if k.endswith("weight") and lecun[k].dim() == 2]
    assert len(weights) == 5
    for key, reference in zip(weights, (p for p in expected.state_dict().values() if p.dim() == 2)):
        assert torch.equal(lecun[key], reference)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())  # untouched
    assert any("init=lecun" in note and "seed 3" in note for note in variants[2].notes)
    again = build_variants(model, specs, batch, seed=3)[2].model.state_dict()
    assert all(torch.equal(again[k], lecun[k]) for k in lecun)  # reproducible


def test_compare_json_says_which_init_a_variant_got() -> None:
    model = _he_mlp(depth=3, width=16, features=8)
    data = [(torch.randn(16, 8), torch.randint(0, 4, (16,))) for _ in range(2)]
    result = compare(model, data, ["selu:init=lecun"], epochs=1, seed=0)
    notes = result.to_dict()["variants"][1]["notes"]
    assert any("init=lecun (LeCun-normal" in note for note in notes)


def test_swap_refuses_init_with_one_line() -> None:
    model = _he_mlp(depth=2, width=8, features=8)
    with pytest.raises(NeurodiagError, match=r"only compare does.*use 'selu:bn'") as info:
        swap_with_report(model, "selu:init=lecun:bn")
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("text", ["relu:bn", "gelu:bn", "lrelu0.01:bn"])
def test_bn_controls_build_a_norm_in_front_of_the_activation(text: str) -> None:
    from neurodiag.activations.normalized import NormalizedActivation

    model = _he_mlp(depth=3, width=8, features=8)
    batch = (torch.randn(16, 8), torch.randint(0, 4, (16,)))
    swapped = build_variants(model, parse_specs([text]), batch, seed=0)[1].model
    wrappers = [m for m in swapped.modules() if isinstance(m, NormalizedActivation)]
    assert len(wrappers) == 3 and all(w.norm.norm.num_features == 8 for w in wrappers)
    x = batch[0]
    layer = swapped[0]
    wrappers[0].train()
    z = layer(x)
    normed = (z - z.mean(0)) / torch.sqrt(z.var(0, unbiased=False) + 1e-5)
    assert torch.allclose(wrappers[0](z), parse_spec(text.split(":")[0]).build()(normed), atol=1e-5)


def test_the_cli_offers_every_init_the_library_takes() -> None:
    import typer

    from neurodiag.cli import app
    from neurodiag.compare.training import INITS

    command = typer.main.get_command(app).commands["compare"]  # type: ignore[attr-defined]
    for init in INITS:
        with command.make_context("compare", ["m.py", "-a", "gelu", "--init", init]) as ctx:
            assert ctx.params["init"] == init
