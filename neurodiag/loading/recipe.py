"""What one synthetic batch looks like: named input tensors, their contents, optional labels.

Kept apart from the rules that choose a recipe (``synthetic`` for plain modules, ``hf_inputs``
for Hugging Face models) so both build the same value and the error lists shapes one way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

DECODER_LENGTH = 4


@dataclass(frozen=True)
class InputSpec:
    """One input tensor: its forward keyword (None: the one positional input) and contents."""

    name: str | None
    shape: tuple[int, ...]
    vocab: int | None = None  # token ids in [0, vocab) when set
    ones: bool = False  # an attention mask

    def sample(self, batch_size: int, generator: torch.Generator) -> Tensor:
        shape = (batch_size, *self.shape)
        if self.ones:
            return torch.ones(shape, dtype=torch.int64)
        if self.vocab is not None:
            return torch.randint(0, self.vocab, shape, generator=generator)
        return torch.randn(shape, generator=generator)

    def describe(self) -> str:
        """``pixel_values (B, 3, 32, 32) float32`` (how the error lists a tried shape)."""
        dtype = "int64" if self.ones or self.vocab is not None else "float32"
        shape = ", ".join(["B", *(str(d) for d in self.shape)])
        return f"{self.name + ' ' if self.name else ''}({shape}) {dtype}"

    def contents(self) -> str:
        if self.ones:
            return "ones"
        return "standard normal" if self.vocab is None else f"token ids in [0, {self.vocab})"


@dataclass(frozen=True)
class InputRecipe:
    """What one synthetic batch looks like, and where that was inferred from."""

    inputs: tuple[InputSpec, ...]
    origin: str
    labels: str | None = None  # None, "classes", "regression", "tokens" or "decoder_tokens"
    num_labels: int = 2
    label_vocab: int | None = None  # for "decoder_tokens"

    @property
    def named(self) -> bool:
        return any(spec.name is not None for spec in self.inputs)

    def sample(self, batch_size: int, generator: torch.Generator) -> Any:
        """One batch, drawn from ``generator``: a tensor, or a dict of named inputs."""
        if not self.named:
            return self.inputs[0].sample(batch_size, generator)
        batch: dict[str, Tensor] = {
            str(spec.name): spec.sample(batch_size, generator) for spec in self.inputs
        }
        if self.labels == "classes":
            batch["labels"] = torch.randint(0, self.num_labels, (batch_size,), generator=generator)
        elif self.labels == "regression":
            batch["labels"] = torch.randn(batch_size, generator=generator)
        elif self.labels == "tokens":
            batch["labels"] = batch["input_ids"].clone()
        elif self.labels == "decoder_tokens" and self.label_vocab is not None:
            shape = (batch_size, DECODER_LENGTH)
            batch["labels"] = torch.randint(0, self.label_vocab, shape, generator=generator)
        return batch

    def describe(self) -> str:
        return ", ".join(spec.describe() for spec in self.inputs)

    def contents(self) -> str:
        """``(B, 4) standard normal`` or ``pixel_values (B, 3, 64, 64) standard normal, ...``."""
        parts = []
        for spec in self.inputs:
            shape = ", ".join(["B", *(str(d) for d in spec.shape)])
            name = f"{spec.name} " if spec.name else ""
            parts.append(f"{name}({shape}) {spec.contents()}")
        return ", ".join(parts) + (" + labels" if self.labels is not None else "")


def positive_int(value: Any) -> int | None:
    """``value`` if it is a positive int (not a bool), else None: config fields may be anything."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        return None
    return int(value)


__all__ = ["DECODER_LENGTH", "InputRecipe", "InputSpec", "positive_int"]
