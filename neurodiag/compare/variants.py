"""The models a comparison trains: the baseline as given plus one swapped copy per spec."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import torch
from torch import nn

from neurodiag.activations.residual import SKIPINIT_NOTE, Residual
from neurodiag.activations.specs import ActivationSpec, parse_spec
from neurodiag.compare.training import initialise
from neurodiag.errors import NeurodiagError
from neurodiag.registry import Registry
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

    A spec with ``:init=S`` (e.g. ``selu:init=lecun``) then has its copy's Linear/Conv weights
    re-initialised with ``S`` (``initialise``), the RNG re-seeded with ``seed`` first: the same
    weights ``--init S`` would give the whole comparison. The baseline keeps ``model``'s weights
    (the comparison's ``--init``); the variant's notes say which init it got.
    """
    variants = [Variant(BASELINE, BASELINE, copy_model(model))]
    for spec in specs:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            swap_spec = replace(spec, init=None)  # the swap refuses init=: applied here
            result = swap_with_report(
                model, swap_spec, example_batch=example_batch, init="critical"
            )
            if spec.init is not None:
                torch.manual_seed(seed)
                initialise(result.model, spec.init)
        notes = [f"site {site} not swapped: {reason}" for site, reason in result.not_swapped]
        if not result.swapped:
            notes.append(f"{spec.name}: no activation site was swapped; this is the baseline")
        extra: list[str] = []
        if spec.init is not None:
            extra.append(
                f"weights re-initialised after the swap: init={spec.init} "
                f"({INIT_NAMES[spec.init]}), seed {seed}; the baseline keeps the comparison's init"
            )
        if spec.residual and any(isinstance(m, Residual) for m in result.model.modules()):
            extra.append(SKIPINIT_NOTE)
        variants.append(
            Variant(spec.name, spec.name, result.model, [*notes, *result.notes, *extra])
        )
    return variants


#: How a variant's notes describe its ``:init=`` scheme.
INIT_NAMES: Registry[str] = Registry("weight init")
INIT_NAMES.update(
    {
        "he": "Kaiming-normal, ReLU gain, zero biases",
        "lecun": "LeCun-normal N(0, 1/fan_in), zero biases",
        "xavier": "Xavier-normal, zero biases",
        "torch": "each layer's reset_parameters",
    }
)


def copy_model(model: nn.Module) -> nn.Module:
    try:
        return copy.deepcopy(model)
    except Exception as exc:
        raise NeurodiagError(f"cannot deep-copy the model to compare variants: {exc}") from exc
