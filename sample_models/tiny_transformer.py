"""One transformer encoder block written out, over token ids, with a classification head.

Demonstrates sites of both kinds: the block's MLP uses the module ``nn.GELU`` and the head calls
the functional ``F.gelu`` (found through neurodiag's torch function mode), and (N, T, F) sequence
tensors whose neurons are the last dim. It also demonstrates ``make_data()``: without a data
spec, neurodiag scans the labelled toy task defined below; ``tiny_transformer.yaml`` names the
same function explicitly (``tiny_transformer.py:make_data``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

VOCAB = 100
SEQ_LEN = 16
DIM = 64
HEADS = 4
CLASSES = 4


class SelfAttention(nn.Module):
    """Multi-head scaled dot-product self-attention."""

    def __init__(self, dim: int = DIM, heads: int = HEADS) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, x: Tensor) -> Tensor:
        n, t, d = x.shape
        q, k, v = self.qkv(x).view(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        mixed = F.scaled_dot_product_attention(q, k, v)
        out: Tensor = self.out(mixed.transpose(1, 2).reshape(n, t, d))
        return out


class EncoderBlock(nn.Module):
    """Pre-norm block: x + attn(norm(x)), then x + mlp(norm(x)) with a GELU MLP."""

    def __init__(self, dim: int = DIM, heads: int = HEADS, hidden: int = 4 * DIM) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, x: Tensor) -> Tensor:
        x = x + self.attn(self.norm1(x))
        out: Tensor = x + self.mlp(self.norm2(x))
        return out


class ClassifierHead(nn.Module):
    """Mean-pool the tokens, then Linear -> functional GELU -> Linear."""

    def __init__(self, dim: int = DIM, classes: int = CLASSES) -> None:
        super().__init__()
        self.hidden = nn.Linear(dim, dim)
        self.out = nn.Linear(dim, classes)

    def forward(self, x: Tensor) -> Tensor:
        logits: Tensor = self.out(F.gelu(self.hidden(x.mean(dim=1))))
        return logits


class TinyTransformer(nn.Module):
    """Token + position embeddings, one encoder block, final norm, classification head."""

    def __init__(self) -> None:
        super().__init__()
        self.tokens = nn.Embedding(VOCAB, DIM)
        self.positions = nn.Embedding(SEQ_LEN, DIM)
        self.block = EncoderBlock()
        self.norm = nn.LayerNorm(DIM)
        self.head = ClassifierHead()

    def forward(self, ids: Tensor) -> Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.tokens(ids) + self.positions(positions)
        logits: Tensor = self.head(self.norm(self.block(x)))
        return logits


def build_model() -> TinyTransformer:
    """The model neurodiag scans for ``tiny_transformer.py``."""
    return TinyTransformer()


def make_data(seed: int = 0) -> tuple[Tensor, Tensor]:
    """512 random sequences labelled by which quarter of the vocabulary their first token is in.

    Returns tensors ``(ids, labels)``, which neurodiag batches with the data options; it passes
    ``seed`` because this function declares a parameter of that name.
    """
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(0, VOCAB, (512, SEQ_LEN), generator=generator)
    labels = ids[:, 0] * CLASSES // VOCAB
    return ids, labels
