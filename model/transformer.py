"""The Kronos decoder-only predictor (spec §2.2, §3.3, §4.3), read top to bottom like nanoGPT.

A K-line is one pair of tokens ``(s1, s2)`` (coarse, fine) produced by the tokenizer. The model embeds
the pair, adds a temporal embedding of the bar's timestamp, runs ``n_layers`` causal blocks, predicts
the next s1 from the final normed state and then, through a small "dependency-aware" cross-attention
conditioned on the chosen s1, the next s2.

Besides the upstream API (``forward``, ``decode_s1``, ``decode_s2``), the model exposes the pieces an
incremental decoder needs (``trunk`` with a key/value cache, ``dep_kv``, ``s2_logits_last``); they
state the cached semantics and are checked against the full forward in the tests. The predictor
(``model/predictor.py``, ``model/decoding.py``) owns the caches and the loop, and runs a packed copy
of these weights (``PackedKronos``) with the same maths. The modules stay pure functions of token ids.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoint import PretrainedMixin, config_property
from .layers import (ATTN_IMPLS, KronosBlock, KronosRMSNorm, KronosRotaryEmbedding, apply_rope, attention,
                     refuse_padding_mask)

DEP_HEADS = 4  # the dependency layer always has 4 heads, whatever n_heads is (spec §4.3.6)
TIME_FEATURES = ("minute", "hour", "weekday", "day", "month")  # column order of a stamp tensor
TIME_TABLE_SIZES = {"minute": 60, "hour": 24, "weekday": 7, "day": 32, "month": 13}


@dataclasses.dataclass
class KronosConfig:
    """Hyper-parameters of ``Kronos``; the serialised fields are exactly the 11 ``config.json`` keys."""

    s1_bits: int
    s2_bits: int
    n_layers: int
    d_model: int
    n_heads: int
    ff_dim: int
    ffn_dropout_p: float
    attn_dropout_p: float
    resid_dropout_p: float
    token_dropout_p: float
    learn_te: bool
    # Runtime kernel choice ("sdpa" or the eager reference); not a checkpoint key, never saved.
    attn_impl: str = dataclasses.field(default="sdpa", metadata={"serialize": False})

    def __post_init__(self):
        for name in ("s1_bits", "s2_bits", "n_layers", "d_model", "n_heads", "ff_dim"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError(f"head dim d_model/n_heads ({self.d_model}/{self.n_heads}) must be even for RoPE")
        if self.d_model % (2 * DEP_HEADS):
            raise ValueError(
                f"d_model ({self.d_model}) must be divisible by {2 * DEP_HEADS}: the dependency layer "
                f"uses {DEP_HEADS} heads with an even head dim"
            )
        for name in ("ffn_dropout_p", "attn_dropout_p", "resid_dropout_p", "token_dropout_p"):
            if not 0.0 <= float(getattr(self, name)) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.attn_impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got {self.attn_impl!r}")


def _preset(n_layers, d_model, n_heads, ff_dim, ffn, attn, resid, token) -> KronosConfig:
    return KronosConfig(s1_bits=10, s2_bits=10, n_layers=n_layers, d_model=d_model, n_heads=n_heads,
                        ff_dim=ff_dim, ffn_dropout_p=ffn, attn_dropout_p=attn, resid_dropout_p=resid,
                        token_dropout_p=token, learn_te=True)


# Architectures of the published checkpoints (spec §1.1); always prefer the real config.json.
KRONOS_CONFIGS = {
    "mini": _preset(4, 256, 4, 512, 0.2, 0.0, 0.2, 0.0),
    "small": _preset(8, 512, 8, 1024, 0.25, 0.1, 0.25, 0.1),
    "base": _preset(12, 832, 16, 2048, 0.2, 0.0, 0.2, 0.0),
}


class HierarchicalEmbedding(nn.Module):
    """``fusion_proj(concat(sqrt(d) E1[s1], sqrt(d) E2[s2]))``: one vector per (s1, s2) pair."""

    def __init__(self, s1_bits: int, s2_bits: int, d_model: int = 256):
        super().__init__()
        self.s1_bits, self.s2_bits = s1_bits, s2_bits
        self.d_model = d_model
        self.emb_s1 = nn.Embedding(2 ** s1_bits, d_model)
        self.emb_s2 = nn.Embedding(2 ** s2_bits, d_model)
        self.fusion_proj = nn.Linear(2 * d_model, d_model)
        nn.init.normal_(self.emb_s1.weight, mean=0.0, std=d_model ** -0.5)
        nn.init.normal_(self.emb_s2.weight, mean=0.0, std=d_model ** -0.5)

    def split_composite(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # Upstream's composite convention for this helper (s1 in the high bits); see spec §4.2.
        return self.split_token(ids, self.s2_bits)

    @staticmethod
    def split_token(token_ids: torch.Tensor, s2_bits: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Composite ids with s1 in the high bits -> ``(s1, s2)`` (``s1 = id >> s2_bits``).

        This is *not* the tokenizer's ``half=False`` id (``s1 + s2 * 2**s1_bits``, spec §4.2).
        """
        if isinstance(s2_bits, bool) or not isinstance(s2_bits, int) or s2_bits < 1:
            raise ValueError(f"s2_bits must be a positive integer, got {s2_bits!r}")
        t = token_ids.long()
        return t >> s2_bits, t & ((1 << s2_bits) - 1)

    def forward(self, s1_ids, s2_ids: torch.Tensor | None = None) -> torch.Tensor:
        """(B, T) int64 ids -> (B, T, d).

        ``s1_ids`` may also be upstream's single argument: a ``(s1, s2)`` list/tuple, or composite
        ids (s1 in the high bits) when ``s2_ids`` is None.
        """
        if s2_ids is None and isinstance(s1_ids, (list, tuple)):
            s1_ids, s2_ids = s1_ids
        if s2_ids is None:
            s1_ids, s2_ids = self.split_composite(s1_ids)
        scale = math.sqrt(self.d_model)
        e = torch.cat((self.emb_s1(s1_ids) * scale, self.emb_s2(s2_ids) * scale), dim=-1)  # (B, T, 2d)
        return self.fusion_proj(e)


class FixedEmbedding(nn.Module):
    """A frozen table (``learn_te=false``): stored as ``<name>.emb.weight`` with requires_grad off.

    Upstream fills it with sinusoids and then its weight initialiser overwrites them with noise
    (spec §7.3.11), so the content only ever comes from the checkpoint.
    """

    def __init__(self, c_in: int, d_model: int):
        super().__init__()
        position = torch.arange(c_in, dtype=torch.float32)[:, None]
        freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10000.0) / d_model))
        table = torch.zeros(c_in, d_model)
        table[:, 0::2] = torch.sin(position * freq)
        table[:, 1::2] = torch.cos(position * freq)[:, : d_model // 2]
        self.emb = nn.Embedding(c_in, d_model)
        self.emb.weight = nn.Parameter(table, requires_grad=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.emb(idx).detach()


class TemporalEmbedding(nn.Module):
    """Sum of minute/hour/weekday/day/month table rows for a stamp (B, T, 5) -> (B, T, d)."""

    def __init__(self, d_model: int, learn_pe: bool):
        super().__init__()
        make = (lambda n: nn.Embedding(n, d_model)) if learn_pe else (lambda n: FixedEmbedding(n, d_model))
        for name in TIME_FEATURES:
            setattr(self, f"{name}_embed", make(TIME_TABLE_SIZES[name]))

    def forward(self, stamp: torch.Tensor) -> torch.Tensor:
        idx = stamp.long()  # truncation, as upstream
        minute, hour, weekday, day, month = (idx[..., i] for i in range(5))
        # Summation order of upstream (hour first, minute last) keeps float results identical.
        return (self.hour_embed(hour) + self.weekday_embed(weekday) + self.day_embed(day)
                + self.month_embed(month) + self.minute_embed(minute))


class DependencyCrossAttention(nn.Module):
    """Cross-attention of the dependency layer: queries from the s1 embedding, keys/values from x̂.

    RoPE uses a table as long as the *query* and applies it to q and k alike (spec §4.1); with a
    single query this is the identity, so inference attends without positions and without a mask.
    """

    def __init__(self, d_model: int, n_heads: int = DEP_HEADS, attn_dropout_p: float = 0.0, resid_dropout: float = 0.0,
                 attn_impl: str = "sdpa"):
        super().__init__()
        self.d_model, self.n_heads, self.head_dim = d_model, n_heads, d_model // n_heads
        self.q_proj = nn.Linear(d_model, d_model)
        self.k_proj = nn.Linear(d_model, d_model)
        self.v_proj = nn.Linear(d_model, d_model)
        self.out_proj = nn.Linear(d_model, d_model)
        self.rotary = KronosRotaryEmbedding(self.head_dim)
        self.attn_dropout_p = attn_dropout_p
        self.resid_dropout = nn.Dropout(resid_dropout)
        self.attn_impl = attn_impl

    def heads(self, x: torch.Tensor) -> torch.Tensor:
        B, T, _ = x.shape
        return x.view(B, T, self.n_heads, self.head_dim).transpose(1, 2)  # (B, h, T, hd)

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor | None = None,
                key_padding_mask=None) -> torch.Tensor:
        """query (B, Tq, d), key and value (B, Tk, d) (value defaults to key) -> (B, Tq, d)."""
        refuse_padding_mask(key_padding_mask)
        value = key if value is None else value
        B, Tq, _ = query.shape
        q, k, v = self.heads(self.q_proj(query)), self.heads(self.k_proj(key)), self.heads(self.v_proj(value))
        cos, sin = self.rotary(0, Tq, query.device)
        q, k = apply_rope(q, cos, sin), apply_rope(k, cos, sin)
        dropout_p = self.attn_dropout_p if self.training else 0.0
        # Causal only in training: the train/eval mismatch of upstream is kept on purpose (§7.3.2).
        y = attention(q, k, v, is_causal=self.training, dropout_p=dropout_p, impl=self.attn_impl)  # (B, h, Tq, hd)
        return self.resid_dropout(self.out_proj(y.transpose(1, 2).reshape(B, Tq, -1)))


class DependencyAwareLayer(nn.Module):
    """``y = RMSNorm(x̂ + CrossAttn(q=E1[s1], k=v=x̂))``; conditions the s2 head on an s1 choice."""

    def __init__(self, d_model: int, n_heads: int = DEP_HEADS, attn_dropout_p: float = 0.0,
                 resid_dropout: float = 0.0, attn_impl: str = "sdpa"):
        super().__init__()
        self.cross_attn = DependencyCrossAttention(d_model, n_heads, attn_dropout_p, resid_dropout, attn_impl)
        self.norm = KronosRMSNorm(d_model)

    def forward(self, hidden_states: torch.Tensor, sibling_embed: torch.Tensor, key_padding_mask=None) -> torch.Tensor:
        # With a length-1 query the (B, 1, d) output broadcasts over every position, as upstream.
        return self.norm(hidden_states + self.cross_attn(sibling_embed, hidden_states,
                                                         key_padding_mask=key_padding_mask))


class DualHead(nn.Module):
    """``proj_s1`` on x̂ and ``proj_s2`` on the dependency layer's output."""

    def __init__(self, s1_bits: int, s2_bits: int, d_model: int):
        super().__init__()
        self.vocab_s1, self.vocab_s2 = 2 ** s1_bits, 2 ** s2_bits
        self.proj_s1 = nn.Linear(d_model, self.vocab_s1)
        self.proj_s2 = nn.Linear(d_model, self.vocab_s2)

    def compute_loss(self, s1_logits: torch.Tensor, s2_logits: torch.Tensor, s1_targets: torch.Tensor,
                     s2_targets: torch.Tensor, padding_mask: torch.Tensor | None = None):
        """Next-token loss: ``(loss, ce_s1, ce_s2)`` with ``loss = (ce_s1 + ce_s2) / 2``.

        Cross-entropies average over every position of logits (B, T, V) and targets (B, T); with
        ``padding_mask`` (B, T) only the positions where it is 0 count.
        """
        if padding_mask is not None:
            keep = padding_mask == 0
            s1_logits, s2_logits, s1_targets, s2_targets = (
                s1_logits[keep], s2_logits[keep], s1_targets[keep], s2_targets[keep])
        ce_s1 = F.cross_entropy(s1_logits.reshape(-1, self.vocab_s1), s1_targets.reshape(-1))
        ce_s2 = F.cross_entropy(s2_logits.reshape(-1, self.vocab_s2), s2_targets.reshape(-1))
        return (ce_s1 + ce_s2) / 2, ce_s1, ce_s2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj_s1(x)

    def cond_forward(self, x2: torch.Tensor) -> torch.Tensor:
        return self.proj_s2(x2)


class Kronos(PretrainedMixin, nn.Module):
    """Kronos predictor (hub id e.g. ``NeoQuasar/Kronos-small``).

    Parameters
    ----------
    config : KronosConfig or dict, optional
        The architecture. Upstream's 11 constructor arguments build it instead, positional in
        upstream's order (``s1_bits, s2_bits, n_layers, d_model, n_heads, ff_dim, ffn_dropout_p,
        attn_dropout_p, resid_dropout_p, token_dropout_p, learn_te``) or by keyword.
        ``config.attn_impl`` picks the attention kernel ("sdpa", or the "eager" reference).

    Upstream's attributes (``s1_bits``, ``n_layers``, ``d_model``, ... ``learn_te``,
    ``s1_vocab_size``) read the config.
    """

    config_class = KronosConfig

    s1_bits = config_property("s1_bits")
    s2_bits = config_property("s2_bits")
    n_layers = config_property("n_layers")
    d_model = config_property("d_model")
    n_heads = config_property("n_heads")
    ff_dim = config_property("ff_dim")
    ffn_dropout_p = config_property("ffn_dropout_p")
    attn_dropout_p = config_property("attn_dropout_p")
    resid_dropout_p = config_property("resid_dropout_p")
    token_dropout_p = config_property("token_dropout_p")
    learn_te = config_property("learn_te")

    @property
    def s1_vocab_size(self) -> int:
        """``2 ** s1_bits``."""
        return 2 ** self.config.s1_bits

    def __init__(self, *args, **kwargs):
        super().__init__()
        self.config = config = self._build_config(args, kwargs)
        d, attn_impl = config.d_model, config.attn_impl
        self.embedding = HierarchicalEmbedding(config.s1_bits, config.s2_bits, d)
        self.time_emb = TemporalEmbedding(d, config.learn_te)
        self.token_drop = nn.Dropout(config.token_dropout_p)
        self.transformer = nn.ModuleList([
            KronosBlock(d, config.n_heads, config.ff_dim, config.ffn_dropout_p, config.attn_dropout_p,
                        config.resid_dropout_p, attn_impl)
            for _ in range(config.n_layers)
        ])
        self.norm = KronosRMSNorm(d)
        self.dep_layer = DependencyAwareLayer(d, attn_impl=attn_impl)
        self.head = DualHead(config.s1_bits, config.s2_bits, d)
        self.apply(self._init_weights)

    def _init_weights(self, module: nn.Module) -> None:
        # Random init only matters for fresh models (tests, benchmarks, training from scratch).
        if isinstance(module, nn.Linear):
            nn.init.xavier_normal_(module.weight)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Embedding):
            nn.init.normal_(module.weight, mean=0.0, std=self.config.d_model ** -0.5)

    def set_attn_impl(self, impl: str) -> None:
        """Switch every attention module between ``"sdpa"`` and ``"eager"`` (the reference)."""
        if impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got {impl!r}")
        self.config.attn_impl = impl
        for m in self.modules():
            if hasattr(m, "attn_impl"):
                m.attn_impl = impl

    # ---- upstream API -------------------------------------------------------------------------

    def decode_s1(self, s1_ids: torch.Tensor, s2_ids: torch.Tensor, stamp: torch.Tensor | None = None,
                  padding_mask=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Trunk over a window with positions 0..T-1.

        Returns ``(logits_s1 (B, T, V1), context x̂ (B, T, d))``. ``padding_mask`` must be None
        (see ``model.layers.refuse_padding_mask``).
        """
        refuse_padding_mask(padding_mask)
        x = self.trunk(s1_ids, s2_ids, stamp)
        return self.head(x), x

    def decode_s2(self, context: torch.Tensor, s1_ids: torch.Tensor, padding_mask=None) -> torch.Tensor:
        """s2 logits (B, T, V2) conditioned on ``s1_ids`` (B, Tq) over the context x̂ (B, T, d)."""
        return self.head.cond_forward(self.dep_layer(context, self.embedding.emb_s1(s1_ids),
                                                     key_padding_mask=padding_mask))

    def forward(self, s1_ids: torch.Tensor, s2_ids: torch.Tensor, stamp: torch.Tensor | None = None,
                padding_mask=None, use_teacher_forcing: bool = False, s1_targets: torch.Tensor | None = None,
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """Training forward: ``(logits_s1 (B, T, V1), logits_s2 (B, T, V2))``; upstream's signature.

        The s1 conditioning the s2 head is ``s1_targets`` with teacher forcing, otherwise drawn with
        ``torch.multinomial`` from the model's own s1 distribution (consumes global RNG, as upstream).
        ``padding_mask`` must be None (see ``model.layers.refuse_padding_mask``).
        """
        refuse_padding_mask(padding_mask)
        if use_teacher_forcing and s1_targets is None:
            raise ValueError("use_teacher_forcing=True needs s1_targets (B, T)")
        x = self.trunk(s1_ids, s2_ids, stamp)
        logits_s1 = self.head(x)
        if use_teacher_forcing:
            sibling = s1_targets
        else:
            probs = F.softmax(logits_s1.detach(), dim=-1)  # (B, T, V1)
            sibling = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1).view(s1_ids.shape)
        logits_s2 = self.head.cond_forward(self.dep_layer(x, self.embedding.emb_s1(sibling)))
        return logits_s1, logits_s2

    # ---- pieces for incremental decoding ------------------------------------------------------

    def trunk(self, s1_ids: torch.Tensor, s2_ids: torch.Tensor, stamp: torch.Tensor | None = None,
              caches: list[tuple[torch.Tensor, torch.Tensor]] | None = None, start: int = 0) -> torch.Tensor:
        """Embed, run the blocks and the final norm: (B, T) ids -> x̂ (B, T, d).

        With ``caches`` (one (k_buf, v_buf) pair of (B, H, N, hd) per block) the tokens sit at window
        positions ``start .. start+T-1`` and attend to the cached earlier positions.
        """
        x = self.embedding(s1_ids, s2_ids)  # (B, T, d)
        if stamp is not None:
            x = x + self.time_emb(stamp)
        x = self.token_drop(x)
        for i, block in enumerate(self.transformer):
            x = block(x, cache=None if caches is None else caches[i], start=start)
        return self.norm(x)

    def dep_kv(self, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Dependency-layer keys/values of x̂ (B, T, d) -> two (B, 4, T, d/4) (unrotated, eval)."""
        ca = self.dep_layer.cross_attn
        return ca.heads(ca.k_proj(context)), ca.heads(ca.v_proj(context))

    def s2_logits_last(self, last: torch.Tensor, dep_k: torch.Tensor, dep_v: torch.Tensor,
                       s1_ids: torch.Tensor) -> torch.Tensor:
        """Eval-mode s2 logits at the last window position only.

        Parameters
        ----------
        last : (B, d) x̂ of the last window position.
        dep_k, dep_v : (B, 4, W, d/4) from ``dep_kv`` over the whole window.
        s1_ids : (B,) the s1 just chosen for the next token.

        Returns
        -------
        (B, V2) logits; equal to ``decode_s2(x̂, s1_ids[:, None])[:, -1]`` in eval mode.
        """
        ca = self.dep_layer.cross_attn
        q = ca.heads(ca.q_proj(self.embedding.emb_s1(s1_ids)[:, None]))  # (B, 4, 1, d/4)
        # A single query: the RoPE table is position 0 (identity) and there is no mask.
        a = attention(q, dep_k, dep_v, impl=ca.attn_impl)  # (B, 4, 1, d/4)
        a = ca.out_proj(a.transpose(1, 2).reshape(last.shape[0], -1))  # (B, d)
        return self.head.proj_s2(self.dep_layer.norm(last + a))
