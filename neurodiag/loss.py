"""Which loss a scan differentiates, and a readable name for the report header.

In order: a ``loss_fn(output, batch)`` from the model file; a ``.loss`` on the model output
(Hugging Face style, also a dict key ``"loss"``); cross-entropy for integer targets; MSE for float
targets of the output's shape; with no targets, a random-projection surrogate
``L = Σ out ⊙ r / N`` with r ~ N(0, 1) drawn from the scan's seeded generator. The surrogate is
used instead of ``out.sum()`` because a sum can have an identically zero gradient (e.g. after a
final LayerNorm), which would make every neuron look gradient-dormant.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from neurodiag.batch import SplitBatch
from neurodiag.errors import NeurodiagError

UserLoss = Callable[[Any, Any], Tensor]


def primary_output(output: Any) -> Tensor:
    """The tensor a default loss applies to: the output itself, ``.logits``, or its first tensor."""
    if isinstance(output, Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, Tensor):
        return logits
    if isinstance(output, Mapping):
        for key in ("logits", "last_hidden_state"):
            if isinstance(output.get(key), Tensor):
                return output[key]  # type: ignore[no-any-return]
        values = list(output.values())
    elif isinstance(output, (tuple, list)):
        values = list(output)
    else:
        values = [getattr(output, "last_hidden_state", None)]
    for value in values:
        if isinstance(value, Tensor) and value.is_floating_point():
            return value
    raise NeurodiagError(
        f"the model returned {type(output).__name__} with no floating tensor to take a loss of; "
        "define loss_fn(output, batch) in the model file"
    )


def _output_loss(output: Any) -> Tensor | None:
    loss = getattr(output, "loss", None)
    if loss is None and isinstance(output, Mapping):
        loss = output.get("loss")
    return loss if isinstance(loss, Tensor) else None


def first_line(exc: BaseException) -> str:
    """An exception's message on one line (its type name when it has none)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


class LossResolver:
    """Computes the scan loss for one batch and remembers which rule was used."""

    def __init__(self, user_loss: UserLoss | None, generator: torch.Generator | None) -> None:
        self.user_loss = user_loss
        self.generator = generator
        self.name = "none"

    def __call__(self, output: Any, batch: SplitBatch, raw_batch: Any) -> Tensor:
        if self.user_loss is not None:
            self.name = "loss_fn from the model file"
            try:
                loss = self.user_loss(output, raw_batch)
            except NeurodiagError:
                raise
            except Exception as exc:
                raise NeurodiagError(
                    f"loss_fn raised {type(exc).__name__}: {first_line(exc)}; fix loss_fn in the "
                    "model file (it is called as loss_fn(output, batch))"
                ) from exc
            if not isinstance(loss, Tensor):
                raise NeurodiagError(
                    f"loss_fn returned {type(loss).__name__}, expected a scalar tensor"
                )
        elif (own := _output_loss(output)) is not None:
            self.name = "model output .loss"
            loss = own
        else:
            loss = self._default(primary_output(output), batch.targets)
        if loss.numel() != 1:
            raise NeurodiagError(
                f"the loss has shape {tuple(loss.shape)}, expected a scalar; reduce it in loss_fn"
            )
        return loss.reshape(())

    def _default(self, out: Tensor, targets: Tensor | None) -> Tensor:
        if not (out.is_floating_point() or out.is_complex()):
            raise NeurodiagError(
                f"the model's output is {str(out.dtype).removeprefix('torch.')}, so no gradient "
                "can flow from it; return a floating output (e.g. logits), or define "
                "loss_fn(output, batch) in the model file, or scan with --forward-only"
            )
        if targets is None:
            self.name = "surrogate: random projection (no targets)"
            r = torch.randn(out.shape, generator=self.generator, device=out.device, dtype=out.dtype)
            return (out * r).sum() / max(1, out.shape[0] if out.dim() else 1)
        targets = targets.to(out.device)
        if not targets.is_floating_point() and not targets.is_complex():
            return self._cross_entropy(out, targets.long())
        if targets.shape == out.shape or targets.numel() == out.numel():
            self.name = "mse"
            return F.mse_loss(out, targets.reshape(out.shape).to(out.dtype))
        raise NeurodiagError(
            f"cannot pick a loss for output shape {tuple(out.shape)} and float target shape "
            f"{tuple(targets.shape)}; define loss_fn(output, batch) in the model file"
        )

    def _cross_entropy(self, out: Tensor, targets: Tensor) -> Tensor:
        self.name = "cross_entropy"
        _check_class_range(out, targets)
        if out.dim() >= 2 and targets.shape == out.shape[:1] + out.shape[2:]:
            return F.cross_entropy(out, targets)
        if out.dim() >= 2 and targets.shape == out.shape[:-1]:
            return F.cross_entropy(out.reshape(-1, out.shape[-1]), targets.reshape(-1))
        raise NeurodiagError(
            f"integer targets of shape {tuple(targets.shape)} do not match output shape "
            f"{tuple(out.shape)} for cross-entropy; define loss_fn(output, batch) in the model file"
        )


IGNORE_INDEX = -100  # F.cross_entropy's default: such targets are left out of the loss


def _check_class_range(out: Tensor, targets: Tensor) -> None:
    """Class labels must lie in 0..C-1 (or be -100, ignored): out-of-range labels are one line
    naming the range found and the model's number of outputs (a common case: labels 1..C)."""
    if out.dim() < 2 or targets.numel() == 0:
        return
    classes = out.shape[1] if targets.shape == out.shape[:1] + out.shape[2:] else out.shape[-1]
    kept = targets[targets != IGNORE_INDEX]
    if kept.numel() == 0:
        return
    low, high = int(kept.min()), int(kept.max())
    if low < 0 or high >= classes:
        hint = "; shift them to start at 0" if low >= 1 and high == classes else ""
        raise NeurodiagError(
            f"class labels range over {low}..{high} but the model has {classes} outputs "
            f"(labels must be 0..{classes - 1}, or {IGNORE_INDEX} to ignore){hint}"
        )
