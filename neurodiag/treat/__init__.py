"""Treating what a scan found: ``recycle`` (ReDo) dead and dormant units in place of a copy."""

from neurodiag.treat.recycle import RecycleResult, TreatedSite, recycle

__all__ = ["RecycleResult", "TreatedSite", "recycle"]
