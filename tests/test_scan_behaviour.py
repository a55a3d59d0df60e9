"""Scan behaviour beyond the numbers: the model is never changed, errors are clear, edge cases."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor, nn

import neurodiag
from neurodiag.errors import NeurodiagError
from tests.fixtures.models import ZOO, make_batches


def _hook_counts(model: nn.Module) -> list[tuple[int, int, int, int]]:
    return [
        (
            len(m._forward_hooks),
            len(m._forward_pre_hooks),
            len(m._backward_hooks),
            len(m._backward_pre_hooks),
        )
        for m in model.modules()
    ]


def _snapshot(model: nn.Module) -> dict[str, object]:
    return {
        "state": {k: v.clone() for k, v in model.state_dict().items()},
        "grads": [None if p.grad is None else p.grad.clone() for p in model.parameters()],
        "requires_grad": [p.requires_grad for p in model.parameters()],
        "training": [m.training for m in model.modules()],
        "hooks": _hook_counts(model),
    }


def _assert_same(model: nn.Module, before: dict[str, object]) -> None:
    after = _snapshot(model)
    assert after["hooks"] == before["hooks"]
    assert after["training"] == before["training"]
    assert after["requires_grad"] == before["requires_grad"]
    for a, b in zip(after["grads"], before["grads"]):  # type: ignore[call-overload]
        assert (a is None and b is None) or torch.equal(a, b)
    state_a, state_b = after["state"], before["state"]
    assert state_a.keys() == state_b.keys()  # type: ignore[attr-defined]
    for key in state_a:  # type: ignore[attr-defined]
        assert torch.equal(state_a[key], state_b[key]), key  # type: ignore[index]


class BNNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 8)
        self.bn = nn.BatchNorm1d(8)
        self.act = nn.ReLU()
        self.head = nn.Linear(8, 2)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(self.act(self.bn(self.fc(x))))


@pytest.mark.parametrize("mode", ["eval", "train"])
def test_model_is_bit_identical_after_scan(mode: str) -> None:
    model = BNNet()
    model.train()
    model.fc.weight.grad = torch.ones_like(model.fc.weight)  # a user's pending gradient
    model.head.register_forward_hook(lambda m, i, o: None)  # a user's own hook stays
    model.bn.weight.requires_grad_(False)
    before = _snapshot(model)
    x = torch.randn(16, 4)
    report = neurodiag.scan(model, [(x, torch.randint(0, 2, (16,)))], mode=mode)
    assert report.sites == ["act"]
    _assert_same(model, before)


def test_model_is_restored_when_the_forward_raises_midway() -> None:
    class Boom(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(3, 3)
            self.act = nn.ReLU()
            self.calls = 0

        def forward(self, x: Tensor) -> Tensor:
            h = F.gelu(self.act(self.fc(x)))
            self.calls += 1
            if self.calls == 2:
                raise RuntimeError("boom")
            return h

    model = Boom()
    before = _snapshot(model)
    with pytest.raises(NeurodiagError, match=r"RuntimeError.*boom"):
        neurodiag.scan(model, [torch.randn(2, 3)] * 3)
    _assert_same(model, before)
    # no torch function mode left behind: a later functional call is not intercepted
    assert torch.overrides._get_current_function_mode() is None
    assert torch.equal(F.relu(torch.tensor([-1.0, 2.0])), torch.tensor([0.0, 2.0]))


def test_global_rng_state_is_untouched() -> None:
    model = ZOO["functional"]()
    x = torch.randn(4, 4)
    state = torch.random.get_rng_state()
    neurodiag.scan(model, [x], mode="train")
    assert torch.equal(torch.random.get_rng_state(), state)


def test_scan_is_deterministic_for_a_seed() -> None:
    model = nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.5), nn.ReLU(), nn.Linear(8, 2))
    x = torch.randn(16, 4)
    a = neurodiag.scan(model, [x], mode="train", seed=3).to_frame()
    b = neurodiag.scan(model, [x], mode="train", seed=3).to_frame()
    assert a.equals(b)


def test_nan_input_is_counted_not_a_crash() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.GELU(), nn.Linear(4, 2))
    x = torch.randn(5, 3)
    x[0, 0] = math.nan
    report = neurodiag.scan(model, [(x, torch.randint(0, 2, (5,)))])
    row = report.row("1")
    # row 0 turns NaN through the Linear: 4 NaN in z, 4 in a, and NaN gradients flow back
    assert row["nonfinite"] >= 8


def test_input_of_the_wrong_shape_is_one_clear_error() -> None:
    model = nn.Sequential(nn.Linear(20, 4), nn.ReLU())
    with pytest.raises(NeurodiagError) as info:
        neurodiag.scan(model, [torch.randn(2, 7)])
    message = str(info.value)
    assert "\n" not in message
    assert "(2, 7)" in message and "(batch, 20)" in message


def test_empty_data_is_an_error() -> None:
    with pytest.raises(NeurodiagError, match="no batches"):
        neurodiag.scan(nn.Sequential(nn.Linear(2, 2), nn.ReLU()), [])


def test_include_glob_that_matches_nothing_is_an_error() -> None:
    model = ZOO["reused_relu"]()
    with pytest.raises(NeurodiagError, match="matched no site"):
        neurodiag.scan(model, [torch.randn(2, 5)], include=["nope*"])


def test_include_and_exclude_select_sites() -> None:
    model = ZOO["functional"]()
    x = torch.randn(4, 4)
    assert neurodiag.scan(model, [x], include=["*relu*"]).sites == [
        "<root>:relu#0",
        "<root>:relu#1",
    ]
    assert neurodiag.scan(model, [x], exclude=["*relu*"]).sites == [
        "<root>:tanh#0",
        "<root>:gelu#0",
    ]


def test_feature_dim_override() -> None:
    model = nn.Sequential(nn.Linear(6, 6), nn.ReLU())
    x = torch.randn(3, 5, 6)
    auto = neurodiag.scan(model, [x])
    assert auto.row("1")["neurons"] == 6  # (N, T, F): last dim
    forced = neurodiag.scan(model, [x], feature_dims={"1": 1})
    assert forced.row("1")["neurons"] == 5


def test_frozen_model_with_token_ids_still_gets_gradients() -> None:
    model = ZOO["sequence"]()
    for p in model.parameters():
        p.requires_grad_(False)
    report = neurodiag.scan(model, [torch.randint(0, 20, (4, 5))])
    assert not math.isnan(report.row("act")["mag"])
    assert all(not p.requires_grad for p in model.parameters())


def test_no_targets_uses_the_surrogate_and_says_so() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2), nn.LayerNorm(2))
    report = neurodiag.scan(model, [torch.randn(8, 3)])
    assert "surrogate" in report.header.loss
    assert report.row("1")["mag"] > 0  # a sum surrogate would give exactly 0 after LayerNorm


def test_float_targets_use_mse() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    report = neurodiag.scan(model, [(torch.randn(8, 3), torch.randn(8))])
    assert report.header.loss == "mse"


def test_user_loss_fn_is_used() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    seen = []

    def loss_fn(output: Tensor, batch: object) -> Tensor:
        seen.append(batch)
        return output.pow(2).mean()

    report = neurodiag.scan(model, [torch.randn(8, 3)], loss_fn=loss_fn)
    assert report.header.loss.startswith("loss_fn") and len(seen) == 1


def test_model_writing_into_its_input_does_not_change_the_batch() -> None:
    class Writer(nn.Module):
        def forward(self, x: Tensor) -> Tensor:
            return F.relu(x.mul_(2))

    x = torch.randn(4, 3)
    original = x.clone()
    neurodiag.scan(Writer(), [x])
    assert torch.equal(x, original)


def test_statistics_are_o_neurons_tensors_on_the_model_device() -> None:
    """Every state is a device tensor of at most F entries (the host-sync test that can fail
    is tests/test_reductions.py::test_no_host_sync_while_measuring_on_the_device_path)."""
    from neurodiag.config import ScanConfig
    from neurodiag.scan import recorder_for
    from neurodiag.stats.sync import stats_of

    model = ZOO["inplace_relu"]()
    with recorder_for(model, ScanConfig()) as rec:
        model(torch.randn(4, 6))
        for _, site in rec.ordered_sites():
            for _, value in stats_of(site).store.items():
                assert value.device == torch.device("cpu")
                assert value.numel() <= site.neurons


def test_hf_bert_from_config_scans_with_synthetic_ids() -> None:
    transformers = pytest.importorskip("transformers")
    config = transformers.BertConfig(
        vocab_size=50,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=24,
        max_position_embeddings=32,
    )
    model = transformers.BertModel(config)
    before = _snapshot(model)
    ids = torch.randint(0, 50, (2, 8))
    report = neurodiag.scan(model, [{"input_ids": ids}])
    assert report.sites[:2] == [
        "encoder.layer.0.intermediate.intermediate_act_fn",
        "encoder.layer.1.intermediate.intermediate_act_fn",
    ]
    assert report.row(report.sites[0])["neurons"] == 24
    _assert_same(model, before)


def test_copy_of_model_not_needed() -> None:
    """Scanning twice gives the same frame: nothing leaked from the first scan."""
    model = ZOO["smooth"]().double()
    batches = make_batches("smooth", model)
    first = neurodiag.scan(model, batches).to_frame()
    second = neurodiag.scan(copy.deepcopy(model), batches).to_frame()
    third = neurodiag.scan(model, batches).to_frame()
    assert first.drop(columns=[]).equals(second) and first.equals(third)


class CheckpointedMLP(nn.Module):
    def __init__(self, use_checkpoint: bool) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 8), nn.GELU())
        self.head = nn.Linear(8, 2)
        self.use_checkpoint = use_checkpoint

    def forward(self, x: Tensor) -> Tensor:
        if self.use_checkpoint:
            from torch.utils.checkpoint import checkpoint

            h = checkpoint(self.block, x, use_reentrant=False)
        else:
            h = self.block(x)
        return self.head(F.silu(h))


def test_activation_checkpointing_does_not_double_count() -> None:
    torch.manual_seed(0)
    plain = CheckpointedMLP(use_checkpoint=False).double()
    ckpt = copy.deepcopy(plain)
    ckpt.use_checkpoint = True
    batches = [(torch.randn(6, 4, dtype=torch.float64), torch.randint(0, 2, (6,)))] * 2
    a = neurodiag.scan(plain, batches).to_frame()
    b = neurodiag.scan(ckpt, batches).to_frame()
    assert a.equals(b)


def test_keyboard_interrupt_returns_a_partial_report() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU())

    def batches():  # type: ignore[no-untyped-def]
        yield torch.randn(2, 3)
        raise KeyboardInterrupt

    before = _snapshot(model)
    with pytest.raises(neurodiag.ScanInterrupted) as info:
        neurodiag.scan(model, batches())
    report = info.value.report
    assert report.header.partial and report.header.batches == 1 and report.sites == ["1"]
    _assert_same(model, before)


def test_timeout_stops_early_and_marks_the_report_partial() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU())
    report = neurodiag.scan(model, [torch.randn(2, 3)] * 50, timeout_s=0.0)
    assert report.header.batches == 1 and report.header.partial
    assert any("timeout" in note for note in report.header.notes)


def test_compiled_model_is_scanned_through_its_eager_module() -> None:
    model = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
    compiled = torch.compile(model)
    report = neurodiag.scan(compiled, [torch.randn(2, 3)])
    assert report.sites == ["1"]
    assert any("torch.compile" in note for note in report.header.notes)


def test_vanishing_gradients_in_eval_mode_suggest_train_mode() -> None:
    """Issue 12: MAG below 1e-10 at every site in eval mode gets a hint towards --mode train
    when the model has BatchNorm (whose running statistics are the suspect)."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 3))
    with torch.no_grad():
        model[3].weight.mul_(1e-12)  # the gradient reaching the ReLU is ~1e-13
    batches = [(torch.randn(16, 4), torch.randint(0, 3, (16,)))]
    eval_report = neurodiag.scan(model, batches)
    assert eval_report.row("2")["mag"] < 1e-10
    assert any("BatchNorm" in n and "--mode train" in n for n in eval_report.header.notes)
    assert not any(
        "--mode train" in n for n in neurodiag.scan(model, batches, mode="train").header.notes
    )
    with torch.no_grad():
        model[3].weight.mul_(1e12)
    assert not any("--mode train" in note for note in neurodiag.scan(model, batches).header.notes)


def test_vanishing_gradients_without_batchnorm_do_not_blame_it() -> None:
    """Issue 26.6: ViT/Mixer have no BatchNorm; their zero-initialised head is the cause."""
    model = nn.Sequential(nn.Linear(4, 8), nn.GELU(), nn.Linear(8, 3))
    with torch.no_grad():
        model[2].weight.zero_()
        model[2].bias.zero_()
    batches = [(torch.randn(16, 4), torch.randint(0, 3, (16,)))]
    (note,) = [n for n in neurodiag.scan(model, batches).header.notes if "MAG" in n]
    assert "no BatchNorm" in note and "zero-initialised head" in note
    assert "--mode train" not in note


class _EvalModeState(nn.Module):
    """Like RWKV in eval mode: a state updated in place that autograd still needs."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 8)

    def forward(self, x: Tensor) -> Tensor:
        h = torch.relu(self.fc(x))
        state = h.exp()  # exp saves its output for the backward
        if not self.training:
            state.add_(1.0)  # the recurrent state's in-place update
        return state.sum()


def test_inplace_backward_error_in_eval_mode_suggests_train_mode() -> None:
    """Issue 26.6: RWKV scans in train mode; the eval-mode error says so."""
    batches = [torch.randn(3, 4)]
    with pytest.raises(NeurodiagError, match=r"--mode train \(mode='train'\)"):
        neurodiag.scan(_EvalModeState(), batches)
    assert neurodiag.scan(_EvalModeState(), batches, mode="train").sites == ["<root>:relu#0"]


def test_scan_of_bernstein_with_compiled_kernels_equals_the_eager_scan(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The scan's torch function mode is active in the forward: the compiled kernels run with it
    switched off (they only do arithmetic), compile without failing, and measure the same."""
    from neurodiag.activations import bernstein

    monkeypatch.setattr(bernstein, "_COMPILED", bernstein._Compiled())
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(8, 16), bernstein.Bernstein(9, num_features=16), nn.Linear(16, 3)
    )
    data = [(torch.randn(32, 8), torch.randint(0, 3, (32,))) for _ in range(2)]
    eager = neurodiag.scan(model, data).to_frame()
    assert bernstein.use_compiled_kernels(model) == 1
    graphs = torch._dynamo.utils.counters["stats"]
    before = graphs["unique_graphs"]
    compiled = neurodiag.scan(model, data).to_frame()
    assert bernstein._COMPILED.failed is None
    assert graphs["unique_graphs"] - before >= 2  # the value and backward kernels ran compiled
    numbers = eager.select_dtypes("number").columns
    assert len(numbers) > 5
    pd = pytest.importorskip("pandas")
    pd.testing.assert_frame_equal(eager[numbers], compiled[numbers], rtol=1e-5, atol=1e-6)
