"""recycle(method="shrink_perturb") and Recycler(method="shrink_perturb"): θ ← λθ + σε on every
parameter, ε a fresh draw of the layer's own init from the seed and the layer's name, checked
by hand; λ = 1, σ = 0 is the identity and λ = 0.5, σ = 0 halves every parameter."""

from __future__ import annotations

import copy
import zlib

import pytest
import torch
from torch import nn

import neurodiag
from neurodiag.errors import NeurodiagError
from neurodiag.treat.during_training import WHOLE_NETWORK, Recycler


class _Scaled(nn.Module):
    """A parameter of a module with no reset_parameters: its init is unknown."""

    def __init__(self) -> None:
        super().__init__()
        self.scale = nn.Parameter(torch.tensor(2.0))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.scale


def _model() -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3), _Scaled())
    model(torch.randn(16, 4))  # running statistics that are not the init's
    return model


def test_lambda_one_sigma_zero_is_the_identity() -> None:
    model = _model()
    result = neurodiag.recycle(model, method="shrink_perturb", shrink=1.0, perturb=0.0)
    for key, value in model.state_dict().items():
        assert torch.equal(result.model.state_dict()[key], value), key
    assert result.perturbed == ["0", "1", "3"]
    assert result.untreated == [("4.scale", "_Scaled has no reset_parameters: no known init")]


def test_half_and_no_noise_halves_every_parameter_and_leaves_buffers() -> None:
    model = _model()
    original = copy.deepcopy(model.state_dict())
    result = neurodiag.recycle(model, method="shrink_perturb", shrink=0.5, perturb=0.0)
    assert all(torch.equal(v, original[k]) for k, v in model.state_dict().items())  # a copy
    params = dict(result.model.named_parameters())
    for name, param in model.named_parameters():
        expected = param if name == "4.scale" else param * 0.5
        assert torch.equal(params[name], expected), name
    for name, buffer in model.named_buffers():
        assert torch.equal(result.model.get_buffer(name), buffer), name


def test_the_noise_is_the_layer_s_own_init_drawn_from_the_seed() -> None:
    """By hand: ε of layer "0" is a copy of it re-drawn by reset_parameters from
    crc32("7:0"); of the BatchNorm, its init (weight 1, bias 0). The caller's RNG is kept."""
    model = _model()
    rng = torch.random.get_rng_state()
    result = neurodiag.recycle(model, method="shrink_perturb", shrink=0.8, perturb=0.1, seed=7)
    assert torch.equal(torch.random.get_rng_state(), rng)
    noise = copy.deepcopy(model[0])
    torch.manual_seed(zlib.crc32(b"7:0"))
    noise.reset_parameters()
    new = result.model
    for name in ("weight", "bias"):
        expected = 0.8 * getattr(model[0], name) + 0.1 * getattr(noise, name)
        torch.testing.assert_close(getattr(new[0], name), expected, rtol=0, atol=1e-7)
    torch.testing.assert_close(new[1].weight, 0.8 * model[1].weight + 0.1)
    torch.testing.assert_close(new[1].bias, 0.8 * model[1].bias)
    again = neurodiag.recycle(model, method="shrink_perturb", shrink=0.8, perturb=0.1, seed=7)
    assert torch.equal(again.model[3].weight, new[3].weight)  # reproducible
    other = neurodiag.recycle(model, method="shrink_perturb", shrink=0.8, perturb=0.1, seed=8)
    assert not torch.equal(other.model[3].weight, new[3].weight)


def test_in_place_changes_the_model_itself() -> None:
    model = _model()
    weight = model[3].weight.detach().clone()
    result = neurodiag.recycle(
        model, method="shrink_perturb", shrink=0.5, perturb=0.0, in_place=True
    )
    assert result.model is model
    assert torch.equal(model[3].weight, weight * 0.5)


def test_the_recycler_shrinks_and_perturbs_every_nth_window() -> None:
    model = _model()
    weight = model[0].weight.detach().clone()
    recycler = Recycler(model, method="shrink_perturb", shrink=0.5, perturb=0.0, every_windows=2)
    x = torch.randn(16, 4)
    with neurodiag.Monitor(model, on_window=recycler) as monitor:
        for _ in range(2):
            model(x)
            monitor.end_window()
            if monitor.history[-1].index == 0:
                assert torch.equal(model[0].weight, weight)  # window 0: not yet
    assert torch.equal(model[0].weight, weight * 0.5)  # window 1: halved
    frame = recycler.to_frame()
    assert frame[["window", "site", "recycled"]].values.tolist() == [[1, WHOLE_NETWORK, 0]]


@pytest.mark.parametrize(
    "options",
    [{"shrink": 1.5}, {"shrink": -0.1}, {"perturb": -1.0}, {"perturb": float("inf")}],
)
def test_bad_arguments_are_one_line_errors(options: dict[str, float]) -> None:
    model = _model()
    for call in (
        lambda: neurodiag.recycle(model, method="shrink_perturb", **options),
        lambda: Recycler(method="shrink_perturb", **options),
    ):
        with pytest.raises(NeurodiagError) as caught:
            call()
        assert "\n" not in str(caught.value)


def test_the_unit_methods_still_need_a_report() -> None:
    with pytest.raises(NeurodiagError, match="needs the scan's report"):
        neurodiag.recycle(_model(), None, torch.randn(2, 4))
