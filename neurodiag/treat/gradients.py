"""ReGraMa's score (Liu et al., 2025): how much gradient reaches each unit's pre-activation.

G_i = E|∂L/∂z_i| / mean_k E|∂L/∂z_k| over a layer's units, z the pre-activation (the input of
the activation module). It is measured on z, not on a = σ(z) as the scan's ``grad_dormant``
column is, because ∂L/∂z = σ'(z)·∂L/∂a and the mean of a product is not the product of the
means: a ReLU unit that never fires still receives ∂L/∂a ≠ 0 through its outgoing weights, but
∂L/∂z = 0. So neurodiag does not derive G from the scan's statistics; a tensor hook on z, set in
a forward pre-hook of each linked activation module, adds up |∂L/∂z| per unit over whatever
backward runs while ``PreActivationGrads`` is attached (a hook set before an in-place
activation receives the gradient of z as it was, so ``ReLU(inplace=True)`` is measured right).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from neurodiag.batch import SplitBatch, map_tensors, split_batch
from neurodiag.errors import NeurodiagError
from neurodiag.loss import LossResolver, UserLoss, first_line
from neurodiag.model_state import model_device, model_dtype, preserved
from neurodiag.stats.statistic import normalized_scores
from neurodiag.treat.topology import Link, Topology, feature_dim


class PreActivationGrads:
    """Σ|∂L/∂z_i| and the finite entries per unit at every activation module with a ``Link``,
    from each backward that runs while attached (``with`` it, or ``attach``/``detach``)."""

    def __init__(self, model: nn.Module, links: Topology) -> None:
        self.model = model
        self.links = {name: link for name, link in links.items() if isinstance(link, Link)}
        self._sums: dict[str, Tensor] = {}
        self._counts: dict[str, Tensor] = {}
        self._handles: list[Any] = []

    def attach(self) -> PreActivationGrads:
        if self._handles:
            return self
        for name, link in self.links.items():
            try:
                module = self.model.get_submodule(name)
                producer = self.model.get_submodule(link.producers[0])
            except AttributeError:
                continue
            self._handles.append(module.register_forward_pre_hook(self._pre_hook(name, producer)))
        return self

    def detach(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> PreActivationGrads:
        return self.attach()

    def __exit__(self, *exc: object) -> None:
        self.detach()

    def reset(self) -> None:
        """Forget what was added up (the Recycler does after each treatment)."""
        self._sums.clear()
        self._counts.clear()

    def _pre_hook(self, name: str, producer: nn.Module) -> Any:
        def pre_hook(module: nn.Module, args: tuple[Any, ...]) -> None:
            z = args[0] if args else None
            if isinstance(z, Tensor) and z.requires_grad and z.dim() > 0:
                z.register_hook(lambda g: self._add(name, producer, g))  # type: ignore[no-untyped-call]

        return pre_hook

    def _add(self, name: str, producer: nn.Module, grad: Tensor) -> None:
        axis = feature_dim(producer, grad.dim())
        flat = grad.detach().movedim(axis, -1).reshape(-1, grad.shape[axis])
        finite = flat.isfinite()
        total = torch.where(finite, flat.abs(), 0).sum(0, dtype=torch.float64)
        count = finite.sum(0)
        if name in self._sums and self._sums[name].shape == total.shape:
            self._sums[name] += total
            self._counts[name] += count
        else:
            self._sums[name], self._counts[name] = total, count

    def mean_abs(self) -> dict[str, Tensor]:
        """E|∂L/∂z_i| per unit (CPU, float64; NaN where a unit had no finite entry), by the
        activation module's name; a module no gradient reached is absent."""
        out = {}
        for name, total in self._sums.items():
            count = self._counts[name].to(torch.float64)
            out[name] = torch.where(count > 0, total / count.clamp_min(1), torch.nan).cpu()
        return out

    def scores(self) -> dict[str, Tensor]:
        """G_i per unit by module name (``grama_scores`` of ``mean_abs``)."""
        return grama_scores(self.mean_abs())


def grama_scores(mean_abs: Mapping[str, Tensor]) -> dict[str, Tensor]:
    """G_i = E|∂L/∂z_i| / mean_k E|∂L/∂z_k| per layer, the τ-dormant normalisation of the scan
    (a unit without a finite mean scores NaN: never dormant; a layer all zero scores 0)."""
    return {
        name: torch.from_numpy(normalized_scores(np.asarray(values.numpy(), dtype=np.float64)))
        for name, values in mean_abs.items()
    }


def measure_grama(
    model: nn.Module,
    batches: Iterable[Any],
    links: Topology,
    *,
    loss_fn: UserLoss | None = None,
    mode: str = "eval",
    seed: int = 0,
) -> dict[str, Tensor]:
    """G_i of every linked activation module, from forward + backward over ``batches`` with the
    scan's loss rule (``loss_fn``, the output's ``.loss``, cross-entropy/MSE on the batch's
    targets, else the seeded random-projection surrogate). ``torch.autograd.grad`` is used, so no
    ``.grad`` is written; the model's modes, buffers and the caller's RNG are restored."""
    device, dtype = model_device(model), model_dtype(model)
    generator = torch.Generator(device=device)
    generator.manual_seed(seed)
    resolver = LossResolver(loss_fn, generator)
    meter = PreActivationGrads(model, links)
    rng_devices = [device.index or 0] if device.type == "cuda" else []
    with preserved(model), torch.random.fork_rng(devices=rng_devices), meter:
        torch.manual_seed(seed)
        model.train(mode == "train")
        for raw in batches:
            _backward(model, raw, device, dtype, resolver)
    return meter.scores()


def _backward(
    model: nn.Module,
    raw: Any,
    device: torch.device,
    dtype: torch.dtype,
    resolver: LossResolver,
) -> None:
    """One forward and ``autograd.grad`` of the loss; the meter's hooks read ∂L/∂z."""
    leaves: list[Tensor] = []

    def to_model(tensor: Tensor) -> Tensor:
        tensor = tensor.to(device)
        if not tensor.is_floating_point():
            return tensor
        leaf = tensor.to(dtype).detach().requires_grad_(True)  # z needs grad, frozen or not
        leaves.append(leaf)
        return leaf.clone()  # the model may write into its input

    try:
        split = split_batch(raw)
    except (TypeError, ValueError) as exc:
        raise NeurodiagError(f"bad batch for the gradient score: {exc}") from exc
    targets = split.targets.to(device) if split.targets is not None else None
    fed = SplitBatch(
        map_tensors(split.args, to_model), map_tensors(split.kwargs, to_model), targets
    )
    if isinstance(fed.kwargs.get("labels"), Tensor):
        fed.targets = fed.kwargs["labels"]
    try:
        output = fed.call(model)
    except Exception as exc:
        raise NeurodiagError(
            f"the model raised {type(exc).__name__} on the gradient score's batch: "
            f"{first_line(exc)}"
        ) from exc
    loss = resolver(output, fed, map_tensors(raw, lambda t: t.to(device)))
    wanted = [p for p in model.parameters() if p.requires_grad] + leaves
    if loss.requires_grad and wanted:
        torch.autograd.grad(loss, wanted, allow_unused=True)
