"""The paper's plain deep MLP: 50 hidden Linear(100) + ReLU layers, no residuals, no normalisation.

Demonstrates dead ReLU neurons piling up with depth when nothing (skip connections, normalisation)
keeps the pre-activations centred. Weights use He (Kaiming-normal) initialisation with zero biases,
the standard for deep ReLU nets: with PyTorch's default Linear init the signal shrinks by ~3x per
layer, reaches float32 denormals by layer ~40 and makes every matmul ~100x slower on a CPU.
The defaults fit scikit-learn's digits (64 features, 10 classes); ``plain_mlp.yaml`` scans it on
that data. Swap the activation with ``build_model(activation=nn.GELU)`` or by name with
neurodiag's activation swapping.
"""

from __future__ import annotations

from collections.abc import Callable

from torch import nn


def build_model(
    in_features: int = 64,
    width: int = 100,
    depth: int = 50,
    num_classes: int = 10,
    activation: Callable[[], nn.Module] = nn.ReLU,
) -> nn.Sequential:
    """``depth`` hidden layers of ``width`` units, each Linear followed by its own activation."""
    layers: list[nn.Module] = []
    features = in_features
    for _ in range(depth):
        layers += [nn.Linear(features, width), activation()]
        features = width
    layers.append(nn.Linear(features, num_classes))
    for layer in layers:
        if isinstance(layer, nn.Linear):
            nn.init.kaiming_normal_(layer.weight, nonlinearity="relu")
            nn.init.zeros_(layer.bias)
    return nn.Sequential(*layers)


def build_mnist1d_model() -> nn.Sequential:
    """The 50×100 plain MLP for MNIST-1D (40 features): ``plain_mlp.py:build_mnist1d_model``."""
    return build_model(in_features=40)


def build_mnist_model() -> nn.Sequential:
    """The 50×100 plain MLP for MNIST (784 pixels, 10 classes): ``build_mnist_model``."""
    return build_model(in_features=784)


def build_higgs_model() -> nn.Sequential:
    """The 50×100 plain MLP for HIGGS (28 features, 2 classes): ``build_higgs_model``."""
    return build_model(in_features=28, num_classes=2)
