"""The scan's backward asks for the input gradient only when that reaches every site."""

from __future__ import annotations

import torch

import neurodiag
from neurodiag.grad_targets import all_reach, choose_targets
from tests.fixtures.models import ZOO, make_batches


def _leaf_and_fed(shape: tuple[int, ...] = (4, 3)) -> tuple[torch.Tensor, torch.Tensor]:
    leaf = torch.randn(shape, requires_grad=True)
    return leaf, leaf.clone()


def test_chain_reaches_the_input() -> None:
    leaf, fed = _leaf_and_fed()
    w = torch.randn(3, 3, requires_grad=True)
    a1 = torch.relu(fed @ w)
    a2 = torch.tanh(a1 @ w)
    assert all_reach([a2.grad_fn, a1.grad_fn], {fed.grad_fn})
    assert choose_targets([leaf], [fed], [w], [a1.grad_fn, a2.grad_fn]) == [leaf]


def test_a_parameter_only_branch_does_not_reach() -> None:
    leaf, fed = _leaf_and_fed()
    gate = torch.randn(3, requires_grad=True)
    g = torch.sigmoid(gate)
    a = torch.relu(fed) * g
    assert all_reach([a.grad_fn], {fed.grad_fn})  # the product meets the input on one side
    assert not all_reach([g.grad_fn], {fed.grad_fn})
    assert not all_reach([a.grad_fn, g.grad_fn], {fed.grad_fn})
    targets = choose_targets([leaf], [fed], [gate], [a.grad_fn, g.grad_fn])
    assert targets[0] is leaf and targets[1] is gate


def test_an_output_without_a_node_never_reaches() -> None:
    _, fed = _leaf_and_fed()
    assert not all_reach([None], {fed.grad_fn})


def test_no_float_input_asks_for_the_parameters() -> None:
    w = torch.randn(2, requires_grad=True)
    assert choose_targets([], [], [w], []) == [w]


def test_diamond_graph_settles_shared_nodes_once() -> None:
    _, fed = _leaf_and_fed()
    h = torch.relu(fed)
    left, right = torch.sigmoid(h), torch.tanh(h)
    top = left * right
    assert all_reach([top.grad_fn, left.grad_fn, right.grad_fn, h.grad_fn], {fed.grad_fn})
    dead_end = torch.sigmoid(torch.randn(3, requires_grad=True))
    assert not all_reach([top.grad_fn, dead_end.grad_fn], {fed.grad_fn})


def test_scan_computes_no_weight_gradient_when_the_input_reaches_every_site() -> None:
    """Weight gradients are work nobody asked for: a user hook on a weight never fires."""
    model = ZOO["inplace_relu"]().double()
    batches = make_batches("inplace_relu", model)
    calls: list[int] = []
    handle = model.fc2.weight.register_hook(lambda g: calls.append(1))
    try:
        report = neurodiag.scan(model, batches)
    finally:
        handle.remove()
    assert calls == []
    assert all(row["mag"] > 0 for row in report.rows)


def test_scan_asks_for_parameters_when_a_site_needs_them() -> None:
    model = ZOO["param_gate"]().double()
    batches = make_batches("param_gate", model)
    calls: list[int] = []
    handle = model.gate.register_hook(lambda g: calls.append(1))
    try:
        report = neurodiag.scan(model, batches)
    finally:
        handle.remove()
    assert len(calls) == len(batches)
    assert report.row("<root>:sigmoid#0")["mag"] > 0


def test_frozen_model_fed_token_ids_still_gets_gradients() -> None:
    model = ZOO["sequence"]().double()
    for p in model.parameters():
        p.requires_grad_(False)
    report = neurodiag.scan(model, make_batches("sequence", model))
    assert all(row["mag"] > 0 for row in report.rows)
    assert not any(p.requires_grad for p in model.parameters())


def test_forward_only_scan_builds_no_graph_and_matches_the_forward_columns() -> None:
    model = ZOO["functional"]().double()
    batches = make_batches("functional", model)
    grad_enabled: list[bool] = []
    handle = model.fc1.register_forward_hook(
        lambda m, i, o: grad_enabled.append(torch.is_grad_enabled())
    )
    try:
        forward_only = neurodiag.scan(model, batches, gradients=False)
    finally:
        handle.remove()
    full = neurodiag.scan(model, batches)
    assert grad_enabled == [False] * len(batches)
    assert forward_only.header.loss.startswith("none")
    assert forward_only.sites == full.sites
    for site in full.sites:
        got, want = forward_only.row(site), full.row(site)
        for key in ("dead_pct", "dormant_pct", "min_abs_deriv", "nonfinite"):
            assert got[key] == want[key], (site, key)
        assert got["mag"] != got["mag"]  # NaN: no gradient was measured
