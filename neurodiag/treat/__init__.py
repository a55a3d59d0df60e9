"""Treating what a scan found: ``recycle`` (ReDo) dead and dormant units, or swap a failing
site's activation, and prove it with a re-scan."""

from neurodiag.treat.during_training import Recycler
from neurodiag.treat.proof import before_after, output_change
from neurodiag.treat.recycle import RecycleResult, TreatedSite, recycle, swap_failing
from neurodiag.treat.topology import Link, Topology, TopologyTrace, topology

__all__ = [
    "Link",
    "RecycleResult",
    "Recycler",
    "Topology",
    "TopologyTrace",
    "TreatedSite",
    "before_after",
    "output_change",
    "recycle",
    "swap_failing",
    "topology",
]
