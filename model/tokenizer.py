"""KronosTokenizer: a causal transformer auto-encoder with a binary spherical quantiser (spec §4.2).

Each time step of a normalised bar series (``d_in`` features) becomes ``C = s1_bits + s2_bits``
bits, read as two sub-tokens: the coarse ``s1`` (first ``s1_bits`` code dimensions) and the fine
``s2`` (the rest), both **least-significant bit first**. The predictor only ever sees ``(s1, s2)``
pairs; the composite id of ``half=False`` (``s1 + s2 * 2**s1_bits``) exists for training metrics.

Upstream quirks kept on purpose (spec §7.3): the encoder and decoder build ``n_enc_layers - 1`` and
``n_dec_layers - 1`` blocks, and the grouped codebook buffers exist only so that the checkpoints'
keys load — they have no numerical effect.
"""

from __future__ import annotations

import dataclasses
import math

import torch
import torch.nn.functional as F
from torch import nn

from model.checkpoint import PretrainedMixin, config_property
from model.layers import ATTN_IMPLS, KronosBlock


@dataclasses.dataclass
class KronosTokenizerConfig:
    """Hyper-parameters of ``KronosTokenizer``; the serialised fields are the 16 ``config.json`` keys.

    ``attn_impl`` is a runtime choice ("sdpa" or the eager reference) and is not saved.
    """

    d_in: int
    d_model: int
    n_heads: int
    ff_dim: int
    n_enc_layers: int
    n_dec_layers: int
    ffn_dropout_p: float
    attn_dropout_p: float
    resid_dropout_p: float
    s1_bits: int
    s2_bits: int
    beta: float
    gamma0: float
    gamma: float
    zeta: float
    group_size: int
    attn_impl: str = dataclasses.field(default="sdpa", metadata={"serialize": False})

    def __post_init__(self) -> None:
        for name in ("d_in", "d_model", "n_heads", "ff_dim", "n_enc_layers", "n_dec_layers",
                     "s1_bits", "s2_bits", "group_size"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("ffn_dropout_p", "attn_dropout_p", "resid_dropout_p"):
            if not 0.0 <= float(getattr(self, name)) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.d_model % self.n_heads:
            raise ValueError(f"d_model ({self.d_model}) must be divisible by n_heads ({self.n_heads})")
        if (self.d_model // self.n_heads) % 2:
            raise ValueError(f"head dim d_model/n_heads ({self.d_model}/{self.n_heads}) must be even for RoPE")
        if self.s1_bits != self.s2_bits:
            # Decoding splits the code in two equal halves (spec §4.2, §7.3 item 10).
            raise ValueError(f"s1_bits ({self.s1_bits}) must equal s2_bits ({self.s2_bits})")
        if self.codebook_dim % self.group_size:
            raise ValueError(
                f"group_size ({self.group_size}) must divide s1_bits + s2_bits ({self.codebook_dim})"
            )
        if self.attn_impl not in ATTN_IMPLS:
            raise ValueError(f"attn_impl must be one of {ATTN_IMPLS}, got {self.attn_impl!r}")

    @property
    def codebook_dim(self) -> int:
        """``C``, the number of bits per time step."""
        return self.s1_bits + self.s2_bits


_PUBLISHED = dict(
    d_in=6, d_model=256, n_heads=4, ff_dim=512, n_enc_layers=4, n_dec_layers=4,
    ffn_dropout_p=0.0, attn_dropout_p=0.0, resid_dropout_p=0.0, s1_bits=10, s2_bits=10,
    beta=0.05, gamma0=1.0, gamma=1.1, zeta=0.05,
)
# Spec §1.1: Kronos-Tokenizer-base (verified) and Kronos-Tokenizer-2k (inferred; only group_size differs).
TOKENIZER_CONFIGS = {
    "base": KronosTokenizerConfig(**_PUBLISHED, group_size=4),
    "2k": KronosTokenizerConfig(**_PUBLISHED, group_size=5),
}


def bits_to_ids(bits: torch.Tensor) -> torch.Tensor:
    """Read bits LSB first: ``(..., n) {0,1} -> (...,) int64``, ``id = sum_j bits[j] * 2**j``."""
    powers = 2 ** torch.arange(bits.shape[-1], device=bits.device, dtype=torch.long)
    return (bits.long() * powers).sum(-1)


def ids_to_bits(ids: torch.Tensor, n_bits: int) -> torch.Tensor:
    """Inverse of ``bits_to_ids``: ``(...,) int -> (..., n_bits) int64`` in {0, 1}, LSB first."""
    shifts = torch.arange(n_bits, device=ids.device, dtype=torch.long)
    return (ids.long().unsqueeze(-1) >> shifts) & 1


def binary_entropy(p: torch.Tensor) -> torch.Tensor:
    """Elementwise ``-p ln(p + 1e-8) - (1 - p) ln(1 - p + 1e-8)``."""
    return -p * torch.log(p + 1e-8) - (1 - p) * torch.log(1 - p + 1e-8)


class KronosBinarySphericalQuantizer(nn.Module):
    """Sign quantiser on the unit sphere with the BSQ commitment + entropy loss (upstream's
    ``BinarySphericalQuantizer``; same constructor arguments).

    Only the configuration every published tokenizer uses is implemented: soft entropy with the
    analytical per-bit probabilities, L2-normalised codes, inverse temperature 1. Other values raise
    ``NotImplementedError`` instead of silently training something else. ``input_format`` and
    ``cb_entropy_compute`` do not change the numbers in that configuration and are only recorded.

    Buffers (names are checkpoint keys): ``basis`` [C] int64 ``2**(C-1) .. 1`` and ``group_basis``
    [g] int64 ``2**(g-1) .. 1`` (both persistent), ``group_codebook`` [2**g, g] (not saved). Token
    ids are read LSB first with ``bits_to_ids``; ``basis`` only numbers the ``indices`` metric.
    """

    def __init__(self, embed_dim: int, beta: float, gamma0: float, gamma: float, zeta: float,
                 input_format: str = "bchw", soft_entropy: bool = True, group_size: int = 9,
                 persample_entropy_compute: str = "analytical", cb_entropy_compute: str = "group",
                 l2_norm: bool = True, inv_temperature: float = 1):
        super().__init__()
        unsupported = {k: v for k, v, ok in (
            ("soft_entropy", soft_entropy, soft_entropy is True),
            ("persample_entropy_compute", persample_entropy_compute, persample_entropy_compute == "analytical"),
            ("cb_entropy_compute", cb_entropy_compute, cb_entropy_compute in ("group", "nce")),
            ("l2_norm", l2_norm, l2_norm is True),
            ("inv_temperature", inv_temperature, inv_temperature == 1),
        ) if not ok}
        if unsupported:
            raise NotImplementedError(
                f"BinarySphericalQuantizer{unsupported}: only the configuration of the published tokenizers is "
                "implemented (soft_entropy=True, persample_entropy_compute='analytical', l2_norm=True, "
                "inv_temperature=1)"
            )
        if embed_dim % group_size:
            raise ValueError(f"group_size ({group_size}) must divide embed_dim ({embed_dim})")
        self.embed_dim, self.group_size = int(embed_dim), int(group_size)
        self.beta, self.gamma0, self.gamma, self.zeta = beta, gamma0, gamma, zeta
        self.input_format, self.cb_entropy_compute = input_format, cb_entropy_compute
        self.soft_entropy, self.persample_entropy_compute = soft_entropy, persample_entropy_compute
        self.l2_norm, self.inv_temperature = l2_norm, inv_temperature
        C, g = self.embed_dim, self.group_size
        self.register_buffer("basis", 2 ** torch.arange(C - 1, -1, -1, dtype=torch.long))
        self.register_buffer("group_basis", 2 ** torch.arange(g - 1, -1, -1, dtype=torch.long))
        codes = (torch.arange(2**g).unsqueeze(-1) // self.group_basis) % 2  # (2^g, g), MSB first
        self.register_buffer("group_codebook", 2.0 * codes - 1.0, persistent=False)

    def quantize_bits(self, u: torch.Tensor, with_loss: bool = False):
        """Quantise normalised codes ``u`` (B, T, C).

        Returns
        -------
        q : (B, T, C) float
            ``(2b - 1) / sqrt(C)``; its gradient w.r.t. ``u`` is ``1/sqrt(C)`` times the identity
            (straight-through estimator on the sign, scaled afterwards).
        bits : (B, T, C) int64 in {0, 1}
        loss : scalar tensor
            The BSQ loss when ``with_loss`` (zero otherwise).
        """
        C = self.embed_dim
        bits = (u > 0).long()  # exactly 0 maps to bit 0
        sign = 2.0 * bits.to(u.dtype) - 1.0
        # Straight-through on the unscaled sign, then the 1/sqrt(C) scale (spec §4.2 step 5): the
        # gradient reaching u is (1/sqrt(C)) * identity, as in the published training runs.
        q = (u + (sign - u).detach()) / math.sqrt(C)
        loss = self.bsq_loss(u, q) if with_loss else u.new_zeros(())
        return q, bits, loss

    def forward(self, z: torch.Tensor, collect_metrics: bool = True):
        """Upstream's call: normalised codes ``z`` (..., C) -> ``(quantized, loss, metrics)``.

        ``metrics`` is empty without ``collect_metrics``, else ``{"H": codebook entropy, "indices":
        ids numbered with ``basis`` (first code dimension = most significant bit)}``.
        """
        q, bits, loss = self.quantize_bits(z, with_loss=collect_metrics)
        if not collect_metrics:
            return q, loss, {}
        _, h_codebook = self.entropies(z)
        return q, loss, {"H": h_codebook, "indices": (bits * self.basis).sum(-1)}

    def entropies(self, u: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(H_sample, H_codebook) of spec §4.2 with ``p = sigmoid(-4 u / sqrt(C))`` per bit."""
        C = u.shape[-1]
        p = torch.sigmoid(-4.0 * u.reshape(-1, C) / math.sqrt(C))  # (N, C)
        return binary_entropy(p).sum(-1).mean(), binary_entropy(p.mean(0)).sum()

    def bsq_loss(self, u: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """BSQ loss of spec §4.2 for normalised codes ``u`` and their quantised values ``q`` (..., C).

        ``beta * mean ||q - u||^2 + zeta * (gamma0 * H_sample - gamma * H_codebook)``; means run over
        every token position; ``q`` is detached.
        """
        C = u.shape[-1]
        commit = self.beta * (q.detach().reshape(-1, C) - u.reshape(-1, C)).pow(2).sum(-1).mean()
        h_sample, h_codebook = self.entropies(u)
        return commit + self.zeta * (self.gamma0 * h_sample - self.gamma * h_codebook)


class KronosQuantizer(nn.Module):
    """The quantiser at the checkpoint path ``tokenizer`` (upstream's ``BSQuantizer``, same arguments):
    L2-normalises the encoder's codes and hands them to ``bsq``."""

    def __init__(self, s1_bits: int, s2_bits: int, beta: float, gamma0: float, gamma: float, zeta: float,
                 group_size: int):
        super().__init__()
        self.s1_bits, self.s2_bits = int(s1_bits), int(s2_bits)
        self.codebook_dim = self.s1_bits + self.s2_bits
        self.bsq = KronosBinarySphericalQuantizer(self.codebook_dim, beta, gamma0, gamma, zeta, group_size=group_size)

    def encode_bits(self, v: torch.Tensor, with_loss: bool = False):
        """Encoder codes ``v`` (B, T, C) -> ``(q, bits, loss)`` of ``KronosBinarySphericalQuantizer.quantize_bits``."""
        return self.bsq.quantize_bits(F.normalize(v, p=2.0, dim=-1, eps=1e-12), with_loss=with_loss)

    @staticmethod
    def bits_to_indices(bits: torch.Tensor) -> torch.Tensor:
        """Signed codes (..., n) -> ids LSB first (a code >= 0 is bit 1)."""
        return bits_to_ids(bits >= 0)

    def forward(self, z: torch.Tensor, half: bool = False, collect_metrics: bool = True):
        """Upstream's call: ``(bsq_loss, quantized, z_indices)``; ``z_indices`` is the composite id
        ``s1 + s2 * 2**s1_bits``, or the pair ``(s1, s2)`` with ``half=True``."""
        q, bits, loss = self.encode_bits(z, with_loss=collect_metrics)
        if half:
            ids = (bits_to_ids(bits[..., :self.s1_bits]), bits_to_ids(bits[..., self.s1_bits:]))
        else:
            ids = bits_to_ids(bits)
        return loss, q, ids


class KronosTokenizer(PretrainedMixin, nn.Module):
    """Bars -> (s1, s2) token ids -> bars.

    Parameters
    ----------
    config : KronosTokenizerConfig or dict, optional
        Or upstream's 16 constructor arguments, positional in upstream's order
        (``d_in, d_model, n_heads, ff_dim, n_enc_layers, n_dec_layers, ffn_dropout_p, attn_dropout_p,
        resid_dropout_p, s1_bits, s2_bits, beta, gamma0, gamma, zeta, group_size``) or by keyword.

    Upstream's attributes ``d_in, d_model, n_heads, ff_dim, enc_layers, dec_layers, ffn_dropout_p,
    attn_dropout_p, resid_dropout_p, s1_bits, s2_bits, codebook_dim`` read the config.
    """

    config_class = KronosTokenizerConfig

    d_in = config_property("d_in")
    d_model = config_property("d_model")
    n_heads = config_property("n_heads")
    ff_dim = config_property("ff_dim")
    enc_layers = config_property("n_enc_layers")
    dec_layers = config_property("n_dec_layers")
    ffn_dropout_p = config_property("ffn_dropout_p")
    attn_dropout_p = config_property("attn_dropout_p")
    resid_dropout_p = config_property("resid_dropout_p")
    s1_bits = config_property("s1_bits")
    s2_bits = config_property("s2_bits")
    codebook_dim = config_property("codebook_dim")

    def __init__(self, *args, **kwargs):
        super().__init__()
        self.config = config = self._build_config(args, kwargs)
        d, C = config.d_model, config.codebook_dim

        def blocks(n: int) -> nn.ModuleList:
            # Upstream builds one block fewer than the configured layer count (spec §7.3 item 1).
            return nn.ModuleList(
                KronosBlock(d, config.n_heads, config.ff_dim, config.ffn_dropout_p,
                            config.attn_dropout_p, config.resid_dropout_p, config.attn_impl)
                for _ in range(n - 1)
            )

        # Registration order = state_dict order of spec §3.2.
        self.embed = nn.Linear(config.d_in, d)
        self.head = nn.Linear(d, config.d_in)
        self.encoder = blocks(config.n_enc_layers)
        self.decoder = blocks(config.n_dec_layers)
        self.quant_embed = nn.Linear(d, C)
        self.post_quant_embed_pre = nn.Linear(config.s1_bits, d)
        self.post_quant_embed = nn.Linear(C, d)
        self.tokenizer = KronosQuantizer(config.s1_bits, config.s2_bits, config.beta, config.gamma0, config.gamma,
                                         config.zeta, config.group_size)

    # ------------------------------------------------------------------------------------------
    def _encode_bits(self, x: torch.Tensor, with_loss: bool):
        h = self.embed(x)  # (B, T, d)
        for block in self.encoder:
            h = block(h)
        return self.tokenizer.encode_bits(self.quant_embed(h), with_loss=with_loss)  # q, bits (B, T, C), loss

    def _decode_q(self, h: torch.Tensor) -> torch.Tensor:
        for block in self.decoder:
            h = block(h)
        return self.head(h)  # (B, T, d_in)

    def encode(self, x: torch.Tensor, half: bool = False):
        """Tokenise normalised bars.

        Parameters
        ----------
        x : (B, T, d_in) float
            Normalised and clipped features. The encoder is causal: ids at t depend on x[:, :t+1].
        half : bool
            True: return ``(s1, s2)`` (what the predictor uses); False (upstream's default): one
            composite id ``s1 + s2 * 2**s1_bits``.

        Returns
        -------
        (s1, s2) : two (B, T) int64 tensors, or one (B, T) int64 tensor when ``half`` is False.
        """
        _, bits, _ = self._encode_bits(x, with_loss=False)
        if not half:
            return bits_to_ids(bits)
        s1_bits = self.config.s1_bits
        return bits_to_ids(bits[..., :s1_bits]), bits_to_ids(bits[..., s1_bits:])

    def decode(self, indices, half: bool = False) -> torch.Tensor:
        """Reconstruct normalised bars from token ids.

        Parameters
        ----------
        indices : (s1, s2) pair of (B, T) int64 tensors, or a (B, T) composite id when ``half`` is False.
        half : bool
            Which form ``indices`` has (upstream's default False: composite ids).

        Returns
        -------
        (B, T, d_in) float
            Normalised features (no clipping). Causal: row t depends on ids up to t.
        """
        return self._decode_q(self.post_quant_embed(self.indices_to_bits(indices, half)))

    def indices_to_bits(self, x, half: bool = False) -> torch.Tensor:
        """Token ids -> quantised codes ``(2b - 1) / sqrt(C)`` (B, T, C), as the decoder consumes them.

        ``x`` is a composite id tensor, or the pair ``(s1, s2)`` with ``half=True``.
        """
        C = self.config.codebook_dim
        if half:
            s1, s2 = x
            # Both halves use C/2 bits (s1_bits == s2_bits is enforced by the config).
            bits = torch.cat([ids_to_bits(s1, C // 2), ids_to_bits(s2, C // 2)], dim=-1)
        else:
            bits = ids_to_bits(x, C)
        return (2.0 * bits.to(self.post_quant_embed.weight.dtype) - 1.0) / math.sqrt(C)

    def forward(self, x: torch.Tensor):
        """Training forward.

        Parameters
        ----------
        x : (B, T, d_in) float

        Returns
        -------
        (z_pre, z_full) : two (B, T, d_in) reconstructions, from the coarse bits only and from all bits
        bsq_loss : scalar tensor (spec §4.2; may be negative)
        quantized : (B, T, C) quantised codes (straight-through)
        z_indices : (B, T) int64 composite ids ``s1 + s2 * 2**s1_bits``
        """
        q, bits, loss = self._encode_bits(x, with_loss=True)
        z_pre = self._decode_q(self.post_quant_embed_pre(q[..., : self.config.s1_bits]))
        z_full = self._decode_q(self.post_quant_embed(q))
        return (z_pre, z_full), loss, q, bits_to_ids(bits)
