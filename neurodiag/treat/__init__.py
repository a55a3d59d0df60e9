"""Treating what a scan found: ``recycle`` (ReDo, or ReGraMa on the pre-activation gradient)
dead and dormant units, or swap a failing site's activation, and prove it with a re-scan; keep
plasticity during training with a ``Recycler`` (those, Shrink & Perturb, continual backprop)."""

from neurodiag.treat.cbp import ContinualBackprop
from neurodiag.treat.during_training import Recycler
from neurodiag.treat.gradients import PreActivationGrads, grama_scores, measure_grama
from neurodiag.treat.proof import assess, before_after, input_cosine, output_change
from neurodiag.treat.recycle import (
    Outcome,
    RecycleResult,
    StillDead,
    TreatedSite,
    recycle,
    swap_failing,
)
from neurodiag.treat.topology import Link, Topology, TopologyTrace, topology

__all__ = [
    "ContinualBackprop",
    "Link",
    "Outcome",
    "PreActivationGrads",
    "RecycleResult",
    "Recycler",
    "StillDead",
    "Topology",
    "TopologyTrace",
    "TreatedSite",
    "assess",
    "before_after",
    "grama_scores",
    "input_cosine",
    "measure_grama",
    "output_change",
    "recycle",
    "swap_failing",
    "topology",
]
