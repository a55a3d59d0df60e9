"""N-ReLU (Noise-ReLU, arXiv 2511.07559): ReLU whose negative side is zero-mean noise in training.

In training mode every input ``x <= 0`` is replaced by a draw of N(0, σ²), so the expected
output equals ReLU(x) while the negative side is no longer a constant zero; in eval mode the
module is exactly ReLU. The noise does not depend on ``x``, so the local derivative is
σ'(x) = 1 for x > 0 and 0 otherwise in both modes (what autograd propagates, and what
neurodiag's registry reports): N-ReLU changes the forward signal, not the derivative test.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class NReLU(nn.Module):
    """ReLU in eval mode; in training, negative inputs become Gaussian noise of std ``sigma``."""

    def __init__(self, sigma: float = 0.1) -> None:
        super().__init__()
        if not (math.isfinite(sigma) and sigma >= 0):
            raise ValueError(f"sigma must be a finite number >= 0, got {sigma!r}")
        self.sigma = float(sigma)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.sigma == 0:
            return torch.relu(x)
        noise = torch.randn_like(x) * self.sigma
        return torch.where(x > 0, x, noise)

    def extra_repr(self) -> str:
        return f"sigma={self.sigma}"
