"""Treating what a scan found: ``recycle`` (ReDo) dead and dormant units in place of a copy."""

from neurodiag.treat.during_training import Recycler
from neurodiag.treat.recycle import (
    Link,
    RecycleResult,
    TreatedSite,
    before_after,
    output_change,
    recycle,
    swap_failing,
    topology,
)

__all__ = [
    "Link",
    "RecycleResult",
    "Recycler",
    "TreatedSite",
    "before_after",
    "output_change",
    "recycle",
    "swap_failing",
    "topology",
]
