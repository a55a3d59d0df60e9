"""Which dim of an activation tensor indexes neurons (DESIGN.md "neuron").

Auto rule: dim 1 for (N, F) and channel-first (N, C, ...) tensors; for 3-D tensors the last dim
(N, T, F sequences) unless the module that ran just before the site is a 1-d conv/norm/pool, whose
outputs are channel-first (N, C, L); dim 0 for a 1-D tensor. Overridable per site by glob.
"""

from __future__ import annotations

from collections.abc import Mapping
from fnmatch import fnmatchcase

from torch import nn

_CHANNEL_FIRST_1D: tuple[type[nn.Module], ...] = (
    nn.Conv1d,
    nn.ConvTranspose1d,
    nn.BatchNorm1d,
    nn.InstanceNorm1d,
    nn.MaxPool1d,
    nn.AvgPool1d,
    nn.AdaptiveAvgPool1d,
    nn.AdaptiveMaxPool1d,
    nn.GroupNorm,
)


def auto_feature_dim(ndim: int, previous_module: nn.Module | None) -> int:
    if ndim <= 1:
        return 0
    if ndim == 3 and not isinstance(previous_module, _CHANNEL_FIRST_1D):
        return 2
    return 1


def override_feature_dim(names: tuple[str, ...], overrides: Mapping[str, int]) -> int | None:
    """The first override whose glob matches any of the site's names, else None."""
    for pattern, dim in overrides.items():
        if any(fnmatchcase(name, pattern) for name in names):
            return dim
    return None
