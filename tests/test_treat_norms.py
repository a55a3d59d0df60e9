"""A normalisation layer between a treated unit's producer and its activation: the unit's
entries go back to identity (weight 1, bias 0, running mean 0, running variance 1) in every
method; the other units' entries stay; a norm without one entry per unit is named, not guessed."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import Tensor, nn

import neurodiag

HALF = 8


def _batches(shape: tuple[int, ...], n: int = 3) -> list[Tensor]:
    gen = torch.Generator().manual_seed(0)
    return [torch.randn(16, *shape, generator=gen) for _ in range(n)]


def _mlp(norm: nn.Module) -> nn.Sequential:
    """Linear → norm → ReLU → Linear, units 0..7 of site "2" dead by the norm's bias; every
    entry of the norm set away from identity, so a reset is visible."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), norm, nn.ReLU(), nn.Linear(16, 3))
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
        norm.bias.uniform_(-0.1, 0.1)
        norm.bias[:HALF] = -100.0
        if isinstance(norm, nn.BatchNorm1d):
            norm.running_mean.uniform_(-1, 1)
            norm.running_var.uniform_(0.5, 2.0)
    return model


def _conv(norm: nn.Module) -> nn.Sequential:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 16, 3, padding=1), norm, nn.ReLU(), nn.Conv2d(16, 4, 1))
    with torch.no_grad():
        norm.weight.uniform_(0.5, 2.0)
        norm.bias.uniform_(-0.1, 0.1)
        norm.bias[:HALF] = -100.0
    return model


def _rms_mlp() -> nn.Sequential:
    torch.manual_seed(0)
    norm = nn.RMSNorm(16)
    model = nn.Sequential(nn.Linear(8, 16), norm, nn.ReLU(), nn.Linear(16, 3))
    with torch.no_grad():
        model[0].bias[:HALF] = -100.0  # RMSNorm has no bias: the rows' own bias kills them
        norm.weight.uniform_(0.5, 2.0)
    return model


CASES = [
    ("batchnorm1d", lambda: _mlp(nn.BatchNorm1d(16)), (8,)),
    ("layernorm", lambda: _mlp(nn.LayerNorm(16)), (8,)),
    ("groupnorm", lambda: _conv(nn.GroupNorm(4, 16)), (3, 5, 5)),
]
if hasattr(nn, "RMSNorm"):  # torch >= 2.4
    CASES.append(("rmsnorm", _rms_mlp, (8,)))


@pytest.mark.parametrize("method", ["redo", "regrama"])
@pytest.mark.parametrize(("name", "build", "shape"), CASES, ids=[c[0] for c in CASES])
def test_treated_units_get_identity_norm_entries(
    method: str, name: str, build: object, shape: tuple[int, ...]
) -> None:
    model = build()  # type: ignore[operator]
    before_norm = copy.deepcopy(model[1].state_dict())
    batches = _batches(shape)
    report = neurodiag.scan(model, batches)
    assert report.row("2")["dead_pct"] == 50.0
    result = neurodiag.recycle(model, report, batches[0], method=method)
    [treated] = result.treated
    assert treated.producers == ("0", "1") and treated.consumer == "3"
    rows = list(treated.neurons)
    assert rows == list(range(HALF))  # per unit, by hand: exactly the dead half
    norm, kept = result.model[1], list(range(HALF, 16))
    identity = {"weight": 1.0, "bias": 0.0, "running_mean": 0.0, "running_var": 1.0}
    for key, value in before_norm.items():
        if key not in identity:
            continue
        now = norm.state_dict()[key]
        assert bool((now[rows] == identity[key]).all()), key
        assert torch.equal(now[kept], value[kept]), key
    assert neurodiag.scan(result.model, batches).row("2")["dead_pct"] < 5.0
    assert torch.equal(model[1].state_dict()["weight"], before_norm["weight"])  # a copy


def test_batchnorm_keeps_the_outputs_under_redo() -> None:
    """BatchNorm (eval) is per unit: the recycled units still contribute exactly 0."""
    model = _mlp(nn.BatchNorm1d(16))
    batches = _batches((8,))
    result = neurodiag.recycle(model, neurodiag.scan(model, batches), batches[0])
    assert neurodiag.treat.output_change(model, result.model, batches) < 1e-5


def test_a_norm_without_one_entry_per_unit_is_named() -> None:
    """A LayerNorm over the spatial axes only (H, W) mixes what belongs to a channel."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.LayerNorm([5, 5]), nn.ReLU(), nn.Conv2d(16, 4, 1)
    )
    with torch.no_grad():
        model[0].bias[:HALF] = -100.0
        model[1].bias.fill_(-100.0)
    batches = _batches((3, 5, 5))
    report = neurodiag.scan(model, batches)
    assert report.row("2")["dead_pct"] == 100.0
    result = neurodiag.recycle(model, report, batches[0])
    assert not result.treated
    assert "does not keep one entry per unit" in dict(result.untreated)["2"]
