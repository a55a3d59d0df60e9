"""A seeded, stratified-enough held-out split of in-memory (x, y) batches for compare's accuracy."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
from torch import Tensor


def holdout_split(
    batches: Iterable[Any], fraction: float, seed: int
) -> tuple[list[Any], list[Any]] | None:
    """Split samples of ``(x, y)`` tensor batches into train/held-out batches of the same size.

    Returns None when the batches are not plain ``(x, y)`` tensor pairs (dicts, loaders of other
    shapes) or the data is too small: compare then reports no accuracy rather than guessing.
    """
    materialised = list(batches)
    if not 0 < fraction < 1 or not materialised:
        return None
    if not all(
        isinstance(b, (tuple, list)) and len(b) == 2 and all(isinstance(t, Tensor) for t in b)
        for b in materialised
    ):
        return None
    batch_size = int(materialised[0][0].shape[0])
    x = torch.cat([b[0] for b in materialised])
    y = torch.cat([b[1] for b in materialised])
    n = int(x.shape[0])
    n_eval = round(n * fraction)
    if n_eval < 1 or n - n_eval < 1:
        return None
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    eval_idx, train_idx = order[:n_eval], order[n_eval:]

    def batched(idx: Tensor) -> list[tuple[Tensor, Tensor]]:
        return [
            (x[idx[i : i + batch_size]], y[idx[i : i + batch_size]])
            for i in range(0, len(idx), batch_size)
        ]

    return batched(train_idx), batched(eval_idx)
