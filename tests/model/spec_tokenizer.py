"""The tokenizer's training forward written straight from spec §4.1-§4.2, as float64 functions of a
``state_dict``, independent of ``model/`` code.

Used as the reference for forward values and gradients (``test_quantiser_gradients.py``) and for
the loss curve of a few fine-tuning steps (``test_upstream_finetune_calls.py``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def linear(p: dict, name: str, x: torch.Tensor) -> torch.Tensor:
    y = x @ p[f"{name}.weight"].T
    bias = p.get(f"{name}.bias")
    return y if bias is None else y + bias


def rms_norm(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    return x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-5) * w


def rope(x: torch.Tensor) -> torch.Tensor:
    """Half-split rotary embedding over (B, h, T, hd) with positions 0..T-1, base 10000."""
    T, hd = x.shape[-2], x.shape[-1]
    j = torch.arange(hd // 2, dtype=torch.float64)
    theta = 10000.0 ** (-2.0 * j / hd)
    angles = torch.arange(T, dtype=torch.float64)[:, None] * theta[None, :]  # (T, hd/2)
    cos = torch.cat([angles.cos(), angles.cos()], -1).to(x.dtype)
    sin = torch.cat([angles.sin(), angles.sin()], -1).to(x.dtype)
    rotated = torch.cat([-x[..., hd // 2:], x[..., : hd // 2]], -1)
    return x * cos + rotated * sin


def causal_self_attention(p: dict, name: str, x: torch.Tensor, n_heads: int) -> torch.Tensor:
    B, T, d = x.shape
    hd = d // n_heads

    def heads(t):
        return t.reshape(B, T, n_heads, hd).permute(0, 2, 1, 3)

    q = rope(heads(linear(p, f"{name}.q_proj", x)))
    k = rope(heads(linear(p, f"{name}.k_proj", x)))
    v = heads(linear(p, f"{name}.v_proj", x))
    scores = q @ k.transpose(-1, -2) / math.sqrt(hd)
    future = torch.ones(T, T, dtype=torch.bool).triu(1)
    scores = scores.masked_fill(future, float("-inf"))
    y = torch.softmax(scores, -1) @ v  # (B, h, T, hd)
    return linear(p, f"{name}.out_proj", y.permute(0, 2, 1, 3).reshape(B, T, d))


def block(p: dict, name: str, x: torch.Tensor, n_heads: int) -> torch.Tensor:
    x = x + causal_self_attention(p, f"{name}.self_attn", rms_norm(x, p[f"{name}.norm1.weight"]), n_heads)
    h = rms_norm(x, p[f"{name}.norm2.weight"])
    ffn = linear(p, f"{name}.ffn.w2", F.silu(linear(p, f"{name}.ffn.w1", h)) * linear(p, f"{name}.ffn.w3", h))
    return x + ffn


def stack(p: dict, prefix: str, x: torch.Tensor, n_heads: int) -> torch.Tensor:
    i = 0
    while f"{prefix}.{i}.norm1.weight" in p:
        x = block(p, f"{prefix}.{i}", x, n_heads)
        i += 1
    return x


def tokenizer_training_forward(p: dict, x: torch.Tensor, cfg: dict):
    """Spec §4.2 "Training forward": returns (z_pre, z_full, bsq_loss, q, u)."""
    C = cfg["s1_bits"] + cfg["s2_bits"]
    h = stack(p, "encoder", linear(p, "embed", x), cfg["n_heads"])
    v = linear(p, "quant_embed", h)
    u = v / torch.clamp(v.norm(dim=-1, keepdim=True), min=1e-12)
    sign = torch.where(u > 0, 1.0, -1.0).to(u.dtype)
    q = (u + (sign - u).detach()) / math.sqrt(C)  # step 5: straight-through, then the 1/sqrt(C) scale

    def decode(hidden):
        return linear(p, "head", stack(p, "decoder", hidden, cfg["n_heads"]))

    z_full = decode(linear(p, "post_quant_embed", q))
    z_pre = decode(linear(p, "post_quant_embed_pre", q[..., : cfg["s1_bits"]]))

    u2, q2 = u.reshape(-1, C), q.detach().reshape(-1, C)
    commit = cfg["beta"] * ((q2 - u2) ** 2).sum(-1).mean()
    prob = torch.sigmoid(-4.0 * u2 / math.sqrt(C))

    def entropy(t):
        return -t * torch.log(t + 1e-8) - (1 - t) * torch.log(1 - t + 1e-8)

    h_sample = entropy(prob).sum(-1).mean()
    h_codebook = entropy(prob.mean(0)).sum()
    bsq = commit + cfg["zeta"] * (cfg["gamma0"] * h_sample - cfg["gamma"] * h_codebook)
    return z_pre, z_full, bsq, q, u


def tokenizer_training_loss(p: dict, x: torch.Tensor, cfg: dict) -> torch.Tensor:
    """Upstream's tokenizer objective: (MSE(z_pre, x) + MSE(z_full, x) + L_bsq) / 2."""
    z_pre, z_full, bsq, _, _ = tokenizer_training_forward(p, x, cfg)
    return 0.5 * (F.mse_loss(z_pre, x) + F.mse_loss(z_full, x) + bsq)


def float64_params(module: torch.nn.Module) -> dict:
    """The module's parameters as fresh float64 leaves that require grad (buffers left out)."""
    return {k: v.detach().double().clone().requires_grad_(True) for k, v in module.named_parameters()}
