"""Every per-site statistic against a brute-force computation over the full tensors."""

from __future__ import annotations

import copy
import math

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


def _masked(t: Tensor, ok: Tensor, fill: float) -> Tensor:
    return torch.where(ok, t, torch.full_like(t, fill))


def brute_force(
    name: str, model: torch.nn.Module, batches: list[tuple[Tensor, Tensor]]
) -> dict[str, dict[str, object]]:
    """Per-site and per-neuron numbers from the full tensors, over the finite entries only.

    Written from the definitions in docs/metrics.md, independently of neurodiag: a forward
    entry counts when z and a are finite, a gradient entry when ∂L/∂a is.
    """
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
            slot = per_site.setdefault(site, {"d": [], "a": [], "g": [], "ok": []})
            if site not in order:
                order.append(site)
            ok = torch.isfinite(z.detach()) & torch.isfinite(a.detach())
            slot["ok"].append(_flatten(ok, fdim))
            slot["d"].append(_flatten(deriv.abs(), fdim))
            slot["a"].append(_flatten(a.detach().abs(), fdim))
            slot["g"].append(_flatten(a.grad.abs(), fdim))
    result: dict[str, dict[str, object]] = {}
    for site in order:
        ok = torch.cat(per_site[site]["ok"])
        d = torch.cat(per_site[site]["d"])
        a = torch.cat(per_site[site]["a"])
        g = torch.cat(per_site[site]["g"])
        g_ok = torch.isfinite(g)
        count = ok.sum(0).double()
        g_count = g_ok.sum(0).double()
        act_mean = _masked(a, ok, 0).sum(0) / count
        grad_mean = _masked(g, g_ok, 0).sum(0) / g_count
        act_score = act_mean / act_mean.mean()
        grad_score = grad_mean / grad_mean.mean()
        dead = (~ok | (d <= EPS)).all(0)
        result[site] = {
            "neurons": d.shape[1],
            "dead_pct": 100.0 * float(dead.double().mean()),
            "zero_output_pct": 100.0 * float((~ok | (a == 0)).all(0).double().mean()),
            "dormant_pct": 100.0 * float((act_score <= TAU).double().mean()),
            "grad_dormant_pct": 100.0 * float((grad_score <= TAU).double().mean()),
            "mag": float(_masked(g, g_ok, 0).sum() / g_ok.sum()),
            "min_abs_deriv": float(d[ok].min()),
            "inactive_pct": 100.0 * float((d[ok] <= EPS).double().mean()),
            "nonfinite": int((~ok).sum() + (~g_ok).sum()),
            "per_neuron": {
                "dead": dead,
                "mean_abs_activation": act_mean,
                "mean_abs_grad": grad_mean,
                "max_abs_deriv": _masked(d, ok, -math.inf).amax(0),
                "min_abs_deriv": _masked(d, ok, math.inf).amin(0),
                "inactive_fraction": ((d <= EPS) & ok).sum(0) / count,
            },
        }
    return result


def assert_matches(report: neurodiag.Report, expected: dict[str, dict[str, object]]) -> None:
    """Every column and every per-neuron tensor of ``report`` equals the brute force."""
    assert report.sites == list(expected), "sites must be reported in forward execution order"
    for site, want in expected.items():
        got = report.row(site)
        assert got["neurons"] == want["neurons"], site
        for column in (
            "dead_pct", "zero_output_pct", "dormant_pct", "grad_dormant_pct", "inactive_pct"
        ):  # fmt: skip
            assert got[column] == pytest.approx(want[column], abs=1e-9), (site, column)
        assert got["mag"] == pytest.approx(want["mag"], rel=1e-9), site
        assert got["min_abs_deriv"] == pytest.approx(want["min_abs_deriv"], rel=1e-9, abs=1e-12)
        assert got["nonfinite"] == want["nonfinite"], site
        neurons = report.neurons[site]
        per_neuron = want["per_neuron"]
        assert isinstance(per_neuron, dict)
        for field, tensor in per_neuron.items():
            torch.testing.assert_close(
                getattr(neurons, field).to(tensor.dtype), tensor, rtol=1e-9, atol=1e-12,
                msg=lambda m, site=site, field=field: f"{site}.{field}: {m}",
            )  # fmt: skip


@pytest.mark.parametrize("name", sorted(ZOO))
def test_scan_matches_brute_force(name: str) -> None:
    torch.manual_seed(0)
    model = ZOO[name]().double()
    batches = make_batches(name, model)
    report = neurodiag.scan(model, batches, eps=EPS, tau=TAU)
    assert_matches(report, brute_force(name, model, batches))


def _poison(batches: list[tuple[Tensor, Tensor]]) -> list[tuple[Tensor, Tensor]]:
    """One NaN entry in one sample of the second batch."""
    poisoned = [(x.clone(), y) for x, y in batches]
    x = poisoned[1][0]
    x.view(x.shape[0], -1)[3, 1] = math.nan
    return poisoned


@pytest.mark.parametrize("name", ["inplace_relu", "smooth", "reused_relu", "conv", "functional"])
def test_scan_with_a_nan_input_matches_brute_force_over_finite_entries(name: str) -> None:
    torch.manual_seed(0)
    model = ZOO[name]().double()
    batches = _poison(make_batches(name, model))
    report = neurodiag.scan(model, batches, eps=EPS, tau=TAU)
    assert all(row["nonfinite"] > 0 for row in report.rows)
    assert_matches(report, brute_force(name, model, batches))


@pytest.mark.parametrize("name", ["inplace_relu", "smooth", "reused_relu", "functional"])
def test_one_nan_sample_leaves_dead_and_min_deriv_as_without_it(name: str) -> None:
    """The issue's "done when": the NaN sample's entries are counted and otherwise left out."""
    torch.manual_seed(0)
    model = ZOO[name]().double()
    batches = make_batches(name, model)
    poisoned = _poison(batches)
    x, y = batches[1]
    keep = torch.ones(x.shape[0], dtype=torch.bool)
    keep[3] = False
    without = [*batches[:1], (x[keep], y[keep]), *batches[2:]]
    got = neurodiag.scan(model, poisoned, eps=EPS, tau=TAU)
    want = neurodiag.scan(model, without, eps=EPS, tau=TAU)
    for site in want.sites:
        assert got.row(site)["dead_pct"] == want.row(site)["dead_pct"], site
        assert got.row(site)["min_abs_deriv"] == want.row(site)["min_abs_deriv"], site
        assert got.row(site)["nonfinite"] > 0 and want.row(site)["nonfinite"] == 0


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
