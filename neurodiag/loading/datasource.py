"""The records every data loader returns and receives: ``DataSource`` and ``DataOptions``."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

DEFAULT_BATCH_SIZE = 64
DEFAULT_SEED = 0


@dataclass
class DataSource:
    """Re-iterable batches (see ``neurodiag.batch``) of CPU tensors, plus report facts."""

    batches: Iterable[Any]
    description: str
    num_samples: int | None


@dataclass(frozen=True)
class DataOptions:
    """Resolved options (call arguments over YAML values over defaults)."""

    batch_size: int = DEFAULT_BATCH_SIZE
    num_batches: int | None = None
    shuffle: bool = False
    seed: int = DEFAULT_SEED
    target: str | None = None
    input_shape: tuple[int, ...] | None = None

    def batching_note(self, *, shuffles: bool = True) -> str:
        """``"batch 64, shuffled (seed 0), first 4 batches"`` for descriptions."""
        parts = [f"batch {self.batch_size}"]
        if shuffles and self.shuffle:
            parts.append(f"shuffled (seed {self.seed})")
        if self.num_batches == 1:
            parts.append("first batch only")
        elif self.num_batches is not None:
            parts.append(f"first {self.num_batches} batches")
        return ", ".join(parts)
