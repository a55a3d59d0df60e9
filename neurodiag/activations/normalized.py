"""Batch normalisation in front of an activation: the paper's SELU_BN and its Bernstein layer.

The paper (arXiv 2602.04264) trains its Bernstein networks with batch normalisation before each
Bernstein activation ("re-parameterisation plus batch normalization"), so that pre-activations
stay where the polynomial is defined; its SELU_BN baseline does the same for SELU. ``:bn`` on any
activation spec (``selu:bn``, ``bern9:bn``) builds ``NormalizedActivation``: a ``BatchNorm`` over
the site's neuron axis (learnable affine, running statistics, PyTorch's defaults), then the
activation. Where the paper is silent (decision): the norm is per neuron, with PyTorch's
momentum and eps; Bernstein's [l, u] is the spec's range ([−5, 5] by default), which holds a
normalised pre-activation at ±5 std, and outside it the linear extension keeps σ' ≥ δ̄.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import Tensor, nn


class FeatureBatchNorm(nn.Module):
    """``BatchNorm1d`` over dim ``feature_dim`` of any layout ((N, F), (N, T, F), (N, C, H, W))."""

    def __init__(self, num_features: int, feature_dim: int = 1) -> None:
        super().__init__()
        self.norm = nn.BatchNorm1d(num_features)
        self.feature_dim = feature_dim

    def forward(self, x: Tensor) -> Tensor:
        dim = self.feature_dim % x.dim()
        if x.dim() == 2 and dim == 1:
            out: Tensor = self.norm(x)
            return out
        moved = x.movedim(dim, 1)
        flat = moved.reshape(moved.shape[0], moved.shape[1], -1)
        normed: Tensor = self.norm(flat)
        return normed.reshape(moved.shape).movedim(1, dim)


class NormalizedActivation(nn.Module):
    """``activation(batch_norm(z))``; initialisers and δ̄ are the inner activation's."""

    def __init__(self, num_features: int, feature_dim: int, activation: nn.Module) -> None:
        super().__init__()
        self.norm = FeatureBatchNorm(num_features, feature_dim)
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = self.activation(self.norm(x))
        return out

    def init_critical(self) -> None:
        init = getattr(self.activation, "init_critical", None)
        if callable(init):
            init()

    def init_from(self, fn: Callable[[Tensor], Tensor]) -> Any:
        init = getattr(self.activation, "init_from", None)
        return init(fn) if callable(init) else None
