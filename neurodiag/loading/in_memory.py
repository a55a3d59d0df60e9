"""Batches held in memory, for the commands that go over them more than once (treat, compare)."""

from __future__ import annotations

import itertools
from typing import Any

from neurodiag.errors import NeurodiagError

#: A loader without a length that gives more than this many batches (an endless generator) is
#: refused instead of filling memory forever.
MAX_UNSIZED_BATCHES = 1000


def materialise_batches(batches: Any, command: str) -> list[Any]:
    """The batches as a list; a loader with no ``len()`` that does not end within
    ``MAX_UNSIZED_BATCHES`` is a one-line error naming ``command``."""
    try:
        len(batches)
    except TypeError:
        taken = list(itertools.islice(batches, MAX_UNSIZED_BATCHES + 1))
        if len(taken) > MAX_UNSIZED_BATCHES:
            raise NeurodiagError(
                f"the data has no length and gave more than {MAX_UNSIZED_BATCHES} batches (an "
                f"endless loader?); {command} keeps every batch in memory: pass --max-batches N"
            ) from None
        return taken
    return list(batches)


def count_batches(batches: Any, cap: int | None) -> int | None:
    """How many batches a scan will see (for a progress bar): ``len`` capped, else the cap."""
    try:
        n = len(batches)
    except TypeError:
        return cap
    return min(n, cap) if cap else n
