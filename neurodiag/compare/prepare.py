"""The batches ``compare`` trains (or scans) on and the samples it holds out for accuracy."""

from __future__ import annotations

from typing import Any

from neurodiag.compare.split import holdout_split
from neurodiag.errors import NeurodiagError
from neurodiag.loading.datasource import DataSource
from neurodiag.loading.in_memory import materialise_batches
from neurodiag.loading.synthetic import SyntheticBatches

#: Training on synthetic inputs (no ``--data``, no ``make_data()``) fits noise with a surrogate
#: loss: a loss or accuracy from that would mislead, so compare refuses (issue 26).
TRAINS_ON_NOISE = (
    "compare trains on your data: give --data (sklearn:NAME, a YAML, tensor files, "
    "loaders.py:fn) or a make_data() in the model file, or drop --epochs/--steps to scan only "
    "(synthetic inputs and a surrogate loss would train on noise)"
)


def compare_batches(
    source: DataSource, *, trains: bool, holdout: float, seed: int
) -> tuple[list[Any], list[Any] | None]:
    """(train batches, held-out batches or None), all in memory as compare goes over them again.

    Only a run that ``trains`` holds samples out (a ``holdout`` fraction, split with ``seed``),
    and it refuses synthetic inputs; batches that are not ``(x, y)`` pairs hold nothing out.
    """
    if trains and isinstance(source.batches, SyntheticBatches):
        raise NeurodiagError(TRAINS_ON_NOISE)
    batches = materialise_batches(source.batches, "compare")
    split = holdout_split(batches, holdout, seed) if trains and holdout > 0 else None
    return split if split is not None else (batches, None)
