"""Skip connections around Linear → activation blocks: the paper's ReLU_res baseline.

``add_residuals(model)`` rewrites every ``nn.Sequential`` in place: a layer whose output has its
input's shape (``Linear`` with in = out features; ``Conv1d/2d/3d`` with in = out channels,
stride 1, no dilation and "same" padding) followed by an activation module becomes
``Residual(layer, activation)``: x + α·σ(W x + b). Blocks that change the width (the first and
last layers of an MLP) and activations outside a Sequential are left alone and counted, so a
comparison can say how many blocks got a skip connection.

The branch scale α is SkipInit (De & Smith, "Batch Normalization Biases Residual Blocks Towards
the Identity Function in Deep Networks", NeurIPS 2020, arXiv:2002.10444): one learnable scalar per
block, initialised to 0, so every block is the identity at initialisation and the network's
depth does not multiply the signal. The unscaled x + σ(W x + b) with He-initialised weights
more than doubles the variance per block (σ(W x) has x's second moment, and ReLU's positive mean
adds a cross term): the 49 blocks of the paper's 50×100 MLP give an output ~1e11 times the input's
std at init and a training loss of ~1e7 on digits. A fixed α = 1/√L (L blocks) is not enough for
ReLU either: the branch's positive mean makes the cross term O(α), and the output at init is still
~60× the input's std (it trains, from a loss of ~77).

Measuring with SkipInit: at α = 0 the branch weights get no gradient in the first optimiser step
(∂L/∂W = α·…), so at initialisation every branch site is grad-dormant (E|∂L/∂a| = 0, 100 %) by
construction, and its dead % describes the branch applied to the first layer's features (every
block's input is the same identity path), not a deep composition. Dead % after training is the
figure to compare.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from neurodiag.activations.normalized import NormalizedActivation
from neurodiag.activations.registry import REGISTRY, looks_like_activation

#: Said in a comparison's notes whenever ``:res`` wrapped a block.
SKIPINIT_NOTE = (
    "residual branches use SkipInit (learnable α = 0 at init, De & Smith 2020): every block is "
    "the identity at init, so the branch sites' grad-dormant % is 100 and their weights get no "
    "gradient before the first step has moved α; compare dead % after training"
)


class Residual(nn.Module):
    """``x + alpha * activation(layer(x))``; ``alpha`` is a learnable scalar (SkipInit: 0)."""

    def __init__(self, layer: nn.Module, activation: nn.Module, alpha: float = 0.0) -> None:
        super().__init__()
        self.layer = layer
        self.activation = activation
        ref = next(layer.parameters(), None)
        self.alpha = nn.Parameter(
            torch.full(
                (),
                float(alpha),
                dtype=ref.dtype if ref is not None and ref.is_floating_point() else None,
                device=ref.device if ref is not None else None,
            )
        )

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = x + self.alpha * self.activation(self.layer(x))
        return out


def add_residuals(model: nn.Module) -> int:
    """Wrap every shape-preserving (layer, activation) pair of a Sequential (α = 0: SkipInit);
    returns how many."""
    wrapped = 0
    for module in list(model.modules()):
        if not isinstance(module, nn.Sequential):
            continue
        children = list(module.children())
        rebuilt: list[nn.Module] = []
        i = 0
        while i < len(children):
            layer = children[i]
            follower = children[i + 1] if i + 1 < len(children) else None
            if follower is not None and _keeps_shape(layer) and _is_activation(follower):
                rebuilt.append(Residual(layer, follower))
                wrapped += 1
                i += 2
                continue
            rebuilt.append(layer)
            i += 1
        if len(rebuilt) != len(children):
            for name in list(module._modules):
                del module._modules[name]
            for index, child in enumerate(rebuilt):
                module.add_module(str(index), child)
    return wrapped


def _keeps_shape(layer: nn.Module) -> bool:
    if isinstance(layer, nn.Linear):
        return layer.in_features == layer.out_features
    if isinstance(layer, nn.modules.conv._ConvNd) and not layer.transposed:
        kernel, padding = layer.kernel_size, layer.padding
        same = padding == "same" or (
            isinstance(padding, tuple)
            and all(p == k // 2 and k % 2 for p, k in zip(padding, kernel))
        )
        return (
            layer.in_channels == layer.out_channels
            and all(s == 1 for s in layer.stride)
            and all(d == 1 for d in layer.dilation)
            and bool(same)
        )
    return False


def _is_activation(module: nn.Module) -> bool:
    if isinstance(module, NormalizedActivation):
        return True
    return REGISTRY.for_module(module) is not None or looks_like_activation(module)
