"""Transformer building blocks shared by the Kronos tokenizer and the Kronos predictor.

Everything here follows spec §4.1: RMSNorm computed in float32, rotary embedding with the
"half-split" layout (dimension j paired with j + hd/2, base 10000), multi-head attention with biases,
a SwiGLU feed-forward without biases, and the pre-norm causal block. Parameter and buffer names are
the checkpoint keys of spec §3.1, so a block's ``state_dict`` loads the published weights unchanged.

Two attention implementations sit behind one signature: ``"eager"`` writes the softmax out and is
the reference, ``"sdpa"`` calls ``torch.nn.functional.scaled_dot_product_attention`` (what upstream
runs since its commit dccfa76). Both accept a key/value cache so that the predictor can feed only the
newest tokens.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

ATTN_IMPLS = ("sdpa", "eager")
ROPE_BASE = 10000.0


def refuse_padding_mask(mask) -> None:
    """Padding masks are accepted in upstream's signatures but cannot work there: its causal attention
    hands SDPA a mask and ``is_causal=True`` together, which SDPA refuses. Say so instead of guessing
    a mask convention."""
    if mask is not None:
        raise ValueError(
            "padding_mask/key_padding_mask is not supported (upstream's causal attention cannot use one "
            "either: SDPA refuses a mask together with is_causal). Pass unpadded windows of equal length; "
            "KronosPredictor.predict_batch groups series of different context lengths itself."
        )


class KronosRMSNorm(nn.Module):
    """Root-mean-square norm, ``y = x / sqrt(mean(x^2) + eps) * weight`` (no bias, no centring).

    The statistic is taken in float32 and the result cast back to the input dtype *before* the
    weight multiply, which is what the published checkpoints were trained with.
    """

    def __init__(self, dim: int, eps: float = 1e-5):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return xf.type_as(x) * self.weight


class KronosRotaryEmbedding(nn.Module):
    """Rotary position tables for one head dimension (half-split layout, base 10000).

    ``inv_freq`` is a persistent float32 buffer because the checkpoints carry it (spec §3.1). The
    cos/sin tables are a plain cache, grown geometrically and rebuilt only when a longer position
    range or another device is asked for, never once per decoding step.
    """

    def __init__(self, dim: int, base: float = ROPE_BASE):
        super().__init__()
        if dim % 2:
            raise ValueError(f"rotary head dimension must be even, got {dim}")
        self.dim = dim
        inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim))
        self.register_buffer("inv_freq", inv_freq, persistent=True)
        self._cos: torch.Tensor | None = None  # (N, hd)
        self._sin: torch.Tensor | None = None  # (N, hd)

    def _build(self, length: int, device: torch.device) -> None:
        inv_freq = self.inv_freq.to(device=device, dtype=torch.float32)
        t = torch.arange(length, device=device, dtype=torch.float32)
        freqs = torch.outer(t, inv_freq)  # (N, hd/2)
        emb = torch.cat((freqs, freqs), dim=-1)  # (N, hd)
        self._cos, self._sin = emb.cos(), emb.sin()

    def forward(self, start: int, length: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(cos, sin)`` of shape (length, hd) for positions ``start .. start+length-1``."""
        end = start + length
        if self._cos is None or self._cos.shape[0] < end or self._cos.device != device:
            self._build(max(end, 2 * (0 if self._cos is None else self._cos.shape[0]), 64), device)
        return self._cos[start:end], self._sin[start:end]

    def _load_from_state_dict(self, *args, **kwargs):
        # A loaded inv_freq may differ from the one the cache was built from.
        self._cos = self._sin = None
        super()._load_from_state_dict(*args, **kwargs)

    def _apply(self, fn, *args, **kwargs):
        # .to()/.cuda()/.half() move buffers; drop the cache so it is rebuilt on the new device.
        self._cos = self._sin = None
        return super()._apply(fn, *args, **kwargs)


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``[-x2, x1]`` for ``x = [x1, x2]`` split in two halves along the last dimension."""
    x1, x2 = x.chunk(2, dim=-1)
    return torch.cat((-x2, x1), dim=-1)


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Rotate ``x`` (B, H, T, hd) by tables (T, hd); the tables follow x's dtype under autocast."""
    cos, sin = cos.to(x.dtype), sin.to(x.dtype)
    return x * cos + rotate_half(x) * sin


def causal_mask(q_len: int, k_len: int, offset: int, device: torch.device) -> torch.Tensor:
    """Boolean (q_len, k_len) mask, True where query ``offset + i`` may see key ``j <= offset + i``."""
    q_pos = torch.arange(offset, offset + q_len, device=device)[:, None]
    return torch.arange(k_len, device=device)[None, :] <= q_pos


def attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    mask: torch.Tensor | None = None,
    is_causal: bool = False,
    dropout_p: float = 0.0,
    impl: str = "sdpa",
) -> torch.Tensor:
    """Scaled dot-product attention, (B, H, Tq, D) x (B, H, Tk, D) -> (B, H, Tq, D).

    ``mask`` is boolean (True = attend); ``is_causal`` uses the top-left aligned triangle, like
    SDPA. ``impl="eager"`` is the written-out reference; ``"sdpa"`` is the fused kernel.
    """
    if impl == "sdpa":
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p, is_causal=is_causal)
    scores = (q @ k.transpose(-2, -1)) / math.sqrt(q.shape[-1])  # (B, H, Tq, Tk)
    if is_causal:
        mask = torch.ones(q.shape[-2], k.shape[-2], dtype=torch.bool, device=q.device).tril()
    if mask is not None:
        scores = scores.masked_fill(~mask, float("-inf"))
    probs = torch.softmax(scores.float(), dim=-1).to(q.dtype)
    if dropout_p > 0.0:
        probs = F.dropout(probs, p=dropout_p)
    return probs @ v


class KronosAttention(nn.Module):
    """Causal multi-head self-attention with RoPE and an optional key/value cache.

    Parameters
    ----------
    d_model, n_heads : int
        Width and number of heads; head dim ``hd = d_model // n_heads``.
    attn_dropout_p : float
        Dropout on attention probabilities (training only).
    resid_dropout_p : float
        Dropout on the output after ``out_proj`` (training only).
    attn_impl : {"sdpa", "eager"}
        Kernel choice; can be switched later through the ``attn_impl`` attribute.
    """

    def __init__(self, d_model: int, n_heads: int, attn_dropout_p: float = 0.0, resid_dropout_p: float = 0.0,
                 attn_impl: str = "sdpa"):
        super().__init__()
        if d_model % n_heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by n_heads ({n_heads})")
        if attn_impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got {attn_impl!r}")
        self.n_heads = n_heads
        self.head_dim = d_model // n_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.rotary = KronosRotaryEmbedding(self.head_dim)
        self.attn_dropout_p = attn_dropout_p
        self.resid_dropout = nn.Dropout(resid_dropout_p)
        self.attn_impl = attn_impl

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, H, T, hd)

    def forward(self, x: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor] | None = None,
                start: int = 0, *, key_padding_mask=None) -> torch.Tensor:
        """Attend the T tokens of ``x`` (B, T, d), placed at positions ``start .. start+T-1``.

        Without ``cache`` this is the plain causal self-attention over ``x`` (``start`` must be 0).
        With ``cache = (k_buf, v_buf)``, two preallocated (B, H, N, hd) buffers, the rotated keys
        and values of the new tokens are written at ``start .. start+T-1`` and the queries attend
        causally to every cached position ``0 .. start+T-1``.
        """
        refuse_padding_mask(key_padding_mask)
        B, T, _ = x.shape
        q, k, v = self._heads(self.q_proj(x)), self._heads(self.k_proj(x)), self._heads(self.v_proj(x))
        cos, sin = self.rotary(start, T, x.device)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        if cache is not None:
            k_buf, v_buf = cache
            k_buf[:, :, start:start + T] = k
            v_buf[:, :, start:start + T] = v
            k, v = k_buf[:, :, :start + T], v_buf[:, :, :start + T]  # (B, H, start+T, hd)
        elif start:
            raise ValueError(f"start={start} needs a cache holding the earlier positions")
        dropout_p = self.attn_dropout_p if self.training else 0.0
        if start == 0:
            y = attention(q, k, v, is_causal=True, dropout_p=dropout_p, impl=self.attn_impl)
        elif T == 1:
            # One new token sees every cached position: no mask needed.
            y = attention(q, k, v, dropout_p=dropout_p, impl=self.attn_impl)
        else:
            mask = causal_mask(T, start + T, start, x.device)
            y = attention(q, k, v, mask=mask, dropout_p=dropout_p, impl=self.attn_impl)
        y = y.transpose(1, 2).reshape(B, T, -1)  # (B, T, d)
        return self.resid_dropout(self.out_proj(y))


class KronosMLP(nn.Module):
    """SwiGLU feed-forward ``w2(silu(w1 x) * w3 x)`` without biases, dropout after ``w2``."""

    def __init__(self, d_model: int, ff_dim: int, ffn_dropout_p: float = 0.0):
        super().__init__()
        self.w1 = nn.Linear(d_model, ff_dim, bias=False)
        self.w3 = nn.Linear(d_model, ff_dim, bias=False)
        self.w2 = nn.Linear(ff_dim, d_model, bias=False)
        self.ffn_dropout = nn.Dropout(ffn_dropout_p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.ffn_dropout(self.w2(F.silu(self.w1(x)) * self.w3(x)))


class KronosBlock(nn.Module):
    """Pre-norm causal transformer block (spec §4.1); keys ``norm1, self_attn, norm2, ffn`` (§3.1).

    ``x <- x + Attn(RMSNorm1(x))`` then ``x <- x + FFN(RMSNorm2(x))``; dropouts act only in training.
    """

    def __init__(self, d_model: int, n_heads: int, ff_dim: int = 1024, ffn_dropout_p: float = 0.0,
                 attn_dropout_p: float = 0.0, resid_dropout_p: float = 0.0, attn_impl: str = "sdpa"):
        super().__init__()
        self.norm1 = KronosRMSNorm(d_model)
        self.self_attn = KronosAttention(d_model, n_heads, attn_dropout_p, resid_dropout_p, attn_impl)
        self.norm2 = KronosRMSNorm(d_model)
        self.ffn = KronosMLP(d_model, ff_dim, ffn_dropout_p)

    def forward(self, x: torch.Tensor, cache: tuple[torch.Tensor, torch.Tensor] | None = None,
                start: int = 0, *, key_padding_mask=None) -> torch.Tensor:
        """(B, T, d) -> (B, T, d); RoPE positions ``start .. start+T-1`` (0 .. T-1 without cache)."""
        refuse_padding_mask(key_padding_mask)
        x = x + self.self_attn(self.norm1(x), cache=cache, start=start)
        return x + self.ffn(self.norm2(x))
