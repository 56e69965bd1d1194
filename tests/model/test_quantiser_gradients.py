"""Gradients of the tokenizer's quantiser (spec §4.2 step 5) against independent float64 computations.

The straight-through estimator acts on the unscaled sign and the 1/sqrt(C) scale comes after it,
so the gradient reaching the normalised code u is (1/sqrt(C)) * identity. An estimator applied to
the already scaled code would pass sqrt(C) times more gradient into the encoder.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from model.tokenizer import KronosTokenizer
from tests.model.spec_tokenizer import float64_params, tokenizer_training_forward, tokenizer_training_loss


def _quantiser(cfg: dict):
    """Encoder codes v -> (q, bits, loss) through the tokenizer's own quantiser."""
    return KronosTokenizer(**cfg).tokenizer.encode_bits


def test_quantiser_gradient_is_the_analytic_one_in_float64(tiny_tokenizer_config):
    """d/dv of sum(w * q) = J_normalise(v)^T (w / sqrt(C)), derived by hand and evaluated in numpy."""
    C = tiny_tokenizer_config["s1_bits"] + tiny_tokenizer_config["s2_bits"]
    g = torch.Generator().manual_seed(0)
    v = torch.randn(3, 5, C, generator=g, dtype=torch.float64, requires_grad=True)
    w = torch.randn(3, 5, C, generator=g, dtype=torch.float64)
    q, bits, _ = _quantiser(tiny_tokenizer_config)(v)
    (w * q).sum().backward()

    vn = v.detach().numpy()
    norm = np.linalg.norm(vn, axis=-1, keepdims=True)
    u = vn / norm
    np.testing.assert_array_equal(bits.numpy(), (u > 0).astype(np.int64))
    np.testing.assert_allclose(q.detach().numpy(), np.where(u > 0, 1.0, -1.0) / math.sqrt(C), rtol=0, atol=1e-15)
    g_u = w.numpy() / math.sqrt(C)
    g_v = (g_u - u * np.sum(u * g_u, axis=-1, keepdims=True)) / norm  # Jacobian of v / ||v||
    np.testing.assert_allclose(v.grad.numpy(), g_v, rtol=1e-12, atol=1e-14)


def test_quantiser_forward_loss_and_gradients_match_the_spec_in_float64(tiny_tokenizer_config):
    cfg = tiny_tokenizer_config
    C = cfg["s1_bits"] + cfg["s2_bits"]
    g = torch.Generator().manual_seed(1)
    v0 = torch.randn(4, 6, C, generator=g, dtype=torch.float64)
    w = torch.randn(4, 6, C, generator=g, dtype=torch.float64)

    v = v0.clone().requires_grad_(True)
    q, _, loss = _quantiser(cfg)(v, with_loss=True)
    ((w * q).sum() + loss).backward()

    # Spec §4.2 steps 4-5 and the BSQ loss, with torch.autograd in float64.
    ref_v = v0.clone().requires_grad_(True)
    u = ref_v / torch.clamp(ref_v.norm(dim=-1, keepdim=True), min=1e-12)
    ref_q = (u + (torch.where(u > 0, 1.0, -1.0).double() - u).detach()) / math.sqrt(C)
    u2, q2 = u.reshape(-1, C), ref_q.detach().reshape(-1, C)
    p = torch.sigmoid(-4.0 * u2 / math.sqrt(C))

    def H(t):
        return -t * torch.log(t + 1e-8) - (1 - t) * torch.log(1 - t + 1e-8)

    ref_loss = cfg["beta"] * ((q2 - u2) ** 2).sum(-1).mean() + cfg["zeta"] * (
        cfg["gamma0"] * H(p).sum(-1).mean() - cfg["gamma"] * H(p.mean(0)).sum())
    ((w * ref_q).sum() + ref_loss).backward()

    torch.testing.assert_close(q, ref_q, rtol=0, atol=1e-15)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(v.grad, ref_v.grad, rtol=1e-12, atol=1e-14)


def test_tokenizer_training_gradients_match_a_float64_transcription_of_the_spec(tiny_tokenizer_config):
    """Every parameter's gradient of upstream's tokenizer objective, ours (float32) vs the spec (float64)."""
    torch.manual_seed(7)
    tok = KronosTokenizer(**tiny_tokenizer_config).train()
    x = torch.randn(3, 12, 6, generator=torch.Generator().manual_seed(8))

    (z_pre, z_full), bsq, q, _ = tok(x)
    loss = 0.5 * (torch.nn.functional.mse_loss(z_pre, x) + torch.nn.functional.mse_loss(z_full, x) + bsq)
    loss.backward()

    params = float64_params(tok)
    ref_pre, ref_full, ref_bsq, ref_q, _ = tokenizer_training_forward(params, x.double(), tiny_tokenizer_config)
    ref_loss = tokenizer_training_loss(params, x.double(), tiny_tokenizer_config)
    ref_loss.backward()

    torch.testing.assert_close(q.double(), ref_q, rtol=0, atol=1e-7)
    torch.testing.assert_close(z_full.double(), ref_full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(z_pre.double(), ref_pre, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(bsq.double(), ref_bsq, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss.double(), ref_loss, rtol=1e-5, atol=1e-6)
    for name, param in tok.named_parameters():
        ref = params[name].grad
        assert ref is not None and param.grad is not None, name
        err = (param.grad.double() - ref).norm() / ref.norm().clamp(min=1e-12)
        assert err < 1e-4, f"{name}: relative gradient error {err:.2e}"
    # The encoder side only gets gradient through the quantiser: it carries the 1/sqrt(C) factor.
    assert params["embed.weight"].grad.norm() > 0
