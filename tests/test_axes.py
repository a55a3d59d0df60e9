"""The neuron axis from the producing layer, gates, and one name per activation (issue 12).

The statistics on the right axis are pinned by the brute-force zoo (``channels_last``,
``swin_mlp``, ``channels_last_stem``, ``padded_conv1d``, ``squeeze_excite``...); these tests pin
the rules themselves: how a dim follows a reshape, when the shape rule is the fallback (and says
so), which sites are gates, and what the ``activation`` and ``class`` columns read.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import Tensor, nn

import neurodiag
from neurodiag.check import evaluate
from neurodiag.report import is_unhealthy
from neurodiag.sites.axes import follow_dim
from neurodiag.sites.capture import SiteRecorder
from tests.fixtures.models import ZOO, make_batches


@pytest.mark.parametrize(
    ("shape_in", "dim", "shape_out", "expected"),
    [
        ((2, 3, 4), 2, (6, 4), 1),  # (N, T, D) -> (N*T, D): D survives
        ((2, 3, 4), 1, (2, 12), None),  # merged into another dim: gone
        ((2, 8, 1, 1), 1, (2, 8, 5, 5), 1),  # expand: found by the sizes before it
        ((2, 8), 1, (2, 8, 1, 1), 1),  # unsqueeze
        ((2, 8, 3, 3), 1, (2, 8, 9), 1),  # flatten(2)
        ((2, 4, 6), 2, (2, 4, 2, 3), None),  # split into heads: gone
        ((2, 3, 4), 0, (2, 3, 4), 0),  # same shape: same dim
        ((5, 3, 4), 2, (3, 4), 1),  # a reduction over the batch dim: found by the sizes after
    ],
)
def test_follow_dim(
    shape_in: tuple[int, ...], dim: int, shape_out: tuple[int, ...], expected: int | None
) -> None:
    assert follow_dim(shape_in, dim, shape_out) == expected


@settings(max_examples=60, deadline=None)
@given(
    sizes=st.lists(st.integers(2, 5), min_size=2, max_size=6),
    data=st.data(),
)
def test_follow_dim_through_merges_that_keep_the_dim(sizes: list[int], data: st.DataObject) -> None:
    """Merge runs of dims left and right of ``dim`` (what view/flatten do): the dim is where
    the number of groups before it says, checked on a tensor labelled along that dim."""
    dim = data.draw(st.integers(0, len(sizes) - 1))
    cuts = sorted(data.draw(st.sets(st.integers(1, dim - 1), max_size=dim))) if dim > 1 else []
    bounds = [0, *cuts, dim]
    left_groups = [math.prod(sizes[a:b]) for a, b in itertools.pairwise(bounds)] if dim else []
    right = sizes[dim + 1 :]
    right_groups = [math.prod(right)] if right and data.draw(st.booleans()) else right
    shape_out = [*left_groups, sizes[dim], *right_groups]
    labels = torch.arange(sizes[dim]).reshape([-1 if i == dim else 1 for i in range(len(sizes))])
    x = labels.expand(sizes).reshape(shape_out)
    found = follow_dim(sizes, dim, shape_out)
    assert found is not None
    # along the found dim the labels run 0..size-1: it is the same axis, not one of equal size
    index = [0] * len(shape_out)
    index[found] = slice(None)  # type: ignore[call-overload]
    assert x[tuple(index)].tolist() == list(range(sizes[dim]))


def _row(report: neurodiag.Report, site: str) -> dict[str, object]:
    return report.row(site)


def test_channels_last_block_counts_the_hidden_features() -> None:
    """The issue's ConvNeXt case: 4·C neurons on the last dim, not H, and no note."""
    model = ZOO["channels_last"]().double()
    report = neurodiag.scan(model, make_batches("channels_last", model))
    row = _row(report, "block.4")
    assert (row["neurons"], row["feature_dim"]) == (16, 3)
    assert not any("neuron dim" in note for note in report.header.notes)


def test_feature_dim_override_still_wins() -> None:
    model = ZOO["channels_last"]().double()
    report = neurodiag.scan(
        model, make_batches("channels_last", model), feature_dims={"block.4": 1}
    )
    assert (_row(report, "block.4")["neurons"], _row(report, "block.4")["feature_dim"]) == (5, 1)


class _OnInput(nn.Module):
    """An activation on the model's input: no layer feeds it, the shape rule decides."""

    def __init__(self) -> None:
        super().__init__()
        self.act = nn.Tanh()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(x).sum((1, 2, 3))


class _Einsum(nn.Module):
    """An einsum producer: its layout lives in a string, so the dim is not followed."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(3, 7))

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(torch.einsum("nchw,cd->nhwd", x, self.weight)).sum()


class _WeightOnTheLeft(nn.Module):
    """Mamba's ``softplus(dt_proj.weight @ x)`` with x of shape (B, R, L): the neurons are the
    weight's D rows (dim 1 of the (B, D, L) output), not the sequence (dim 2)."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(7, 3))
        self.how = how

    def forward(self, x: Tensor) -> Tensor:
        if self.how == "op":
            h = self.w @ x
        elif self.how == "matmul":
            h = torch.matmul(self.w, x)
        else:  # weight on the right: the last dim, as before
            h = x.transpose(1, 2) @ self.w.T
        return F.softplus(h).sum()


@pytest.mark.parametrize("how", ["op", "matmul"])
@pytest.mark.parametrize("length", [1, 5, 7])
def test_a_matmul_with_the_weight_on_the_left_keeps_its_rows(how: str, length: int) -> None:
    """Issue 26.5: the neuron dim follows the operand that carries the features."""
    row = neurodiag.scan(_WeightOnTheLeft(how), [torch.randn(2, 3, length)]).rows[0]
    assert (row["feature_dim"], row["neurons"]) == (1, 7)


def test_a_matmul_with_the_weight_on_the_right_keeps_the_last_dim() -> None:
    row = neurodiag.scan(_WeightOnTheLeft("right"), [torch.randn(2, 3, 5)]).rows[0]
    assert (row["feature_dim"], row["neurons"]) == (2, 7)


@pytest.mark.parametrize(("model", "site", "dim"), [(_OnInput(), "act", 1), (_Einsum(), None, 1)])
def test_undetermined_dims_fall_back_to_the_shape_rule_with_a_note(
    model: nn.Module, site: str | None, dim: int
) -> None:
    report = neurodiag.scan(model, [torch.randn(2, 3, 4, 5)], loss_fn=lambda out, batch: out.sum())
    name = site or report.sites[0]
    assert _row(report, name)["feature_dim"] == dim
    notes = [n for n in report.header.notes if "shape rule" in n]
    assert len(notes) == 1 and name in notes[0] and "--feature-dim" in notes[0]


class _Disagree(nn.Module):
    """Two inputs of one add whose features sit on different dims (C == H == W == 4)."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(4, 4)
        self.act = nn.ReLU()

    def forward(self, x: Tensor) -> Tensor:
        return self.act(self.conv(x) + self.fc(x)).sum()


def test_conflicting_inputs_keep_the_first_and_say_so() -> None:
    report = neurodiag.scan(_Disagree(), [torch.randn(2, 4, 4, 4)])
    assert _row(report, "act")["feature_dim"] == 1  # the conv's, the first operand
    (note,) = [n for n in report.header.notes if "neuron dim of act" in n]
    assert "dims [1, 3]" in note and "--feature-dim 'act=DIM'" in note


def test_squeeze_excite_gates_are_recognised() -> None:
    for name, gates in (
        ("squeeze_excite", {"scale_activation"}),
        ("linear_squeeze_excite", {"sigmoid"}),
        ("param_gate", {"<root>:sigmoid#0"}),
    ):
        model = ZOO[name]().double()
        report = neurodiag.scan(model, make_batches(name, model))
        roles = {row["site"]: row["role"] for row in report.rows}
        assert {site for site, role in roles.items() if role == "gate"} == gates, name
        assert set(roles.values()) <= {"activation", "gate"}


class _HardSigmoidSE(nn.Module):
    """timm's SE with ``gate_layer='hard_sigmoid'``: ``F.relu6(x + 3) / 6`` scales the map. The
    site is a relu6 (no sigmoid by name): a gate because it broadcasts over what it scales."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 1)
        self.fc = nn.Conv2d(4, 4, 1)

    def forward(self, x: Tensor) -> Tensor:
        h = self.conv(x)
        gate = F.relu6(self.fc(h.mean((2, 3), keepdim=True)) + 3.0) / 6.0
        return (h * gate).sum()


def test_a_broadcast_product_makes_any_activation_a_gate() -> None:
    report = neurodiag.scan(_HardSigmoidSE(), [torch.randn(2, 3, 5, 5)])
    assert [(row["activation"], row["role"]) for row in report.rows] == [("relu6", "gate")]


class _Mamba2Dt(nn.Module):
    """Mamba2's step size: ``x * softplus(dt)[..., None]`` scales (B, L, H, P) states per head."""

    def __init__(self) -> None:
        super().__init__()
        self.dt_proj = nn.Linear(4, 3)
        self.x_proj = nn.Linear(4, 3 * 5)

    def forward(self, u: Tensor) -> Tensor:
        dt = F.softplus(self.dt_proj(u))  # (B, L, H)
        x = self.x_proj(u).unflatten(-1, (3, 5))  # (B, L, H, P)
        return (x * dt[..., None]).sum() + (x * dt.unsqueeze(-1)[:, :, :]).sum()


def test_a_gate_through_none_indexing_stays_a_gate() -> None:
    """Issue 26.5: indexing with None (an unsqueeze) keeps the gate rule."""
    rows = neurodiag.scan(_Mamba2Dt(), [torch.randn(2, 6, 4)]).rows
    assert [(r["activation"], r["role"], r["neurons"]) for r in rows] == [("softplus", "gate", 3)]


class _LSTMCellOutput(nn.Module):
    """h = sigmoid(o) * tanh(c), equal shapes: the sigmoid gates, the tanh is an activation."""

    def __init__(self) -> None:
        super().__init__()
        self.gates = nn.Linear(4, 16)

    def forward(self, x: Tensor) -> Tensor:
        o, c = self.gates(x).chunk(2, dim=-1)
        return (torch.sigmoid(o) * torch.tanh(c)).sum()


def test_a_sigmoid_scaling_an_equal_shape_is_a_gate() -> None:
    report = neurodiag.scan(_LSTMCellOutput(), [torch.randn(3, 4)])
    roles = [(row["activation"], row["role"], row["neurons"]) for row in report.rows]
    assert roles == [("sigmoid", "gate", 8), ("tanh", "activation", 8)]


class _SwiGLU(nn.Module):
    """Llama's MLP: silu(gate) * up multiplies equal shapes; SiLU is the activation proper."""

    def __init__(self) -> None:
        super().__init__()
        self.gate_proj = nn.Linear(4, 8)
        self.up_proj = nn.Linear(4, 8)
        self.act = nn.SiLU()

    def forward(self, x: Tensor) -> Tensor:
        return (self.act(self.gate_proj(x)) * self.up_proj(x)).sum()


def test_a_glu_product_is_not_a_gate() -> None:
    report = neurodiag.scan(_SwiGLU(), [torch.randn(3, 4)])
    assert _row(report, "act")["role"] == "activation"


def test_gates_are_not_flagged_unless_asked() -> None:
    model = ZOO["squeeze_excite"]().double()
    with torch.no_grad():
        model.fc2.bias.fill_(-100.0)  # every gate unit saturated at 0: "dead"
    batches = make_batches("squeeze_excite", model)
    report = neurodiag.scan(model, batches)
    assert _row(report, "scale_activation")["dead_pct"] == 100.0
    assert is_unhealthy(_row(report, "scale_activation")) is False
    checked = {c.site: c.status for c in evaluate(report, {"max_dead_pct": 50}).sites}
    assert checked["scale_activation"] == "ok"
    flagged = neurodiag.scan(model, batches, flag_gates=True)
    checked = {c.site: c.status for c in evaluate(flagged, {"max_dead_pct": 50}).sites}
    assert checked["scale_activation"] == "fail"


# --- names --------------------------------------------------------------------------------------


class _QuickGELU(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class _TanhGELUActivation(nn.Module):
    """Hugging Face's NewGELUActivation, written out."""

    def forward(self, x: Tensor) -> Tensor:
        return 0.5 * x * (1.0 + torch.tanh(math.sqrt(2.0 / math.pi) * (x + 0.044715 * x**3)))


class _LinearActivation(nn.Module):
    """Hugging Face's "linear" activation returns its input: no site."""

    def forward(self, x: Tensor) -> Tensor:
        return x


class _ClampReLU(nn.Module):
    """Works in place without an ``inplace`` flag: measured from a copy of its input."""

    def forward(self, x: Tensor) -> Tensor:
        return x.clamp_(min=0)


@pytest.mark.parametrize(
    ("act", "name", "cls"),
    [
        (nn.GELU(), "gelu", "GELU"),
        (nn.GELU(approximate="tanh"), "gelu_tanh", "GELU"),
        (_TanhGELUActivation(), "gelu_tanh", "_TanhGELUActivation"),
        (_QuickGELU(), "quick_gelu", "_QuickGELU"),
        (nn.SiLU(), "silu", "SiLU"),
        (nn.Hardswish(), "hardswish", "Hardswish"),
    ],
)
def test_one_canonical_name_per_function(act: nn.Module, name: str, cls: str) -> None:
    model = nn.Sequential(nn.Linear(4, 32), act)
    row = neurodiag.scan(model, [torch.randn(16, 4)]).rows[0]
    assert (row["activation"], row["class"]) == (name, cls)


class Sigmoid(nn.Module):
    """timm-like: a class named ``Sigmoid`` that is not ``nn.Sigmoid``."""

    def forward(self, x: Tensor) -> Tensor:
        return x.sigmoid()


def _hf_activation(name: str) -> nn.Module:
    activations = pytest.importorskip("transformers.activations")
    module: nn.Module = getattr(activations, name)()
    return module


@pytest.mark.parametrize(
    ("make", "name"),
    [
        (lambda: _hf_activation("GELUActivation"), "gelu"),
        (lambda: _hf_activation("SiLUActivation"), "silu"),
        (lambda: _hf_activation("NewGELUActivation"), "gelu_tanh"),
        (Sigmoid, "sigmoid"),
        (_ClampReLU, "relu"),
    ],
)
@pytest.mark.parametrize("scale", [1e-4, 1.0, 100.0])
def test_unknown_module_labels_never_depend_on_the_data(
    make: Callable[[], nn.Module], name: str, scale: float
) -> None:
    """Issue 26.5: GELUActivation fed |z| ~ 1e-4 (gelu ≈ x/2 there) kept its class name; one
    report read both ``Sigmoid`` and ``sigmoid``. The label is a function of the module only."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 32), make())
    with torch.no_grad():
        model[0].weight.mul_(scale)
        model[0].bias.mul_(scale)
    row = neurodiag.scan(model, [torch.randn(16, 4)]).rows[0]
    assert row["activation"] == name
    assert row["class"] == type(model[1]).__name__


def test_functional_calls_are_named_like_modules() -> None:
    class Calls(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 8)

        def forward(self, x: Tensor) -> Tensor:
            h = self.fc(x)
            return (F.gelu(h) + F.gelu(h, approximate="tanh") + torch.sigmoid(h)).sum()

    rows = neurodiag.scan(Calls(), [torch.randn(3, 4)]).rows
    assert [(r["site"], r["activation"], r["class"]) for r in rows] == [
        ("<root>:gelu#0", "gelu", "F.gelu"),
        ("<root>:gelu#1", "gelu_tanh", "F.gelu"),
        ("<root>:sigmoid#0", "sigmoid", "torch.sigmoid"),
    ]


def test_identity_activation_module_is_no_site() -> None:
    model = nn.Sequential(nn.Linear(4, 8), _LinearActivation(), nn.ReLU())
    assert neurodiag.scan(model, [torch.randn(3, 4)]).sites == ["2"]


def test_unflagged_in_place_activation_is_measured_from_its_input() -> None:
    torch.manual_seed(0)
    fc = nn.Linear(4, 32)
    batches = [torch.randn(16, 4) for _ in range(2)]
    got = neurodiag.scan(nn.Sequential(fc, _ClampReLU()), batches).rows[0]
    want = neurodiag.scan(nn.Sequential(fc, nn.ReLU()), batches).rows[0]
    assert got["activation"] == "relu"
    for column in ("dead_pct", "inactive_pct", "mag", "dormant_pct"):
        assert got[column] == pytest.approx(want[column], rel=1e-6), column


class _GeluBeyond(nn.Module):
    """F.gelu on the naming probe's grid, but 2x beyond |z| > 50: the same name, not σ'."""

    def forward(self, x: Tensor) -> Tensor:
        return torch.where(x.abs() > 50, 2 * x, F.gelu(x))


def _identified(model: nn.Module, batches: list[Tensor]) -> dict[str, bool]:
    """Which unknown modules a Monitor's recorder measured with a registered σ'."""
    with neurodiag.Monitor(model) as mon:
        for x in batches:
            model(x).sum().backward()
    found = mon._recorder._identified
    return {type(m).__name__: d is not None for m, d in found.items()}


@pytest.mark.parametrize(
    ("make", "scale", "identified"),
    [
        (lambda: _hf_activation("GELUActivation"), 1.0, True),  # F.gelu: gelu's own σ'
        (lambda: _hf_activation("SiLUActivation"), 1.0, True),
        (lambda: _hf_activation("NewGELUActivation"), 1.0, False),  # its own tanh formula
        (_GeluBeyond, 1.0, True),  # the first batch never goes beyond 50
        (_GeluBeyond, 100.0, False),  # it does: the values differ, autograd's σ' stays
    ],
)
def test_an_unknown_module_computing_a_registered_function_gets_its_derivative(
    make: Callable[[], nn.Module], scale: float, identified: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The registered σ' replaces autograd's only where the first call's outputs and σ' equal
    the registered function's exactly, and the scan's numbers are autograd's either way."""
    torch.manual_seed(0)
    act = make()
    model = nn.Sequential(nn.Linear(4, 32), act)
    batches = [torch.randn(16, 4) * scale for _ in range(2)]
    assert _identified(model, batches) == {type(act).__name__: identified}
    got = neurodiag.scan(model, batches).rows[0]
    monkeypatch.setattr(  # autograd's σ' for every call
        SiteRecorder, "_identify_derivative", lambda self, m, name, z, a, autograd: autograd
    )
    want = neurodiag.scan(model, batches).rows[0]
    for column in ("dead_pct", "inactive_pct", "mag", "dormant_pct", "min_abs_deriv"):
        assert got[column] == want[column], column
