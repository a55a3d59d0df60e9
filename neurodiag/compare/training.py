"""The short training loop behind ``compare``: same batches, same order, same seed per variant.

Batches are materialised once, so every variant sees exactly the same data in the same order
whatever the source does on re-iteration (a shuffling DataLoader would not). With ``batch_size``
the samples are re-batched and reshuffled each epoch from a generator seeded with
``seed + epoch`` (the global RNG is not used), again identically for every variant.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor, nn

from neurodiag.activations.specs import WEIGHT_INITS
from neurodiag.batch import SplitBatch, batch_size_of, map_tensors, split_batch
from neurodiag.errors import NeurodiagError
from neurodiag.loss import LossResolver, UserLoss, primary_output
from neurodiag.model_state import model_device, model_dtype

OPTIMIZERS: dict[str, Callable[..., torch.optim.Optimizer]] = {
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
    "sgd": torch.optim.SGD,
}


def optimizer_class(name: str) -> Callable[..., torch.optim.Optimizer]:
    """The optimizer named ``name`` (case-insensitive), or a NeurodiagError listing the names."""
    try:
        return OPTIMIZERS[str(name).lower()]
    except KeyError:
        raise NeurodiagError(
            f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}"
        ) from None


def make_optimizer(
    name: str, model: nn.Module, lr: float, *, weight_decay: float = 0.0, momentum: float = 0.0
) -> torch.optim.Optimizer:
    """``adam``/``adamw``/``sgd`` over the trainable parameters (``momentum``: SGD only)."""
    cls = optimizer_class(name)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise NeurodiagError("the model has no trainable parameters; nothing to train")
    options: dict[str, float] = {"lr": lr, "weight_decay": weight_decay}
    if momentum:
        if cls is not torch.optim.SGD:
            raise NeurodiagError(f"momentum is an SGD setting; {name} has its own moments")
        options["momentum"] = momentum
    return cls(params, **options)


#: Learning-rate schedules, stepped once per optimizer step over ``total`` steps.
SCHEDULES: tuple[str, ...] = ("constant", "cosine", "step")


def make_schedule(
    name: str, optimizer: torch.optim.Optimizer, total: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """``constant`` (None), ``cosine`` (to 0 over the run) or ``step`` (x0.1 at 50 % and 75 %)."""
    if name not in SCHEDULES:
        raise NeurodiagError(f"unknown schedule {name!r}; valid: {', '.join(SCHEDULES)}")
    if name == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(total, 1))
    if name == "step":
        milestones = sorted({max(1, total // 2), max(1, (3 * total) // 4)})
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=0.1)
    return None


#: Weight initialisations applied to every Linear/Conv layer before the variants are built
#: (``--init``); a variant's ``:init=S`` re-initialises its own copy after the swap.
INITS: tuple[str, ...] = ("model", *WEIGHT_INITS)


def initialise(model: nn.Module, scheme: str) -> None:
    """Re-initialise the weights of ``model`` in place (a copy: the caller's model is kept).

    ``model``: as built; ``he``: Kaiming-normal (ReLU gain), zero biases; ``lecun``: LeCun-normal
    N(0, 1/fan_in), zero biases (SELU's init, Klambauer et al. 2017); ``xavier``: Xavier-normal,
    zero biases; ``torch``: each layer's own ``reset_parameters`` (PyTorch's default,
    Kaiming-uniform with a=√5). Only Linear and Conv layers are touched; the global RNG draws the
    weights (seed it for reproducible weights).
    """
    if scheme not in INITS:
        raise NeurodiagError(f"unknown init {scheme!r}; valid: {', '.join(INITS)}")
    if scheme == "model":
        return
    for module in model.modules():
        if not isinstance(module, (nn.Linear, nn.modules.conv._ConvNd)):
            continue
        if scheme == "torch":
            module.reset_parameters()
            continue
        if scheme == "he":
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        elif scheme == "lecun":
            nn.init.kaiming_normal_(module.weight, nonlinearity="linear")  # std 1/√fan_in
        else:
            nn.init.xavier_normal_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)


def epoch_lengths(epochs: int, steps: int | None, per_epoch: int) -> list[int]:
    """Optimizer steps in each recorded epoch: ``epochs`` full passes, cut at ``steps`` total.

    ``epochs=0`` with ``steps`` trains ``steps`` steps in as many passes as that takes; the last
    pass may be partial. Each entry is followed by one recorded scan.
    """
    if steps is None:
        return [per_epoch] * epochs
    passes = epochs if epochs > 0 else math.ceil(steps / per_epoch)
    lengths: list[int] = []
    left = steps
    for _ in range(passes):
        if left <= 0:
            break
        lengths.append(min(per_epoch, left))
        left -= lengths[-1]
    return lengths


class EpochBatches:
    """The training data as a fixed list of batches, optionally re-batched per epoch."""

    def __init__(self, data: Iterable[Any], batch_size: int | None, seed: int) -> None:
        self.base = list(data)
        if not self.base:
            raise NeurodiagError("the data yielded no batches; check --data (is it empty?)")
        self.batch_size = batch_size
        self.seed = seed
        self._samples: Any = _concat(self.base) if batch_size is not None else None

    def __len__(self) -> int:
        if self.batch_size is None:
            return len(self.base)
        return math.ceil(_length(self._samples) / self.batch_size)

    def epoch(self, index: int) -> list[Any]:
        """Batches of epoch ``index``; epoch 0 (used for scans) keeps the data's own order."""
        if self.batch_size is None:
            return self.base
        total = _length(self._samples)
        order = (
            torch.arange(total)
            if index == 0
            else torch.randperm(total, generator=torch.Generator().manual_seed(self.seed + index))
        )
        size = self.batch_size
        return [_take(self._samples, order[i : i + size]) for i in range(0, total, size)]


def _take(samples: Any, rows: Tensor) -> Any:
    return map_tensors(samples, lambda t: t[rows])


def _concat(batches: Sequence[Any]) -> Any:
    first = batches[0]
    if isinstance(first, Tensor):
        return torch.cat(list(batches))
    if isinstance(first, Mapping):
        return {k: _concat([b[k] for b in batches]) for k in first}
    if isinstance(first, (tuple, list)):
        return type(first)(_concat([b[i] for b in batches]) for i in range(len(first)))
    raise NeurodiagError(
        f"batch_size needs batches of tensors (x, (x, y) or dicts), got {type(first).__name__}; "
        "leave batch_size unset to train on the batches as given"
    )


def _length(samples: Any) -> int:
    if isinstance(samples, Tensor):
        return int(samples.shape[0])
    values = list(samples.values()) if isinstance(samples, Mapping) else list(samples)
    return _length(values[0])


class Runner:
    """Feeds batches to one variant's model: device/dtype, loss, optimizer step, evaluation."""

    def __init__(self, model: nn.Module, loss_fn: UserLoss | None, seed: int) -> None:
        self.model = model
        self.device = model_device(model)
        self.dtype = model_dtype(model)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        self.resolver = LossResolver(loss_fn, generator)

    def feed(self, batch: Any) -> tuple[Any, SplitBatch, Any]:
        """Run the forward; returns (output, split batch on device, raw batch on device)."""

        def to_model(t: Tensor) -> Tensor:
            t = t.to(self.device)
            return t.to(self.dtype) if t.is_floating_point() else t

        try:
            split = split_batch(batch)
        except (TypeError, ValueError) as exc:
            raise NeurodiagError(f"bad batch from the data source: {exc}") from exc
        fed = SplitBatch(
            map_tensors(split.args, to_model),
            map_tensors(split.kwargs, to_model),
            split.targets.to(self.device) if split.targets is not None else None,
        )
        if isinstance(fed.kwargs.get("labels"), Tensor):
            fed.targets = fed.kwargs["labels"]
        raw = map_tensors(batch, lambda t: t.to(self.device))
        return fed.call(self.model), fed, raw

    def loss(self, batch: Any) -> Tensor:
        output, fed, raw = self.feed(batch)
        return self.resolver(output, fed, raw)

    def step(self, batch: Any, optimizer: torch.optim.Optimizer) -> float:
        """One training step in train mode; returns the batch loss."""
        self.model.train()
        optimizer.zero_grad(set_to_none=True)
        loss = self.loss(batch)
        loss.backward()  # type: ignore[no-untyped-call]
        optimizer.step()
        return float(loss.detach())

    @torch.no_grad()
    def mean_loss(self, batches: Sequence[Any]) -> float:
        """Sample-weighted mean loss in eval mode (the model's mode is restored)."""
        total, count = 0.0, 0
        with _eval(self.model):
            for batch in batches:
                loss = self.loss(batch)
                n = _batch_rows(batch)
                total += float(loss) * n
                count += n
        return total / count if count else math.nan

    @torch.no_grad()
    def accuracy(self, batches: Iterable[Any]) -> float | None:
        """Fraction of correct class ids in eval mode; None unless targets are class ids."""
        correct, count = 0, 0
        with _eval(self.model):
            for batch in batches:
                output, fed, _ = self.feed(batch)
                targets = fed.targets
                if targets is None or targets.is_floating_point() or targets.is_complex():
                    return None
                hits = _hits(primary_output(output), targets.long())
                if hits is None:
                    return None
                correct += int(hits.sum())
                count += hits.numel()
        return correct / count if count else None


def _hits(out: Tensor, targets: Tensor) -> Tensor | None:
    """Same class-dim rule as the cross-entropy default: dim 1, or the last dim for sequences."""
    if out.dim() >= 2 and targets.shape == out.shape[:1] + out.shape[2:]:
        return out.argmax(dim=1) == targets
    if out.dim() >= 2 and targets.shape == out.shape[:-1]:
        return out.argmax(dim=-1) == targets
    return None


def _batch_rows(batch: Any) -> int:
    return max(batch_size_of(batch), 1)


@contextmanager
def _eval(model: nn.Module) -> Iterator[None]:
    """Eval mode inside, each module's own flag restored after."""
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for module, flag in flags:
            module.training = flag
