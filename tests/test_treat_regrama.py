"""recycle(method="regrama") and Recycler(method="regrama"): the gradient score on the
pre-activation, checked by hand per unit; a unit that fires but gets no gradient is revived by
regrama and not by ReDo, with small non-zero outgoing weights; output heads are never reset."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

import neurodiag
from neurodiag.errors import NeurodiagError
from neurodiag.treat.gradients import PreActivationGrads, measure_grama
from neurodiag.treat.recycle import GRAMA_TAU, OUTGOING_SCALE
from neurodiag.treat.topology import topology


def _data(n: int = 3, seed: int = 0) -> list[tuple[Tensor, Tensor]]:
    gen = torch.Generator().manual_seed(seed)
    return [
        (torch.randn(16, 8, generator=gen), torch.randn(16, 4, generator=gen)) for _ in range(n)
    ]


def _silent_unit_mlp() -> nn.Sequential:
    """Unit 3 of site "1" fires on every sample (bias +3) but its outgoing weights are 0: no
    gradient reaches it, while its activation looks healthy."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    with torch.no_grad():
        model[0].bias[3] = 3.0
        model[2].weight[:, 3] = 0.0
    return model


def test_the_score_is_the_pre_activation_gradient_computed_by_hand() -> None:
    """G_i = E|∂L/∂z_i| / mean_k E|∂L/∂z_k| with L = MSE: by hand, unit by unit; a unit that
    never fires scores 0 on z although its ∂L/∂a (the scan's grad_score) is not 0."""
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    with torch.no_grad():
        model[0].bias[0] = -100.0  # unit 0 never fires
    x, y = torch.randn(6, 3), torch.randn(6, 2)
    scores = measure_grama(model, [(x, y)], topology(model, x))
    with torch.no_grad():
        z = model[0](x)
        out = model[2](torch.relu(z))
        d_out = 2 * (out - y) / out.numel()  # ∂ mse / ∂ out
        d_a = d_out @ model[2].weight  # (6, 4)
        d_z = (z > 0).to(z) * d_a
        mean = d_z.abs().mean(0).double()
    torch.testing.assert_close(scores["1"], mean / mean.mean())
    assert float(scores["1"][0]) == 0.0
    report = neurodiag.scan(model, [(x, y)])
    assert float(report.neurons["1"].grad_score[0]) > 0.1  # on a, unit 0 looks fine


def test_regrama_revives_a_unit_that_fires_but_gets_no_gradient_and_redo_does_not() -> None:
    model = _silent_unit_mlp()
    original = copy.deepcopy(model.state_dict())
    data = _data()
    report = neurodiag.scan(model, data)
    neurons = report.neurons["1"]
    assert not bool(neurons.dead[3]) and float(neurons.dormant_score[3]) > 0.1
    redo = neurodiag.recycle(model, report, data[0], tau=0.1)
    assert all(3 not in t.neurons for t in redo.treated)  # ReDo's activation score misses it

    result = neurodiag.recycle(model, report, data[0], method="regrama")
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in original.items())  # a copy
    [treated] = result.treated
    assert treated.site == "1" and treated.neurons == (3,)  # G_3 = 0, every other G_i > 0.01
    new = result.model
    assert not torch.equal(new[0].weight[3], model[0].weight[3])  # a fresh incoming row
    # outgoing: non-zero, mean |w| = 0.02 × mean |w| of the 15 live columns (by hand)
    live = [i for i in range(16) if i != 3]
    expected = OUTGOING_SCALE * model[2].weight[:, live].abs().mean()
    assert bool((new[2].weight[:, 3] != 0).all())
    torch.testing.assert_close(new[2].weight[:, 3].abs().mean(), expected)
    # nothing else moved
    assert torch.equal(new[0].weight[live], model[0].weight[live])
    assert torch.equal(new[2].weight[:, live], model[2].weight[:, live])
    assert torch.equal(new[2].bias, model[2].bias)
    # and the unit now gets gradient at once
    after = measure_grama(new, data, topology(new, data[0][0]))
    assert float(after["1"][3]) > GRAMA_TAU


def test_output_heads_are_never_reset() -> None:
    """A saturated sigmoid whose outputs are the model's outputs: no gradient reaches it, but it
    is the output head, so it is named and left alone."""
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(8, 6), nn.ReLU(), nn.Linear(6, 4), nn.Sigmoid())
    with torch.no_grad():
        model[2].bias[0] = 100.0
    data = _data()
    report = neurodiag.scan(model, data)
    result = neurodiag.recycle(model, report, data[0], method="regrama")
    assert "output head" in dict(result.untreated)["3"]
    assert torch.equal(result.model[2].weight, model[2].weight)
    assert torch.equal(result.model[2].bias, model[2].bias)


def test_recycler_regrama_during_training_revives_the_silent_unit() -> None:
    """The gradient comes from the training steps themselves: at the end of the first window
    the silent unit is treated, its outgoing weights are non-zero, and ``close`` unhooks."""
    model = _silent_unit_mlp()
    data = _data(4)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    recycler = neurodiag.treat.Recycler(model, data[0], opt, method="regrama")
    assert isinstance(recycler.grads, PreActivationGrads)
    with neurodiag.Monitor(model, every=4, on_window=recycler):
        for x, y in data:
            opt.zero_grad()
            nn.functional.mse_loss(model(x), y).backward()
            opt.step()
    frame = recycler.to_frame()
    first = frame[frame["window"] == 0]
    assert list(first["site"]) == ["1"] and list(first["recycled"]) == [1]
    assert bool((model[2].weight[:, 3] != 0).all())
    recycler.close()
    assert recycler.grads is None and not model[1]._forward_pre_hooks


def test_bad_method_and_missing_inputs_fail_in_one_line() -> None:
    model = _silent_unit_mlp()
    data = _data(1)
    report = neurodiag.scan(model, data)
    with pytest.raises(NeurodiagError, match="regrama"):
        neurodiag.treat.Recycler(method="grama")
    links = topology(model, data[0][0])
    with pytest.raises(NeurodiagError, match="grad_scores or an example"):
        neurodiag.recycle(model, report, links=links, method="regrama")


def test_treat_command_regrama(tmp_path: Path) -> None:
    """``neurodiag treat --method regrama``: the forced-dead half is revived, with non-zero
    outgoing weights at 0.02 of the live columns' scale."""
    from typer.testing import CliRunner

    from neurodiag.cli import app
    from tests.test_recycle import TREATABLE

    model_file = tmp_path / "mlp.py"
    model_file.write_text(TREATABLE)
    target = tmp_path / "treated.pt"
    args = ["treat", str(model_file), "--input-shape", "8", "--max-batches", "3"]
    result = CliRunner().invoke(
        app, [*args, "--method", "regrama", "-o", str(target)], env={"COLUMNS": "160"}
    )
    assert result.exit_code == 0, result.stderr
    row = next(line for line in result.stdout.splitlines() if line.strip().startswith("1 "))
    _, neurons, before, after, recycled, *_ = row.split()
    assert (neurons, before) == ("32", "50.0") and int(recycled) >= 16 and float(after) < 5.0
    weight = torch.load(target, weights_only=True)["2.weight"].abs()
    assert bool((weight[:, :16] != 0).all())
    # medians: a row of layer 2 recycled for site "3" is full scale in every column
    assert float(weight[:, :16].median()) < 0.05 * float(weight[:, 16:].median())
