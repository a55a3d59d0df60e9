"""GoLU, the Gompertz Linear Unit: x · exp(−exp(−x)) (Das et al., 2025).

A self-gated activation like GELU/SiLU, but with an asymmetric gate (the Gompertz curve) that
approaches 0 for negative inputs faster than it approaches 1 for positive ones.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

# Below this input the gate exp(−exp(−x)) is exactly 0 in float32 and float64; clamping there
# keeps exp(−x) finite so autograd never forms 0·inf = NaN.
_GATE_FLOOR = -80.0


def golu(x: Tensor) -> Tensor:
    """x · exp(−exp(−x)); half-precision inputs are computed in float32 (exp(80) overflows)."""
    xc = x.float() if x.dtype == torch.float16 else x
    gate = torch.exp(-torch.exp(-xc.clamp(min=_GATE_FLOOR)))
    return (xc * gate).to(x.dtype)


class GoLU(nn.Module):
    """Gompertz Linear Unit; its exact derivative is ``neurodiag.activations.derivatives.golu``."""

    def forward(self, x: Tensor) -> Tensor:
        return golu(x)
