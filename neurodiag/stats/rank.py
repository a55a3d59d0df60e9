"""Representation rank (opt-in, ``rank=True``): effective rank and srank of a site's activations.

σ are the singular values of the site's activation matrix A (rows: every sample × position the
scan saw, columns: neurons). They come from a streaming Gram matrix G = AᵀA summed per call in
float64 (``reductions.gram_of``; a "sum" state, so batches, Monitor windows and ranks merge like
every other state): σ_i = sqrt(λ_i(G)), eigenvalues clipped at 0.

* ``effective_rank`` = exp(H(p)), p_i = σ_i / Σσ (Roy & Vetterli 2007; Plasticine; Dohare et al.
  2024 report it too).
* ``srank`` = the smallest k with Σ_{i≤k} σ_i / Σσ ≥ 0.99 (Kumar et al. 2021, δ = 0.01;
  Plasticine's "stable rank").

Rows with a non-finite entry are left out whole. A site with more than ``rank_max_neurons``
neurons gets no Gram state (it would be neurons² float64) and reads NaN.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from neurodiag.stats.base import StateSpec
from neurodiag.stats.statistic import Array, Column, Computed, SiteContext, Statistic

#: 1 − δ of Kumar et al. (2021): srank keeps 99 % of Σσ.
SRANK_MASS = 0.99


@dataclass(frozen=True)
class MatrixStateSpec(StateSpec):
    """A (neurons, neurons) float64 state; sites above ``max_neurons`` do not get it."""

    max_neurons: int | None = None

    def initial(self, neurons: int, device: torch.device, dtype: torch.dtype) -> Tensor:
        return torch.zeros((neurons, neurons), device=device, dtype=torch.float64)


def singular_values(gram: Array) -> Array:
    """σ of A from G = AᵀA, largest first.

    eigvalsh resolves the eigenvalues of G only to about n·ε·λ_max (ε: float64's), so an
    eigenvalue below that is rounding, not signal, and counts as 0: a rank-deficient A (a ReLU
    layer with dead units, a low-rank map) then reads its exact rank instead of a tail of
    ~sqrt(n·ε)·σ_max noise. Genuine σ below ~1e-7·σ_max are lost with them (their share of Σσ
    is below 1e-7·n).
    """
    gram = np.asarray(gram, dtype=np.float64)
    if gram.size == 0:
        return np.zeros(0)
    lam = np.linalg.eigvalsh(gram)[::-1]
    floor = max(float(lam[0]), 0.0) * gram.shape[0] * np.finfo(np.float64).eps
    return np.sqrt(np.where(lam > floor, lam, 0.0))


def effective_rank(sigma: Array) -> float:
    """exp of the Shannon entropy of σ / Σσ; 0 for a zero matrix."""
    total = float(sigma.sum())
    if total <= 0:
        return 0.0
    p = sigma[sigma > 0] / total
    return float(np.exp(-np.sum(p * np.log(p))))


def srank(sigma: Array, mass: float = SRANK_MASS) -> int:
    """The smallest k with Σ_{i≤k} σ_i ≥ ``mass`` · Σσ (σ largest first); 0 for a zero matrix."""
    total = float(sigma.sum())
    if total <= 0:
        return 0
    kept = np.cumsum(sigma) / total
    return int(np.argmax(kept >= mass)) + 1 if kept[-1] >= mass else len(sigma)


class RepresentationRank(Statistic):
    """``effective_rank`` and ``srank`` of a site from its streaming Gram matrix."""

    name = "rank"
    columns = (
        Column(
            "effective_rank",
            "float64",
            "value",
            "opt-in (--rank): exp(H(σ/Σσ)), σ the singular values of the site's "
            "(samples × positions, neurons) activation matrix",
            unhealthy="low",
            title="eff.\nrank",
            table=False,  # CSV, JSON and Markdown: the terminal table keeps its width
        ),
        Column(
            "srank",
            "Int64",
            "count",
            "opt-in (--rank): the smallest k with Σ_{i≤k} σ_i / Σσ ≥ 0.99",
            unhealthy="low",
            table=False,
        ),
    )

    def state_specs(self) -> tuple[StateSpec, ...]:
        if not self.config.rank:
            return ()
        return (
            MatrixStateSpec("gram", "sum", max_neurons=self.config.rank_max_neurons),
            StateSpec("gram_rows", "sum", per_neuron=False, count=True),
        )

    def compute(
        self, states: Mapping[str, Array], row: Mapping[str, Any], ctx: SiteContext
    ) -> Computed:
        if "gram" not in states:
            if self.config.rank:
                warnings.warn(
                    f"neurodiag: no representation rank at a site with {ctx.neurons} neurons "
                    f"(> rank_max_neurons={self.config.rank_max_neurons}: its Gram matrix "
                    "would be neurons² float64); effective_rank and srank are empty there",
                    RuntimeWarning,
                    stacklevel=2,
                )
            return Computed({"effective_rank": [math.nan] * ctx.sites, "srank": [None] * ctx.sites})
        ranks: list[float] = []
        sranks: list[int | None] = []
        sigmas: list[Array | None] = []
        for gram, rows in zip(states["gram"], states["gram_rows"], strict=True):  # one per site
            if float(rows) == 0:  # no finite row: nothing measured
                ranks.append(math.nan)
                sranks.append(None)
                sigmas.append(None)
                continue
            sigma = singular_values(gram)
            sigmas.append(sigma)
            ranks.append(effective_rank(sigma))
            sranks.append(srank(sigma))
        return Computed({"effective_rank": ranks, "srank": sranks}, {"singular_values": sigmas})
