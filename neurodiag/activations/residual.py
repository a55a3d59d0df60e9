"""Skip connections around Linear → activation blocks: the paper's ReLU_res baseline.

``add_residuals(model)`` rewrites every ``nn.Sequential`` in place: a layer whose output has its
input's shape (``Linear`` with in = out features; ``Conv1d/2d/3d`` with in = out channels,
stride 1, no dilation and "same" padding) followed by an activation module becomes
``Residual(layer, activation)``: x + σ(W x + b). Blocks that change the width (the first and last
layers of an MLP) and activations outside a Sequential are left alone and counted, so a
comparison can say how many blocks got a skip connection.
"""

from __future__ import annotations

from torch import Tensor, nn

from neurodiag.activations.normalized import NormalizedActivation
from neurodiag.activations.registry import REGISTRY, looks_like_activation


class Residual(nn.Module):
    """``x + activation(layer(x))``."""

    def __init__(self, layer: nn.Module, activation: nn.Module) -> None:
        super().__init__()
        self.layer = layer
        self.activation = activation

    def forward(self, x: Tensor) -> Tensor:
        out: Tensor = x + self.activation(self.layer(x))
        return out


def add_residuals(model: nn.Module) -> int:
    """Wrap every shape-preserving (layer, activation) pair of a Sequential; returns how many."""
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
