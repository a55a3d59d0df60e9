"""A small CNN for 3x32x32 images: three Conv-BatchNorm-ReLU(inplace=True) blocks, pool, Linear.

Demonstrates in-place activations (``nn.ReLU(inplace=True)`` overwrites its input, so the
pre-activation must be captured before it runs) and channel-wise neurons of conv tensors
(N, C, H, W). ``small_cnn.yaml`` scans it on synthetic inputs; without a data spec the input
shape is inferred from the first conv layer.
"""

from __future__ import annotations

from torch import Tensor, nn


def conv_block(in_channels: int, out_channels: int) -> nn.Sequential:
    """Conv 3x3 -> BatchNorm -> ReLU (in place) -> 2x2 max pool."""
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class SmallCNN(nn.Module):
    """16 -> 32 -> 64 channels, global average pool, linear classifier."""

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.features = nn.Sequential(conv_block(3, 16), conv_block(16, 32), conv_block(32, 64))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(64, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        logits: Tensor = self.classifier(self.pool(self.features(x)).flatten(1))
        return logits


def build_model() -> SmallCNN:
    """The model neurodiag scans for ``small_cnn.py``."""
    return SmallCNN()
