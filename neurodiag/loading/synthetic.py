"""Synthetic input batches inferred from the model, for scans without a data spec.

Inference, first match wins:
1. a Hugging Face model (``model.config.vocab_size`` is an int): dict batches
   ``{"input_ids": (B, T) int64 in [0, vocab_size), "attention_mask": ones}``, T = 16 (at most
   ``max_position_embeddings``). So the model returns its own ``.loss``, ``labels`` are added for
   ``*ForSequenceClassification`` (random class ids; float values when ``num_labels == 1``) and
   for language-model heads (``*LMHeadModel``, ``*ForCausalLM``, ``*ForMaskedLM``,
   ``*ForConditionalGeneration``: ``labels = input_ids``). Base models get no labels.
2. the first layer in ``model.modules()`` (registration order) that is
   - ``nn.Linear``: standard normal ``(B, in_features)``;
   - ``nn.Conv1d/2d/3d`` (or transposed): standard normal ``(B, C, *spatial)``, spatial 64 for
     1-d, 32x32 for 2-d, 16x16x16 for 3-d;
   - ``nn.Embedding``/``nn.EmbeddingBag``: int64 token ids in ``[0, num_embeddings)``, ``(B, 16)``.
``input_shape`` (without the batch dim) replaces the inferred shape, keeping the dtype rule of the
first layer (token ids for embeddings, standard normal otherwise); it also lets models without a
recognised first layer be scanned. Synthetic batches carry no targets: the scan then uses its
documented surrogate loss. Default: 4 batches; every pass regenerates the same batches from a
``torch.Generator`` seeded with ``seed``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from neurodiag.errors import NeurodiagError
from neurodiag.loading.datasource import DataOptions, DataSource

DEFAULT_NUM_BATCHES = 4
SEQUENCE_LENGTH = 16
_CONV_SPATIAL = {1: (64,), 2: (32, 32), 3: (16, 16, 16)}
_LM_SUFFIXES = ("LMHeadModel", "ForCausalLM", "ForMaskedLM", "ForConditionalGeneration")


@dataclass(frozen=True)
class InputRecipe:
    """What one synthetic sample looks like, and where that was inferred from."""

    shape: tuple[int, ...]
    vocab: int | None  # token ids in [0, vocab) when set, standard normal otherwise
    origin: str
    hf: bool = False
    labels: str | None = None  # None, "classes", "regression" or "tokens"
    num_labels: int = 2

    def sample(self, batch_size: int, generator: torch.Generator) -> Any:
        """One batch, drawn from ``generator``."""
        shape = (batch_size, *self.shape)
        if self.vocab is None:
            return torch.randn(shape, generator=generator)
        ids = torch.randint(0, self.vocab, shape, generator=generator)
        if not self.hf:
            return ids
        batch: dict[str, Tensor] = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
        if self.labels == "classes":
            batch["labels"] = torch.randint(0, self.num_labels, (batch_size,), generator=generator)
        elif self.labels == "regression":
            batch["labels"] = torch.randn(batch_size, generator=generator)
        elif self.labels == "tokens":
            batch["labels"] = ids.clone()
        return batch


def infer_recipe(model: nn.Module, input_shape: tuple[int, ...] | None = None) -> InputRecipe:
    """How to draw inputs for ``model`` (see the module docstring)."""
    recipe = _hf_recipe(model, input_shape)
    if recipe is not None:
        return recipe
    for name, layer in model.named_modules():
        recipe = _layer_recipe(name or "(root)", layer, input_shape)
        if recipe is not None:
            return recipe
    if input_shape is not None:
        return InputRecipe(input_shape, None, "input_shape")
    raise NeurodiagError(
        f"cannot infer a synthetic input for {type(model).__name__}: no Linear, Conv or Embedding "
        "layer found; give input_shape, a data spec, or define make_data() in the model file"
    )


def _hf_recipe(model: nn.Module, input_shape: tuple[int, ...] | None) -> InputRecipe | None:
    config = getattr(model, "config", None)
    vocab = getattr(config, "vocab_size", None)
    if not isinstance(vocab, int) or isinstance(vocab, bool) or vocab <= 0:
        return None
    length = SEQUENCE_LENGTH
    max_positions = getattr(config, "max_position_embeddings", None)
    if isinstance(max_positions, int) and max_positions > 0:
        length = min(length, max_positions)
    kind = type(model).__name__
    labels = None
    num_labels = int(getattr(config, "num_labels", 2) or 2)
    if kind.endswith("ForSequenceClassification"):
        labels = "regression" if num_labels == 1 else "classes"
    elif kind.endswith(_LM_SUFFIXES):
        labels = "tokens"
    shape = input_shape or (length,)
    origin = f"{kind}.config"
    return InputRecipe(shape, vocab, origin, hf=True, labels=labels, num_labels=num_labels)


def _layer_recipe(
    name: str, layer: nn.Module, input_shape: tuple[int, ...] | None
) -> InputRecipe | None:
    origin = f"{type(layer).__name__} '{name}'"
    if isinstance(layer, (nn.Embedding, nn.EmbeddingBag)):
        return InputRecipe(input_shape or (SEQUENCE_LENGTH,), layer.num_embeddings, origin)
    if isinstance(layer, nn.Linear) and not isinstance(layer, nn.LazyLinear):
        return InputRecipe(input_shape or (layer.in_features,), None, origin)
    if isinstance(layer, nn.modules.conv._ConvNd) and not isinstance(
        layer, nn.modules.lazy.LazyModuleMixin
    ):
        spatial = _CONV_SPATIAL.get(len(layer.kernel_size))
        if spatial is None and input_shape is None:
            return None
        return InputRecipe(input_shape or (layer.in_channels, *(spatial or ())), None, origin)
    return None


class SyntheticBatches:
    """Re-iterable seeded batches, generated one at a time."""

    def __init__(self, recipe: InputRecipe, options: DataOptions) -> None:
        self.recipe = recipe
        self.batch_size = options.batch_size
        self.count = options.num_batches or DEFAULT_NUM_BATCHES
        self.seed = options.seed

    def __len__(self) -> int:
        return self.count

    def __iter__(self) -> Iterator[Any]:
        generator = torch.Generator().manual_seed(self.seed)
        for _ in range(self.count):
            yield self.recipe.sample(self.batch_size, generator)


def synthetic_source(model: nn.Module, options: DataOptions) -> DataSource:
    """A DataSource of synthetic batches for ``model``."""
    recipe = infer_recipe(model, options.input_shape)
    batches = SyntheticBatches(recipe, options)
    shape = ", ".join(["B", *(str(d) for d in recipe.shape)])
    what = "standard normal" if recipe.vocab is None else f"token ids in [0, {recipe.vocab})"
    if recipe.labels is not None:
        what += " + labels"
    description = (
        f"synthetic ({shape}) {what} (from {recipe.origin}; "
        f"{batches.count} batches of {batches.batch_size}, seed {batches.seed})"
    )
    return DataSource(batches, description, batches.count * batches.batch_size)
