"""The load-then-scan step shared by ``scan`` and ``check`` (loading also by ``compare``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from neurodiag.cli.common import (
    DeadWindow,
    Device,
    Mode,
    count_batches,
    init_distributed,
    is_rank_zero,
    parse_feature_dims,
    parse_shape,
    progress_bar,
    resolve_device,
)
from neurodiag.config import ScanConfig
from neurodiag.report.model import Report


def load_model_and_data(
    model: str,
    *,
    data: str | None,
    weights: Path | None,
    device: Device,
    seed: int | None,
    batch_size: int | None,
    max_batches: int | None,
    input_shape: str | None,
    target: str | None,
) -> tuple[Any, Any]:
    """(LoadedModel, DataSource), after joining torchrun's process group if there is one."""
    from neurodiag.loading import load_data, load_model

    torch_device = init_distributed(resolve_device(device))
    # Seed before building the model: a model file that initialises randomly is then the
    # same model on every run and on every rank of a torchrun job.
    torch.manual_seed(seed if seed is not None else 0)
    loaded = load_model(model, weights=str(weights) if weights else None, device=torch_device)
    source = load_data(
        data,
        model=loaded.model,
        loaded=loaded,
        batch_size=batch_size,
        num_batches=max_batches,
        seed=seed,
        input_shape=parse_shape(input_shape),
        target=target,
    )
    return loaded, source


def scan_config(
    *,
    eps: float,
    tau: float,
    dead_window: DeadWindow,
    mode: Mode,
    include: list[str],
    exclude: list[str],
    feature_dim: list[str],
    max_batches: int | None,
    seed: int | None,
    timeout: float | None,
    forward_only: bool = False,
    flag_gates: bool = False,
) -> ScanConfig:
    """The ``ScanConfig`` of the measuring flags shared by scan, check and compare."""
    return ScanConfig(
        eps=eps,
        tau=tau,
        dead_window=dead_window.value,
        gradients=not forward_only,
        mode=mode.value,
        include=tuple(include),
        exclude=tuple(exclude),
        feature_dims=parse_feature_dims(feature_dim),
        max_batches=max_batches,
        seed=seed if seed is not None else 0,
        timeout_s=timeout,
        flag_gates=flag_gates,
    )


def scan_from_options(
    model: str,
    config: ScanConfig,
    *,
    data: str | None,
    weights: Path | None,
    device: Device,
    batch_size: int | None,
    input_shape: str | None,
    target: str | None,
    progress: bool,
) -> Report:
    """Everything ``neurodiag scan`` does between parsing and rendering.

    Raises ``ScanInterrupted`` on Ctrl-C: each command decides what a partial scan means.
    """
    from neurodiag.scan import scan as run_scan

    loaded, source = load_model_and_data(
        model,
        data=data,
        weights=weights,
        device=device,
        seed=config.seed,
        batch_size=batch_size,
        max_batches=config.max_batches,
        input_shape=input_shape,
        target=target,
    )
    total = count_batches(source.batches, config.max_batches)
    with progress_bar(total, progress and is_rank_zero()) as on_batch:
        return run_scan(
            loaded.model,
            source.batches,
            config,
            loss_fn=loaded.hook("loss_fn"),
            on_batch=on_batch,
            model_name=loaded.name,
            data_name=source.description,
        )
