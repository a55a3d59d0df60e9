"""The per-layer arithmetic of ``neurodiag.inspect``: pure functions of tensors, no model.

A layer's weight is read as a matrix of rows, one per output unit: ``weight.reshape(rows, -1)``
(a Conv's ``(out, in/groups, *kernel)`` kernel flattened per output channel). Every function
works on a detached copy, in float64 (float32 for the duplicate search of a float32-or-narrower
layer), and never writes its inputs. Definitions: docs/inspect.md.
"""

from __future__ import annotations

import math

import torch

#: A row is dead when its norm is at most this fraction of the layer's mean row norm.
DEAD_REL_TOL = 1e-6
#: Two rows are duplicates when the cosine of their angle is above this.
DUPLICATE_COSINE = 0.99
#: A row is ν-dead when Adam's ``exp_avg_sq`` summed over it is at most this (absolute).
NU_DEAD_TOL = 1e-30
#: Elements of one block of the row-similarity matrix (float64: 128 MiB).
CHUNK_ELEMENTS = 1 << 24


def full(tensor: torch.Tensor) -> torch.Tensor:
    """The whole tensor, detached: a DTensor (FSDP2, tensor parallel) is gathered from every
    rank (a collective: all ranks must call this)."""
    tensor = tensor.detach()
    gather = getattr(tensor, "full_tensor", None)
    return gather() if callable(gather) else tensor


def as_rows(weight: torch.Tensor) -> torch.Tensor:
    """``weight`` as a detached (rows, fan_in) matrix; a view where the layout allows."""
    weight = weight.detach()
    if weight.dim() == 0:
        return weight.reshape(1, 1)
    return weight.reshape(weight.shape[0], math.prod(weight.shape[1:]))


def row_norms(rows: torch.Tensor, chunk_elements: int = CHUNK_ELEMENTS) -> torch.Tensor:
    """Euclidean norm of every row, in float64, a block of rows at a time."""
    step = max(1, chunk_elements // max(rows.shape[1], 1))
    parts = [
        torch.linalg.vector_norm(rows[i : i + step].double(), dim=1)
        for i in range(0, rows.shape[0], step)
    ]
    return torch.cat(parts) if parts else rows.new_zeros(0, dtype=torch.float64)


def dead_tolerance(norms: torch.Tensor) -> float:
    """``DEAD_REL_TOL`` × the mean of the finite row norms (0 when no row is finite)."""
    finite = norms[torch.isfinite(norms)]
    return DEAD_REL_TOL * float(finite.mean()) if finite.numel() else 0.0


def dead_rows(weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """Boolean mask: ``‖W_i‖ ≤ tol`` and (no bias or ``|b_i| ≤ tol``), with
    ``tol = DEAD_REL_TOL × mean_i ‖W_i‖``. The bias is held to the same absolute tolerance
    as the row: a zero row with a non-zero bias outputs a constant, which is not dead."""
    norms = row_norms(as_rows(weight))
    tol = dead_tolerance(norms)
    mask = norms <= tol
    if bias is not None:
        mask &= bias.detach().double().reshape(-1).abs() <= tol
    return mask


def duplicate_rows(
    weight: torch.Tensor,
    groups: int = 1,
    chunk_elements: int = CHUNK_ELEMENTS,
) -> torch.Tensor:
    """Boolean mask of rows with a twin: another row of the same group whose cosine similarity
    with it is above ``DUPLICATE_COSINE``. Rows with norm ≤ the dead tolerance (and non-finite
    rows) take no part. One matrix product of the normalised rows, ``chunk_elements`` entries of
    the similarity matrix at a time, so memory stays bounded for wide layers. ``groups``: a
    grouped Conv's rows only compare within their group (they read different inputs)."""
    rows = as_rows(weight)
    n = rows.shape[0]
    dtype = torch.float64 if rows.dtype == torch.float64 else torch.float32
    norms = row_norms(rows)
    usable = (norms > dead_tolerance(norms)) & torch.isfinite(norms)
    unit = rows.to(dtype) / norms.clamp_min(torch.finfo(torch.float64).tiny).to(dtype)[:, None]
    unit[~usable] = 0  # a zero row has cosine 0 with everything: never a twin
    found = torch.zeros(n, dtype=torch.bool, device=rows.device)
    if groups < 1 or n % groups:
        groups = 1
    size = n // groups
    step = max(1, chunk_elements // max(size, 1))
    for g in range(groups):
        block = unit[g * size : (g + 1) * size]
        for start in range(0, size, step):
            sims = block[start : start + step] @ block.T  # (chunk, size)
            idx = torch.arange(sims.shape[0], device=sims.device)
            sims[idx, idx + start] = -math.inf  # not its own twin
            found[g * size + start : g * size + start + sims.shape[0]] = (
                sims > DUPLICATE_COSINE
            ).any(dim=1)
    return found & usable


def nu_dead_rows(exp_avg_sq: torch.Tensor) -> torch.Tensor:
    """Boolean mask: Adam's second moment ν summed over the row is ``≤ NU_DEAD_TOL``."""
    return as_rows(exp_avg_sq).double().sum(dim=1) <= NU_DEAD_TOL


def weight_distance(weight: torch.Tensor, initial: torch.Tensor) -> float:
    """``‖W − W_init‖ / ‖W_init‖`` (Frobenius norms, float64); inf when ``W_init`` is zero
    and ``W`` is not, NaN when both are zero."""
    w, w0 = weight.detach().double(), initial.detach().to(weight.device).double()
    diff = float(torch.linalg.vector_norm(w - w0))
    base = float(torch.linalg.vector_norm(w0))
    if base == 0:
        return math.nan if diff == 0 else math.inf
    return diff / base
