"""The models a comparison trains: the baseline as given plus one swapped copy per spec."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from neurodiag.activations.specs import ActivationSpec, parse_spec
from neurodiag.errors import NeurodiagError
from neurodiag.swap import swap_with_report

BASELINE = "baseline"


@dataclass
class Variant:
    name: str
    activation: str
    model: nn.Module
    notes: list[str] = field(default_factory=list)


def parse_specs(specs: Sequence[str]) -> list[ActivationSpec]:
    """All specs parsed up front, so a typo in the last one fails before any training."""
    if isinstance(specs, str):
        raise NeurodiagError(f"specs must be a list of activation specs, got the string {specs!r}")
    parsed = [parse_spec(text) for text in specs]
    names = [spec.name for spec in parsed]
    repeated = sorted({n for n in names if names.count(n) > 1 or n == BASELINE})
    if repeated:
        raise NeurodiagError(f"activation specs must be distinct; repeated: {', '.join(repeated)}")
    return parsed


def build_variants(
    model: nn.Module, specs: Sequence[ActivationSpec], example_batch: Any, seed: int
) -> list[Variant]:
    """Deep copies of ``model``: identical weights everywhere but in the new activations.

    Each swap runs with the global RNG seeded with ``seed`` inside ``fork_rng``, so building the
    variants is reproducible and leaves the caller's RNG as it was. Variants are trained from
    the model's weights, so learnable activations start in their trainable (critical) shape
    (``init="critical"``), not as a fit of the activation they replace: a ReLU fit by a
    Bernstein polynomial shrinks the gradient at every layer, and a deep plain MLP swapped to
    it collapses to a constant output.
    """
    variants = [Variant(BASELINE, BASELINE, copy_model(model))]
    for spec in specs:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            result = swap_with_report(model, spec, example_batch=example_batch, init="critical")
        notes = [f"site {site} not swapped: {reason}" for site, reason in result.not_swapped]
        if not result.swapped:
            notes.append(f"{spec.name}: no activation site was swapped; this is the baseline")
        variants.append(Variant(spec.name, spec.name, result.model, notes + result.notes))
    return variants


def copy_model(model: nn.Module) -> nn.Module:
    try:
        return copy.deepcopy(model)
    except Exception as exc:
        raise NeurodiagError(f"cannot deep-copy the model to compare variants: {exc}") from exc
