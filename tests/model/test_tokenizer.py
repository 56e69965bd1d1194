"""KronosTokenizer: checkpoint layout (spec §3.2, §3.5), bit convention and the BSQ loss (spec §4.2)."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from model.tokenizer import (
    TOKENIZER_CONFIGS,
    KronosTokenizer,
    KronosTokenizerConfig,
    bits_to_ids,
    ids_to_bits,
)

BLOCK_KEYS = [  # (suffix, shape as a function of d, f, hd) of spec §3.1
    ("norm1.weight", lambda d, f, hd: [d]),
    ("self_attn.q_proj.weight", lambda d, f, hd: [d, d]), ("self_attn.q_proj.bias", lambda d, f, hd: [d]),
    ("self_attn.k_proj.weight", lambda d, f, hd: [d, d]), ("self_attn.k_proj.bias", lambda d, f, hd: [d]),
    ("self_attn.v_proj.weight", lambda d, f, hd: [d, d]), ("self_attn.v_proj.bias", lambda d, f, hd: [d]),
    ("self_attn.out_proj.weight", lambda d, f, hd: [d, d]), ("self_attn.out_proj.bias", lambda d, f, hd: [d]),
    ("self_attn.rotary.inv_freq", lambda d, f, hd: [hd // 2]),
    ("norm2.weight", lambda d, f, hd: [d]),
    ("ffn.w1.weight", lambda d, f, hd: [f, d]), ("ffn.w3.weight", lambda d, f, hd: [f, d]),
    ("ffn.w2.weight", lambda d, f, hd: [d, f]),
]


def expected_table(cfg: KronosTokenizerConfig) -> list[tuple[str, list[int]]]:
    d, f, hd, C = cfg.d_model, cfg.ff_dim, cfg.d_model // cfg.n_heads, cfg.s1_bits + cfg.s2_bits
    rows = [("embed.weight", [d, cfg.d_in]), ("embed.bias", [d]),
            ("head.weight", [cfg.d_in, d]), ("head.bias", [cfg.d_in])]
    for part, n in (("encoder", cfg.n_enc_layers - 1), ("decoder", cfg.n_dec_layers - 1)):
        rows += [(f"{part}.{i}.{k}", shape(d, f, hd)) for i in range(n) for k, shape in BLOCK_KEYS]
    rows += [("quant_embed.weight", [C, d]), ("quant_embed.bias", [C]),
             ("post_quant_embed_pre.weight", [d, cfg.s1_bits]), ("post_quant_embed_pre.bias", [d]),
             ("post_quant_embed.weight", [d, C]), ("post_quant_embed.bias", [d]),
             ("tokenizer.bsq.basis", [C]), ("tokenizer.bsq.group_basis", [cfg.group_size])]
    return rows


def table(module: torch.nn.Module) -> list[tuple[str, list[int]]]:
    return [(k, list(v.shape)) for k, v in module.state_dict().items()]


def test_small_config_key_table_matches_spec_3_5(tiny_tokenizer_config):
    tok = KronosTokenizer(**tiny_tokenizer_config)
    assert table(tok) == expected_table(tok.config)
    assert len(tok.state_dict()) == 68
    # Spot checks against the literal dump of spec §3.5.
    sd = tok.state_dict()
    assert list(sd["encoder.0.self_attn.rotary.inv_freq"].shape) == [4]
    assert list(sd["post_quant_embed_pre.weight"].shape) == [32, 4]
    assert sd["tokenizer.bsq.basis"].dtype == torch.int64
    assert sd["tokenizer.bsq.basis"].tolist() == [128, 64, 32, 16, 8, 4, 2, 1]
    assert sd["tokenizer.bsq.group_basis"].tolist() == [8, 4, 2, 1]
    assert "tokenizer.bsq.group_codebook" not in sd  # non-persistent
    assert tuple(tok.tokenizer.bsq.group_codebook.shape) == (16, 4)


@pytest.mark.parametrize("name", ["base", "2k"])
def test_published_configs_on_meta_device(name):
    cfg = TOKENIZER_CONFIGS[name]
    with torch.device("meta"):
        tok = KronosTokenizer(cfg)
    assert table(tok) == expected_table(cfg)
    assert len(tok.state_dict()) == 96
    assert sum(p.numel() for p in tok.parameters()) == 3_958_042
    assert list(tok.state_dict()["tokenizer.bsq.group_basis"].shape) == [{"base": 4, "2k": 5}[name]]


def test_upstream_keyword_construction_and_config_errors(tiny_tokenizer_config):
    TINY_TOKENIZER_CONFIG = tiny_tokenizer_config
    tok = KronosTokenizer(**TINY_TOKENIZER_CONFIG)
    assert tok.config == KronosTokenizerConfig(**TINY_TOKENIZER_CONFIG)
    with pytest.raises(TypeError, match="not both"):
        KronosTokenizer(tok.config, d_in=6)
    with pytest.raises(ValueError, match=r"s1_bits \(4\) must equal s2_bits \(5\)"):
        KronosTokenizerConfig(**{**TINY_TOKENIZER_CONFIG, "s2_bits": 5})
    with pytest.raises(ValueError, match=r"group_size \(3\) must divide s1_bits \+ s2_bits \(8\)"):
        KronosTokenizerConfig(**{**TINY_TOKENIZER_CONFIG, "group_size": 3})
    with pytest.raises(ValueError, match=r"d_model \(32\) must be divisible by n_heads \(5\)"):
        KronosTokenizerConfig(**{**TINY_TOKENIZER_CONFIG, "n_heads": 5})
    serialised = [f.name for f in dataclasses.fields(KronosTokenizerConfig) if f.metadata.get("serialize", True)]
    assert sorted(serialised) == sorted(TINY_TOKENIZER_CONFIG)


def test_encode_decode_shapes_and_ranges(tiny_tokenizer):
    x = torch.randn(3, 11, 6)
    s1, s2 = tiny_tokenizer.encode(x, half=True)
    assert s1.shape == s2.shape == (3, 11) and s1.dtype == s2.dtype == torch.int64
    assert 0 <= int(s1.min()) and int(s1.max()) < 16 and 0 <= int(s2.min()) and int(s2.max()) < 16
    composite = tiny_tokenizer.encode(x, half=False)
    assert torch.equal(composite, s1 + s2 * 16)
    y = tiny_tokenizer.decode((s1, s2), half=True)
    assert y.shape == (3, 11, 6) and y.dtype == torch.float32
    torch.testing.assert_close(tiny_tokenizer.decode(composite, half=False), y, rtol=0, atol=0)


def test_encoder_and_decoder_are_causal(tiny_tokenizer):
    x = torch.randn(2, 12, 6)
    s1, s2 = tiny_tokenizer.encode(x, half=True)
    p1, p2 = tiny_tokenizer.encode(x[:, :7], half=True)
    assert torch.equal(p1, s1[:, :7]) and torch.equal(p2, s2[:, :7])
    torch.testing.assert_close(tiny_tokenizer.decode((s1[:, :7], s2[:, :7]), half=True),
                               tiny_tokenizer.decode((s1, s2), half=True)[:, :7])


def test_bits_are_read_lsb_first_and_zero_is_bit_zero(tiny_tokenizer_config):
    tok = KronosTokenizer(**tiny_tokenizer_config).eval()
    signs = torch.tensor([1.0, -1.0, -1.0, -1.0, -1.0, 1.0, -1.0, -1.0])  # bits 10000100
    with torch.no_grad():
        tok.quant_embed.weight.zero_()
        tok.quant_embed.bias.copy_(signs)
    s1, s2 = tok.encode(torch.randn(1, 3, 6), half=True)
    assert s1.tolist() == [[1, 1, 1]] and s2.tolist() == [[2, 2, 2]]
    with torch.no_grad():
        tok.quant_embed.bias.zero_()  # u == 0 everywhere -> every bit is 0
    assert [t.tolist() for t in tok.encode(torch.randn(1, 2, 6), half=True)] == [[[0, 0]], [[0, 0]]]

    seen = {}
    tok.post_quant_embed.register_forward_hook(lambda m, inp, out: seen.update(q=inp[0]))
    tok.decode((torch.tensor([[1]]), torch.tensor([[2]])), half=True)
    torch.testing.assert_close(seen["q"][0, 0], signs / math.sqrt(8))


def test_bit_helpers_round_trip():
    ids = torch.arange(256)
    bits = ids_to_bits(ids, 8)
    assert bits[5].tolist() == [1, 0, 1, 0, 0, 0, 0, 0]
    assert torch.equal(bits_to_ids(bits), ids)


def _bsq_loss_float64(u: np.ndarray, cfg: KronosTokenizerConfig) -> float:
    """Independent re-derivation of the BSQ loss of spec §4.2 in float64 numpy."""
    C = u.shape[-1]
    q = np.where(u > 0, 1.0, -1.0) / np.sqrt(C)
    commit = cfg.beta * np.mean(np.sum((q - u) ** 2, axis=-1))
    p = 1.0 / (1.0 + np.exp(4.0 * u / np.sqrt(C)))

    def H(p):
        return -p * np.log(p + 1e-8) - (1 - p) * np.log(1 - p + 1e-8)

    h_sample = np.mean(np.sum(H(p), axis=-1))
    h_codebook = np.sum(H(p.mean(axis=0)))
    return commit + cfg.zeta * (cfg.gamma0 * h_sample - cfg.gamma * h_codebook)


def test_training_forward_and_bsq_loss_against_float64(tiny_tokenizer):
    tok = tiny_tokenizer
    captured = {}
    tok.quant_embed.register_forward_hook(lambda m, inp, out: captured.update(v=out.detach()))
    x = torch.randn(4, 9, 6)
    (z_pre, z_full), loss, quantized, z_indices = tok(x)
    assert z_pre.shape == z_full.shape == (4, 9, 6)
    assert quantized.shape == (4, 9, 8) and z_indices.shape == (4, 9)
    s1, s2 = tok.encode(x, half=True)
    assert torch.equal(z_indices, s1 + 16 * s2)

    v = captured["v"].double().reshape(-1, 8).numpy()
    u = v / np.maximum(np.linalg.norm(v, axis=-1, keepdims=True), 1e-12)
    expected = _bsq_loss_float64(u, tok.config)
    assert abs(loss.item() - expected) < 2e-6
    np.testing.assert_allclose(quantized.detach().reshape(-1, 8).numpy(), np.where(u > 0, 1, -1) / np.sqrt(8),
                               rtol=0, atol=1e-7)


def test_straight_through_gradient_reaches_the_encoder(tiny_tokenizer):
    tok = tiny_tokenizer.train()
    x = torch.randn(2, 8, 6)
    (z_pre, z_full), loss, _, _ = tok(x)
    (torch.nn.functional.mse_loss(z_full, x) + torch.nn.functional.mse_loss(z_pre, x) + loss).backward()
    for name in ("embed.weight", "encoder.0.ffn.w1.weight", "quant_embed.weight", "post_quant_embed_pre.weight"):
        grad = dict(tok.named_parameters())[name].grad
        assert grad is not None and grad.abs().sum() > 0, name


def test_eager_and_sdpa_agree(tiny_tokenizer_dir):
    x = torch.randn(2, 10, 6)
    sdpa = KronosTokenizer.from_pretrained(tiny_tokenizer_dir)
    eager = KronosTokenizer.from_pretrained(tiny_tokenizer_dir, attn_impl="eager")
    assert eager.encoder[0].self_attn.attn_impl == "eager"
    ids = sdpa.encode(x, half=True)
    assert all(torch.equal(a, b) for a, b in zip(ids, eager.encode(x, half=True)))
    torch.testing.assert_close(sdpa.decode(ids, half=True), eager.decode(ids, half=True), rtol=1e-5, atol=1e-6)
