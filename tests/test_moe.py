"""Issue 26.5: Mixtral's experts measured as experts × units, each site one expert by its id."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import Tensor, nn

import neurodiag
from neurodiag.config import DEFAULT_EPS

pytest.importorskip("transformers")

from tests.fixtures.hf_models import build, tiny_mixtral

IMPLEMENTATIONS = ["mixtral", "mixtral_eager", "mixtral_batched"]
DEAD_EXPERT, DEAD_UNIT = 1, 5


def _model(name: str) -> nn.Module:
    if name == "mixtral_batched":
        return tiny_mixtral("batched_mm")
    return build(name)


def _kill_one_unit(model: nn.Module) -> None:
    """Unit DEAD_UNIT of expert DEAD_EXPERT only: its gate input is about -100 for every token.

    Hidden dim 0 of every embedding is large, so the normalised experts input is positive there;
    that unit's gate row reads only dim 0, with a large negative weight (SiLU' ≈ 0: dead).
    """
    with torch.no_grad():
        model.embed_tokens.weight[:, 0] = 100.0
        experts = model.layers[0].mlp.experts
        experts.gate_up_proj[DEAD_EXPERT, DEAD_UNIT] = 0.0
        experts.gate_up_proj[DEAD_EXPERT, DEAD_UNIT, 0] = -100.0


def _batches(seed: int) -> list[dict[str, Tensor]]:
    ids = torch.randint(0, 50, (4, 6), generator=torch.Generator().manual_seed(seed))
    return [{"input_ids": ids}]


def _by_hand(model: nn.Module, batches: list[dict[str, Tensor]]) -> dict[int, int]:
    """Dead units per expert from hand-written hooks: the router's choice and the experts input."""
    experts = model.layers[0].mlp.experts
    size = experts.intermediate_dim
    seen: dict[int, list[Tensor]] = {}

    def hook(module: nn.Module, args: tuple[Any, ...]) -> None:
        hidden, index = args[0], args[1]
        for expert in range(experts.num_experts):
            tokens = (index == expert).any(dim=-1)
            if tokens.any():
                gate = hidden[tokens] @ experts.gate_up_proj[expert, :size].T
                seen.setdefault(expert, []).append(gate)

    handle = experts.register_forward_pre_hook(hook)
    try:
        with torch.no_grad():
            for batch in batches:
                model(**batch)
    finally:
        handle.remove()
    dead = {}
    for expert, gates in seen.items():
        z = torch.cat(gates).double()
        s = torch.sigmoid(z)
        deriv = (s * (1 + z * (1 - s))).abs()
        dead[expert] = int((deriv <= DEFAULT_EPS).all(dim=0).sum())
    return dead


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_a_unit_dead_in_one_expert_is_counted(name: str) -> None:
    model = _model(name)
    _kill_one_unit(model)
    batches = _batches(0)
    report = neurodiag.scan(model, batches)
    experts = model.layers[0].mlp.experts
    expected = _by_hand(model, batches)
    assert DEAD_EXPERT in expected and expected[DEAD_EXPERT] == 1
    sites = {f"layers.0.mlp.experts.{e}.act_fn": e for e in expected}
    assert [s for s in report.sites if ".experts." in s] == sorted(sites)
    for site, expert in sites.items():
        row = report.row(site)
        assert row["neurons"] == experts.intermediate_dim
        want = 100.0 * expected[expert] / experts.intermediate_dim
        assert row["dead_pct"] == pytest.approx(want), site
    assert report.row(f"layers.0.mlp.experts.{DEAD_EXPERT}.act_fn")["dead_pct"] == pytest.approx(
        100.0 / experts.intermediate_dim
    )
    assert not any("mixture-of-experts" in n for n in report.header.notes)


@pytest.mark.parametrize("name", IMPLEMENTATIONS)
def test_expert_sites_are_named_by_expert_id_not_call_order(name: str) -> None:
    """Batches hitting different experts keep expert E's site named E, and across scans."""
    model = _model(name)
    _kill_one_unit(model)
    first = neurodiag.scan(model, _batches(0) + _batches(1))
    second = neurodiag.scan(model, _batches(2))
    for report in (first, second):
        dead = {s: report.row(s)["dead_pct"] for s in report.sites if ".experts." in s}
        assert dead[f"layers.0.mlp.experts.{DEAD_EXPERT}.act_fn"] > 0
        assert all(v == 0 for s, v in dead.items() if f".{DEAD_EXPERT}." not in s)


def test_eager_expert_sites_follow_routing_not_hit_order() -> None:
    """With only experts 2 and 3 hit, eager calls #0 and #1 are experts 2 and 3."""
    model = build("mixtral_eager")
    experts = model.layers[0].mlp.experts
    router = model.layers[0].mlp.gate

    def route(module: nn.Module, args: Any, output: Any) -> Any:
        logits, scores, index = output
        return logits, scores, torch.where(index % 2 == 0, 2, 3)

    handle = router.register_forward_hook(route)
    try:
        report = neurodiag.scan(model, _batches(0))
    finally:
        handle.remove()
    assert [s for s in report.sites if ".experts." in s] == [
        "layers.0.mlp.experts.2.act_fn",
        "layers.0.mlp.experts.3.act_fn",
    ]
    assert experts.num_experts == 4


def test_split_gradients_equal_the_eager_loops_per_expert() -> None:
    """grouped_mm and batched_mm split one call's ∂L/∂a by expert: each expert's MAG and
    gradient-dormant % equal the eager loop's, where every expert is its own call."""
    torch.manual_seed(0)
    eager = _model("mixtral_eager")
    batches = _batches(3)

    def rows(model: nn.Module) -> dict[str, dict[str, Any]]:
        report = neurodiag.scan(model, batches, mode="train")
        return {r["site"]: r for r in report.rows if ".experts." in r["site"]}

    want = rows(eager)
    assert want and all(r["mag"] > 0 for r in want.values())
    for name in ("mixtral", "mixtral_batched"):
        other = _model(name)
        other.load_state_dict(eager.state_dict())
        got = rows(other)
        assert set(got) == set(want)
        for site, row in want.items():
            assert got[site]["mag"] == pytest.approx(row["mag"], rel=1e-4), (name, site)
            assert got[site]["grad_dormant_pct"] == pytest.approx(row["grad_dormant_pct"])
