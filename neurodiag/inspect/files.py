"""``inspect`` from the files a user names: a model spec, its weights, an optimizer state and
initial weights (all read with weights_only), as ``neurodiag inspect`` reads them."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import torch

from neurodiag.inspect.layers import inspect, optimizer_state_dict
from neurodiag.loading.model_spec import load_model
from neurodiag.loading.weights import extract_state_dict, read_checkpoint


def inspect_files(
    model: str,
    *,
    weights: Path | None = None,
    optimizer: Path | None = None,
    initial: Path | None = None,
) -> pd.DataFrame:
    """``inspect()`` of the model ``model`` names (``file.py``, ``file.py:factory``,
    ``package.module:attr``) with ``weights`` loaded, against an ``optimizer.state_dict()`` file
    (ν-dead rows) and an ``initial`` state dict (weight_distance). A model file that initialises
    randomly builds the same model on every run (seed 0, the caller's RNG left as it was)."""
    opt_state = None
    if optimizer is not None:
        raw = read_checkpoint(str(optimizer), what="--optimizer file")
        opt_state = optimizer_state_dict(raw, where=f"--optimizer file '{optimizer}'")
    start = None
    if initial is not None:
        start = extract_state_dict(
            read_checkpoint(str(initial), what="--initial file"), str(initial)
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        loaded = load_model(model, weights=str(weights) if weights else None, device="cpu")
    return inspect(loaded.model, optimizer=opt_state, initial=start)
