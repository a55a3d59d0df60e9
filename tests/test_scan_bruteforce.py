"""Every per-site statistic against a brute-force computation over the full tensors."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn.functional as F
from torch import Tensor

import neurodiag
from tests.fixtures.models import ZOO, make_batches

EPS = 1e-3
TAU = 0.1


def _flatten(t: Tensor, feature_dim: int) -> Tensor:
    """(positions, neurons) view of an activation tensor."""
    return t.movedim(feature_dim, -1).reshape(-1, t.shape[feature_dim])


def brute_force(
    name: str, model: torch.nn.Module, batches: list[tuple[Tensor, Tensor]]
) -> dict[str, dict[str, float]]:
    ref_model = copy.deepcopy(model).eval()
    per_site: dict[str, dict[str, list[Tensor]]] = {}
    order: list[str] = []
    for x, y in batches:
        out, sites = ref_model.reference(x)  # type: ignore[operator]
        for _, _, a, _, _ in sites:
            a.retain_grad()
        F.cross_entropy(out, y).backward()
        for site, z, a, fn, fdim in sites:
            zz = z.detach().requires_grad_(True)
            (deriv,) = torch.autograd.grad(fn(zz).sum(), zz)
            slot = per_site.setdefault(site, {"d": [], "a": [], "g": []})
            if site not in order:
                order.append(site)
            slot["d"].append(_flatten(deriv.abs(), fdim))
            slot["a"].append(_flatten(a.detach().abs(), fdim))
            slot["g"].append(_flatten(a.grad.abs(), fdim))
    result = {}
    for site in order:
        d = torch.cat(per_site[site]["d"])
        a = torch.cat(per_site[site]["a"])
        g = torch.cat(per_site[site]["g"])
        act_mean = a.mean(0)
        grad_mean = g.mean(0)
        act_score = act_mean / act_mean.mean()
        grad_score = grad_mean / grad_mean.mean()
        result[site] = {
            "neurons": d.shape[1],
            "dead_pct": 100.0 * float((d <= EPS).all(0).double().mean()),
            "dormant_pct": 100.0 * float((act_score <= TAU).double().mean()),
            "grad_dormant_pct": 100.0 * float((grad_score <= TAU).double().mean()),
            "mag": float(g.mean()),
            "min_abs_deriv": float(d.min()),
        }
    return result


@pytest.mark.parametrize("name", sorted(ZOO))
def test_scan_matches_brute_force(name: str) -> None:
    torch.manual_seed(0)
    model = ZOO[name]().double()
    batches = make_batches(name, model)
    expected = brute_force(name, model, batches)
    report = neurodiag.scan(model, batches, eps=EPS, tau=TAU)
    assert report.sites == list(expected), "sites must be reported in forward execution order"
    for site, want in expected.items():
        got = report.row(site)
        assert got["neurons"] == want["neurons"], site
        assert got["dead_pct"] == pytest.approx(want["dead_pct"], abs=1e-9), site
        assert got["dormant_pct"] == pytest.approx(want["dormant_pct"], abs=1e-9), site
        assert got["grad_dormant_pct"] == pytest.approx(want["grad_dormant_pct"], abs=1e-9), site
        assert got["mag"] == pytest.approx(want["mag"], rel=1e-9), site
        assert got["min_abs_deriv"] == pytest.approx(want["min_abs_deriv"], rel=1e-9, abs=1e-12), (
            site
        )
        assert got["nonfinite"] == 0


def test_known_dead_neurons_are_found() -> None:
    """Biases of -50 make exactly those neurons dead: the zoo's "known dead" construction."""
    torch.manual_seed(0)
    model = ZOO["inplace_relu"]().double()
    report = neurodiag.scan(model, make_batches("inplace_relu", model))
    dead = report.neurons["act1"].dead
    assert dead[:4].all()
    assert report.row("act1")["dead_pct"] >= 100.0 * 4 / 16


def test_batch_dead_window_averages_per_batch_dead_fraction() -> None:
    torch.manual_seed(0)
    model = ZOO["reused_relu"]().double()
    batches = make_batches("reused_relu", model, n_batches=4)
    report = neurodiag.scan(model, batches, dead_window="batch")
    ref = copy.deepcopy(model)
    fractions = []
    for x, _ in batches:
        _, sites = ref.reference(x)
        z = sites[1][1]
        fractions.append(float((z <= 0).all(0).double().mean()))
    assert report.row("act#1")["dead_pct"] == pytest.approx(100 * sum(fractions) / len(fractions))
    assert report.header.dead_window == "batch"
