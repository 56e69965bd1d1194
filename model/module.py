"""Upstream's ``model.module`` names: the building blocks of the tokenizer and the predictor.

Each name is the class this package builds its models from (so ``isinstance`` checks on a loaded
model's sub-modules hold), constructed with upstream's arguments. ``RotaryPositionalEmbedding`` is
the one adapter: upstream calls it as ``rotary(q, k)``, the blocks here ask it for cos/sin tables.

Not provided: upstream's hard (histogram) codebook entropy, ``DifferentiableEntropyFunction`` /
``codebook_entropy``, which only its ``soft_entropy=False`` quantiser uses and no published
tokenizer was trained with; calling them raises ``NotImplementedError`` naming the replacement.
"""

from __future__ import annotations

import torch

from .layers import (KronosAttention as MultiHeadAttentionWithRoPE, KronosBlock as TransformerBlock,
                     KronosMLP as FeedForward, KronosRMSNorm as RMSNorm, KronosRotaryEmbedding, apply_rope)
from .tokenizer import KronosBinarySphericalQuantizer as BinarySphericalQuantizer, KronosQuantizer as BSQuantizer
from .transformer import (DependencyAwareLayer, DependencyCrossAttention as MultiHeadCrossAttentionWithRoPE, DualHead,
                          FixedEmbedding, HierarchicalEmbedding, TemporalEmbedding)

__all__ = [
    "BSQuantizer", "BinarySphericalQuantizer", "DependencyAwareLayer", "DifferentiableEntropyFunction", "DualHead",
    "FeedForward", "FixedEmbedding", "HierarchicalEmbedding", "MultiHeadAttentionWithRoPE",
    "MultiHeadCrossAttentionWithRoPE", "RMSNorm", "RotaryPositionalEmbedding", "TemporalEmbedding",
    "TransformerBlock", "codebook_entropy",
]

_HARD_ENTROPY = (
    "the hard (histogram) codebook entropy of upstream's soft_entropy=False quantiser is not implemented; "
    "the published tokenizers train with the soft analytical entropy: use "
    "BinarySphericalQuantizer(...).entropies(u) (per-sample and codebook entropy, spec §4.2)"
)


class RotaryPositionalEmbedding(KronosRotaryEmbedding):
    """Upstream's call form: ``rotary(q, k)`` rotates (B, H, T, hd) queries and keys at positions 0..T-1
    (the table follows the query length, as upstream)."""

    def forward(self, q: torch.Tensor, k: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cos, sin = super().forward(0, q.shape[-2], q.device)
        return apply_rope(q, cos, sin), apply_rope(k, cos, sin)


class DifferentiableEntropyFunction(torch.autograd.Function):
    """Not implemented (see the module docstring)."""

    @staticmethod
    def forward(ctx, *args, **kwargs):
        raise NotImplementedError(_HARD_ENTROPY)

    @staticmethod
    def backward(ctx, *grad_outputs):  # pragma: no cover - forward always raises
        raise NotImplementedError(_HARD_ENTROPY)


def codebook_entropy(zq, basis, K, eps=1e-4):
    """Not implemented (see the module docstring)."""
    raise NotImplementedError(_HARD_ENTROPY)
