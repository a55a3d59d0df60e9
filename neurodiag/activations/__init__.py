"""Activations: the registry of what neurodiag can measure, the Bernstein module, swapping."""

from neurodiag.activations.bernstein import Bernstein

__all__ = ["Bernstein"]
