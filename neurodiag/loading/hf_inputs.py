"""Synthetic inputs for Hugging Face models, read from their config and forward signature.

A model is a Hugging Face model here when it has a ``config`` and a main input
(``declared.main_input``; ``config.vocab_size`` alone still means ``input_ids``). Every shape
comes from the config (a composite config's ``text_config``/``vision_config``/``audio_config``
too); each list below is the order in which candidates are probed (``synthetic.choose_recipe``):

- ``input_ids``: (B, T) int64 in [0, vocab_size), T = 16 (at most ``max_position_embeddings``),
  then T = ``max_position_embeddings`` (up to 512) for models that need their full length; plus
  ``attention_mask`` ones when the forward takes one. ``labels`` so that the model returns its
  own ``.loss``: class ids for ``*ForSequenceClassification`` (float values when
  ``num_labels == 1``), ``labels = input_ids`` for language-model heads (``*LMHeadModel``,
  ``*ForCausalLM``, ``*ForMaskedLM``, ``*ForConditionalGeneration``). An encoder-decoder base
  model also gets ``decoder_input_ids``. A forward that also takes ``pixel_values`` (CLIP-like)
  is tried second with an image added.
- ``pixel_values``: (B, C, H, W) standard normal, C = ``num_channels`` (else 3), H, W the
  declared image size, then 32 and 224 px; (B, ``num_frames``, C, H, W) first for video models
  (``config.num_frames``); class ``labels`` for ``*ForImageClassification``; token ids added
  last when the forward also takes ``input_ids``.
- ``input_values`` (raw audio): (B, ``max_length``, ``num_mel_bins``) first for spectrogram
  transformers (AST: both in the config); (B, ``audio_channels``, S) first for codecs
  (``config.audio_channels``); then (B, S) (Wav2Vec2, HuBERT, WavLM...), then (B, 1, S).
  S = 16000 (one second at 16 kHz), raised to what a ``conv_kernel``/``conv_stride`` feature
  extractor needs for 2 frames.
- ``input_features`` (log-mel spectrograms): (B, F, 2 · ``max_source_positions``) first (Whisper
  requires exactly that many frames), then (B, F, 3000), then frames-first (B, 100, F)
  (Speech2Text, Wav2Vec2-BERT). F = ``num_mel_bins``, else ``feature_projection_input_dim``,
  else ``input_feat_per_channel`` · ``input_channels``, else ``feature_size``, else 80. An
  encoder-decoder also gets ``decoder_input_ids`` (B, 4), or token ``labels`` (B, 4) for
  ``*ForConditionalGeneration`` (the model derives its decoder inputs from them).

``input_shape`` (no batch dim) replaces the main input's shape: one candidate (plus the
CLIP-like companion), no fallbacks.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from neurodiag.loading.declared import (
    config_value,
    conv_min_length,
    declared_channels,
    declared_image_size,
    forward_parameters,
    main_input,
)
from neurodiag.loading.recipe import DECODER_LENGTH, InputRecipe, InputSpec, positive_int

SEQUENCE_LENGTH = 16
MAX_FULL_LENGTH = 512
IMAGE_SIZES = ((32, 32), (224, 224))
AUDIO_SAMPLES = 16000
WHISPER_FRAMES = 3000
FEATURE_FRAMES = 100
_LM_SUFFIXES = ("LMHeadModel", "ForCausalLM", "ForMaskedLM", "ForConditionalGeneration")
Shape = tuple[int, ...]


def hf_recipes(model: nn.Module, input_shape: Shape | None) -> list[InputRecipe]:
    """The candidate recipes for a Hugging Face model, in probing order; [] for any other."""
    config = getattr(model, "config", None)
    if config is None:
        return []
    vocab = positive_int(config_value(config, "vocab_size", "text_config"))
    main = main_input(model) or ("input_ids" if vocab is not None else None)
    if main is None or (main == "input_ids" and vocab is None):
        return []
    context = _Context(model, config, vocab, forward_parameters(model), input_shape)
    if main == "input_ids":
        return context.text()
    if main == "pixel_values":
        return context.pixels()
    if main == "input_values":
        return context.audio_values()
    return context.audio_features()


class _Context:
    """What every rule reads: the model, its config and vocabulary, the forward's parameters."""

    def __init__(
        self,
        model: nn.Module,
        config: Any,
        vocab: int | None,
        params: tuple[str, ...],
        input_shape: Shape | None,
    ) -> None:
        self.model, self.config, self.vocab, self.params = model, config, vocab, params
        self.input_shape = input_shape
        self.kind = type(model).__name__
        self.origin = f"{self.kind}.config"
        self.num_labels = positive_int(getattr(config, "num_labels", 2)) or 2
        takes_labels = "labels" in params or not params
        self.classes = "classes" if takes_labels and self.kind.endswith("Classification") else None
        # one class per clip (not per frame, as *ForAudioFrameClassification wants)
        clip_heads = ("SequenceClassification", "AudioClassification")
        self.clip_classes = self.classes if self.kind.endswith(clip_heads) else None
        self.generation = takes_labels and self.kind.endswith("ForConditionalGeneration")

    def takes(self, name: str) -> bool:
        """Whether the forward accepts ``name`` (an uninspectable forward is given it)."""
        return name in self.params or not self.params

    def shapes(self, declared: list[Shape]) -> list[Shape]:
        """``input_shape`` if given, else ``declared`` without repeats."""
        if self.input_shape is not None:
            return [self.input_shape]
        return list(dict.fromkeys(declared))

    # -- text --------------------------------------------------------------------------------
    def text(self) -> list[InputRecipe]:
        max_positions = positive_int(
            config_value(self.config, "max_position_embeddings", "text_config")
        )
        lengths = [min(SEQUENCE_LENGTH, max_positions or SEQUENCE_LENGTH)]
        if max_positions is not None and max_positions <= MAX_FULL_LENGTH:
            lengths.append(max_positions)
        labels = None
        if self.kind.endswith("ForSequenceClassification"):
            labels = "regression" if self.num_labels == 1 else "classes"
        elif self.kind.endswith(_LM_SUFFIXES):
            labels = "tokens"
        recipes = [
            InputRecipe(self.text_specs(shape, labels), self.origin, labels, self.num_labels)
            for shape in self.shapes([(n,) for n in lengths])
        ]
        if "pixel_values" in self.params:  # CLIP-like: right after the first, text alone failed
            first = recipes[0]
            image = InputRecipe((*first.inputs, self.image_specs()[0]), first.origin, labels)
            recipes.insert(1, image)
        return recipes

    def text_specs(self, shape: Shape, labels: str | None = None) -> tuple[InputSpec, ...]:
        if self.vocab is None:
            return ()
        specs = [InputSpec("input_ids", shape, self.vocab)]
        if self.takes("attention_mask"):
            specs.append(InputSpec("attention_mask", shape, ones=True))
        if "decoder_input_ids" in self.params and labels != "tokens":
            specs.append(InputSpec("decoder_input_ids", shape, self.vocab))
        return tuple(specs)

    # -- images ------------------------------------------------------------------------------
    def image_specs(self) -> list[InputSpec]:
        """``pixel_values`` candidates: declared size first, video layout first if declared."""
        channels = declared_channels(self.model) or 3
        declared = declared_image_size(self.model)
        sizes = [declared[0]] if declared is not None else []
        sizes += [s for s in IMAGE_SIZES if s not in sizes]
        frames = positive_int(config_value(self.config, "num_frames", "vision_config"))
        shapes: list[Shape] = []
        if frames is not None:
            shapes += [(frames, channels, *size) for size in sizes]
        shapes += [(channels, *size) for size in sizes]
        return [InputSpec("pixel_values", shape) for shape in self.shapes(shapes)]

    def pixels(self) -> list[InputRecipe]:
        declared = declared_image_size(self.model)
        origin = declared[1] if declared is not None else self.origin
        recipes = [
            InputRecipe((spec,), origin, self.classes, self.num_labels)
            for spec in self.image_specs()
        ]
        if "input_ids" in self.params and self.vocab is not None:
            first = recipes[0]
            text = self.text_specs((SEQUENCE_LENGTH,))
            recipes.append(InputRecipe((*first.inputs, *text), first.origin, first.labels))
        return recipes

    # -- audio -------------------------------------------------------------------------------
    def audio_values(self) -> list[InputRecipe]:
        config = self.config
        samples = max(AUDIO_SAMPLES, conv_min_length(config) or 0)
        shapes: list[Shape] = []
        mel = positive_int(config_value(config, "num_mel_bins", "audio_config"))
        frames = positive_int(config_value(config, "max_length", "audio_config"))
        if mel is not None and frames is not None:
            shapes.append((frames, mel))
        channels = positive_int(config_value(config, "audio_channels", "audio_config"))
        if channels is not None:
            shapes.append((channels, samples))
        shapes += [(samples,), (1, samples)]
        labels = self.clip_classes
        return [
            InputRecipe((InputSpec("input_values", shape),), self.origin, labels, self.num_labels)
            for shape in self.shapes(shapes)
        ]

    def audio_features(self) -> list[InputRecipe]:
        features = self.feature_size()
        positions = positive_int(config_value(self.config, "max_source_positions", "audio_config"))
        shapes: list[Shape] = [(features, 2 * positions)] if positions else []
        shapes += [(features, WHISPER_FRAMES), (FEATURE_FRAMES, features)]
        extra: tuple[InputSpec, ...] = ()
        labels = None
        if "decoder_input_ids" in self.params and self.vocab is not None:
            if self.generation:
                labels = "decoder_tokens"
            else:
                extra = (InputSpec("decoder_input_ids", (DECODER_LENGTH,), self.vocab),)
        else:
            labels = self.clip_classes
        return [
            InputRecipe(
                (InputSpec("input_features", shape), *extra),
                self.origin,
                labels,
                self.num_labels,
                self.vocab,
            )
            for shape in self.shapes(shapes)
        ]

    def feature_size(self) -> int:
        config = self.config
        for name in ("num_mel_bins", "feature_projection_input_dim"):
            value = positive_int(config_value(config, name, "audio_config"))
            if value is not None:
                return value
        per_channel = positive_int(getattr(config, "input_feat_per_channel", None))
        if per_channel is not None:
            return per_channel * (positive_int(getattr(config, "input_channels", 1)) or 1)
        return positive_int(config_value(config, "feature_size", "audio_config")) or 80


__all__ = ["hf_recipes"]
