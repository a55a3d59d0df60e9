"""A run's inputs from what the user typed: the device to run on (joining torchrun's process
group first), the input shape and feature dims as text, and the model and data, seeded so that
a model file that initialises randomly is the same model on every run and on every rank."""

from __future__ import annotations

import os
from pathlib import Path

import torch
import torch.distributed as dist

from neurodiag.errors import NeurodiagError
from neurodiag.loading.data_spec import load_data
from neurodiag.loading.datasource import DataSource
from neurodiag.loading.model_spec import LoadedModel, load_model

DEVICES = ("auto", "cpu", "cuda", "mps")


def resolve_device(device: str) -> torch.device:
    """``auto``: CUDA, else MPS, else CPU; an accelerator asked for but absent is an error."""
    mps = getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()
    found = {"cuda": torch.cuda.is_available(), "mps": mps, "cpu": True}
    if device == "auto":
        device = next(name for name, available in found.items() if available)
    elif not found.get(device, False):
        raise NeurodiagError(
            f"--device {device} was asked for but {device.upper()} is not available; "
            "use --device cpu"
        )
    return torch.device(device)


def parse_shape(text: str | None) -> tuple[int, ...] | None:
    """``3,32,32`` (or ``3x32x32``, as ``--input-shape`` takes it) -> (3, 32, 32)."""
    if not text:
        return None
    try:
        shape = tuple(int(part) for part in text.replace("x", ",").split(",") if part.strip())
    except ValueError:
        raise NeurodiagError(
            f"--input-shape {text!r} is not a list of integers; write e.g. 3,32,32"
        ) from None
    if not shape or any(s <= 0 for s in shape):
        raise NeurodiagError(f"--input-shape {text!r} must be positive integers, e.g. 3,32,32")
    return shape


def parse_feature_dims(items: list[str]) -> dict[str, int]:
    """``["attn*=-1"]`` (``--feature-dim``, repeated) -> {"attn*": -1}: a ``ScanConfig``'s
    ``feature_dims``."""
    dims: dict[str, int] = {}
    for item in items:
        glob, sep, dim = item.rpartition("=")
        try:
            dims[glob] = int(dim)
        except ValueError:
            sep = ""
        if not sep or not glob:
            raise NeurodiagError(
                f"--feature-dim {item!r} must look like 'GLOB=DIM', e.g. 'attn*=-1'"
            )
    return dims


def join_process_group(device: torch.device) -> tuple[torch.device, bool]:
    """Under torchrun (WORLD_SIZE > 1) join the default process group, gloo on CPU, nccl on
    CUDA: (the device this rank runs on, ``cuda:LOCAL_RANK`` on GPUs; whether the group was
    created here, so the caller destroys it with ``leave_process_group``)."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or dist.is_initialized():
        return device, False
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return device, True


def leave_process_group() -> None:
    """Destroy the process group after every rank is done with it: a process that exits with a
    live gloo group aborts (SIGABRT: its C++ threads are still joinable at teardown), and the
    barrier keeps a rank that finished early from leaving while another is in a collective."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


def load_model_and_data(
    model: str,
    *,
    device: torch.device,
    data: str | None = None,
    weights: Path | None = None,
    seed: int | None = None,
    batch_size: int | None = None,
    num_batches: int | None = None,
    input_shape: tuple[int, ...] | None = None,
    target: str | None = None,
) -> tuple[LoadedModel, DataSource]:
    """The model ``model`` names, on ``device`` with ``weights``, and its data (``load_data``).

    Seeds torch (``seed``, default 0) before building the model: a model file that initialises
    randomly is then the same model on every run and on every rank of a torchrun job.
    """
    torch.manual_seed(seed if seed is not None else 0)
    loaded = load_model(model, weights=str(weights) if weights else None, device=device)
    source = load_data(
        data,
        model=loaded.model,
        loaded=loaded,
        batch_size=batch_size,
        num_batches=num_batches,
        seed=seed,
        input_shape=input_shape,
        target=target,
    )
    return loaded, source
