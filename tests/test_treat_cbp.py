"""Recycler(method="cbp"): continual backprop per training step. The outputs on the step's batch
stay put when a unit is replaced (the consumer's bias absorbs its mean contribution), ρ ×
eligible units are replaced per step with the fractions carried over, young units are never
replaced, the lowest-utility units are, and no hook stays on the model after close()."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import Tensor, nn

from neurodiag.errors import NeurodiagError
from neurodiag.integrations.watch import TrainingWatch
from neurodiag.treat.during_training import Recycler
from tests.test_scan_behaviour import _hook_counts


def _constant_unit_mlp() -> tuple[nn.Sequential, Tensor]:
    """8 → 16 → ReLU → 4 where unit 3 is the constant 0.5 (zero incoming row, bias 0.5) with
    small outgoing weights (0.01): the lowest utility, 0.005; every other unit fires (bias
    +0.5) and has outgoing weights of at least 0.2 in size."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 4))
    _constant_unit(model)
    return model, torch.randn(256, 8)


def _constant_unit(model: nn.Sequential) -> None:
    with torch.no_grad():
        model[0].bias.fill_(0.5)
        model[0].weight[3] = 0.0
        w = model[2].weight
        w.copy_(torch.where(w >= 0, 1.0, -1.0) * w.abs().clamp_min(0.2))
        w[:, 3] = 0.01


def test_a_replacement_keeps_the_outputs_on_the_batch_and_resets_the_moments() -> None:
    model, x = _constant_unit_mlp()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    model(x).pow(2).mean().backward()
    opt.step()  # the moments exist, and are non-zero
    _constant_unit(model)  # as it was before the step moved it
    with Recycler(model, x, opt, method="cbp", replacement_rate=1 / 16, maturity=0, decay=0.0) as r:
        model(x)  # the step's forward (gradients enabled): what the hooks read
        with torch.no_grad():
            before = model(x)
            old_row, old_bias = model[0].weight[3].clone(), model[2].bias.clone()
        assert r.step(epoch=0) == {"1": 1}  # ρ × 16 eligible = exactly one unit
        with torch.no_grad():
            after = model(x)
    assert float((after - before).abs().max()) <= 1e-4  # without the bias: 0.005
    # unit 3 was replaced: fresh row, zeroed column, its 0.01 × 0.5 absorbed by the bias
    assert not torch.equal(model[0].weight[3], old_row)
    assert bool((model[2].weight[:, 3] == 0).all())
    torch.testing.assert_close(model[2].bias, old_bias + 0.005)
    for param, index in ((model[0].weight, 3), (model[0].bias, 3)):
        assert float(opt.state[param]["exp_avg"][index].abs().sum()) == 0.0
        assert float(opt.state[param]["exp_avg_sq"][index].abs().sum()) == 0.0
    assert float(opt.state[model[2].weight]["exp_avg"][:, 3].abs().sum()) == 0.0
    assert float(opt.state[model[2].weight]["exp_avg"][:, 2].abs().sum()) > 0.0
    assert r.cbp is not None and int(r.cbp.state["1"].age[3]) == 0
    frame = r.to_frame()
    assert frame[["step", "epoch", "site", "recycled"]].values.tolist() == [[0, 0, "1", 1]]


def test_the_unit_s_batchnorm_entries_go_back_to_identity() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 6), nn.BatchNorm1d(6), nn.ReLU(), nn.Linear(6, 2))
    x = torch.randn(32, 4)
    with torch.no_grad():
        model[1].weight.fill_(3.0)
        model[1].bias.fill_(0.5)
        model[1].running_mean.fill_(2.0)
        model[1].running_var.fill_(4.0)
    with Recycler(model, x, method="cbp", replacement_rate=1 / 6, maturity=0, decay=0.0) as r:
        model(x)
        [(site, count)] = r.step().items()
    [unit] = (r.cbp.state["2"].age == 0).nonzero().flatten().tolist()  # type: ignore[union-attr]
    norm = model[1]
    assert (site, count) == ("2", 1)
    assert [float(t[unit].detach()) for t in (norm.weight, norm.bias)] == [1.0, 0.0]
    assert [float(t[unit]) for t in (norm.running_mean, norm.running_var)] == [0.0, 1.0]
    others = [i for i in range(6) if i != unit]
    assert bool((norm.weight[others] == 3.0).all())


@pytest.mark.parametrize(("rate", "expected"), [(0.01, 300), (0.003, 90)])
def test_the_rate_is_kept_over_many_steps(rate: float, expected: int) -> None:
    """ρ × 100 eligible units per step (maturity 0: every unit is eligible after its first
    step), the fractions accumulated: ρ · 100 · 300 over 300 steps, within rounding."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 100), nn.ReLU(), nn.Linear(100, 3))
    x = torch.randn(16, 4)
    with Recycler(model, x, method="cbp", replacement_rate=rate, maturity=0) as recycler:
        for _ in range(300):
            model(x)
            recycler.step()
    assert abs(recycler.recycled - expected) <= 1
    assert recycler.to_frame()["recycled"].max() <= -(-rate * 100 // 1)


def test_young_units_are_never_replaced() -> None:
    """maturity m: nothing in the first m steps (no unit older than m), then ρ × 20 = 1 unit
    at step m, and a replaced unit waits m more steps before it can go again (so fewer are
    eligible, and fewer than one is owed per step from then on)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 20), nn.ReLU(), nn.Linear(20, 3))
    x = torch.randn(16, 4)
    maturity = 5
    recycler = Recycler(model, x, method="cbp", replacement_rate=0.05, maturity=maturity)
    last: dict[int, int] = {}
    counts = []
    for step in range(60):
        model(x)
        counts.append(sum(recycler.step().values()))
        assert recycler.cbp is not None
        for unit in (recycler.cbp.state["1"].age == 0).nonzero().flatten().tolist():
            assert step - last.get(unit, -1) > maturity  # born at -1: the first step ages it to 1
            last[unit] = step
    recycler.close()
    assert counts[:maturity] == [0] * maturity
    assert counts[maturity] == 1
    # from then on 20 - (units replaced in the last m steps) are eligible: ~ 0.05 × 15 per step
    assert 35 <= sum(counts) <= 55


def test_the_units_with_the_lowest_utility_are_replaced() -> None:
    """Utilities built by hand: unit i is the constant b_i (zero incoming row) and reads
    c_i on every outgoing weight, so u_i = b_i · c_i exactly (η = 0); the three lowest go."""
    model = nn.Sequential(nn.Linear(3, 12), nn.ReLU(), nn.Linear(12, 2))
    b = torch.tensor([0.9, 0.2, 0.5, 0.8, 0.3, 0.7, 0.6, 0.4, 1.0, 0.35, 0.45, 0.55])
    c = torch.tensor([0.1, 0.9, 0.05, 0.3, 0.2, 0.01, 0.4, 0.5, 0.6, 0.7, 0.8, 0.15])
    with torch.no_grad():
        model[0].weight.zero_()
        model[0].bias.copy_(b)
        model[2].weight.copy_(c.expand(2, 12))
    x = torch.randn(8, 3)
    recycler = Recycler(model, x, method="cbp", replacement_rate=0.25, maturity=0, decay=0.0)
    model(x)
    assert recycler.step() == {"1": 3}
    state = recycler.cbp.state["1"]  # type: ignore[union-attr]
    replaced = set((state.age == 0).nonzero().flatten().tolist())
    assert replaced == set((b * c).argsort()[:3].tolist()) == {5, 2, 4}  # 0.007, 0.025, 0.06
    kept = [i for i in range(12) if i not in replaced]
    torch.testing.assert_close(state.utility[kept].float(), (b * c)[kept])
    recycler.close()


def test_the_bias_corrected_utility_orders_units_by_their_history() -> None:
    """A hand-set utility and age (every unit the same age): with no contribution this step
    (all units silent), the order is the hand-set one, and û = η·u / (1 − η^(age + 1))."""
    model = nn.Sequential(nn.Linear(3, 6), nn.ReLU(), nn.Linear(6, 2))
    with torch.no_grad():
        model[0].bias.fill_(-100.0)  # silent: this step adds nothing to any utility
    x = torch.randn(8, 3)
    recycler = Recycler(model, x, method="cbp", replacement_rate=1 / 3, maturity=10, decay=0.9)
    assert recycler.cbp is not None
    state = recycler.cbp.state["1"]
    hand = torch.tensor([0.5, 0.1, 0.4, 0.05, 0.3, 0.2], dtype=torch.float64)
    state.utility.copy_(hand)
    state.age.fill_(49)
    model(x)
    assert recycler.step() == {"1": 2}
    assert set((state.age == 0).nonzero().flatten().tolist()) == {1, 3}
    torch.testing.assert_close(
        state.corrected(0.9)[0], torch.tensor(0.9 * 0.5 / (1 - 0.9**50), dtype=torch.float64)
    )
    recycler.close()


def test_no_hook_stays_after_close_and_evaluation_is_not_counted() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(16, 4)
    before = _hook_counts(model)
    recycler = Recycler(model, x, method="cbp", replacement_rate=0.5, maturity=0)
    assert _hook_counts(model) != before
    with torch.no_grad():
        model(x)  # an evaluation forward: not a training step's activations
    assert recycler.step() == {}
    recycler.close()
    assert _hook_counts(model) == before
    model(x)
    assert recycler.step() == {}  # closed: nothing read, nothing replaced


def test_window_methods_ignore_step_and_cbp_ignores_windows() -> None:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(16, 4)
    assert Recycler(model, x).step() == {}
    recycler = Recycler(model, x, method="cbp")
    recycler(None)  # type: ignore[arg-type]  # a window: nothing to do per window
    recycler.close()
    assert recycler.history == []


@pytest.mark.parametrize(
    "options",
    [
        {"replacement_rate": 2.0},
        {"replacement_rate": float("nan")},
        {"maturity": -1},
        {"maturity": 1.5},
        {"decay": 1.0},
        {"decay": -0.1},
    ],
)
def test_bad_cbp_arguments_are_one_line_errors(options: dict[str, float]) -> None:
    with pytest.raises(NeurodiagError) as caught:
        Recycler(method="cbp", **options)  # type: ignore[arg-type]
    assert "\n" not in str(caught.value)


def test_recycle_cbp_in_the_callbacks_makes_a_cbp_recycler() -> None:
    watch = TrainingWatch(recycle="cbp")
    assert watch.recycler is not None and watch.recycler.method == "cbp"


def test_a_lightning_fit_with_cbp_replaces_units_and_leaves_no_hook(tmp_path: Path) -> None:
    """recycle=Recycler(method="cbp"): the topology from the first training step, then units
    replaced after each step (counts per step and epoch in to_frame), no hook after the fit."""
    pytest.importorskip("lightning.pytorch")
    from neurodiag.integrations.lightning import NeurodiagCallback
    from tests.test_lightning import Net, _fit

    torch.manual_seed(0)
    module = Net(lr=0.1)
    before = _hook_counts(module)
    recycler = Recycler(method="cbp", replacement_rate=0.25, maturity=1)
    callback = NeurodiagCallback(per_site=False, recycle=recycler)
    _fit(module, callback, max_epochs=2, default_root_dir=tmp_path)
    assert _hook_counts(module) == before
    frame = recycler.to_frame()
    # 8 steps: the first traces, the second ages every unit to 1, then ρ × eligible is owed
    # (eligible: 8 at step 3, then the units not replaced in the step before): 2, 1.5 + 0,
    # 1.75 + 0.5, 1.5 + 0.25, 1.75 + 0.75, 1.5 + 0.5, floored, the fractions carried over
    assert frame["recycled"].tolist() == [2, 1, 2, 1, 2, 2]
    assert set(frame["site"]) == {"net.1"} and set(frame["epoch"]) == {0, 1}
