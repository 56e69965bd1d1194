"""Kronos predictor module: checkpoint key/shape tables (spec §3.3-3.5), config checks, kernels, caches."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from model.checkpoint import config_to_dict
from model.layers import KronosBlock
from model.transformer import KRONOS_CONFIGS, Kronos, KronosConfig

BLOCK_KEYS = [
    "norm1.weight",
    "self_attn.q_proj.weight", "self_attn.q_proj.bias", "self_attn.k_proj.weight", "self_attn.k_proj.bias",
    "self_attn.v_proj.weight", "self_attn.v_proj.bias", "self_attn.out_proj.weight", "self_attn.out_proj.bias",
    "self_attn.rotary.inv_freq", "norm2.weight", "ffn.w1.weight", "ffn.w3.weight", "ffn.w2.weight",
]
CONFIG_KEYS = {"s1_bits", "s2_bits", "n_layers", "d_model", "n_heads", "ff_dim", "ffn_dropout_p",
               "attn_dropout_p", "resid_dropout_p", "token_dropout_p", "learn_te"}
TINY = dict(s1_bits=4, s2_bits=5, n_layers=2, d_model=32, n_heads=2, ff_dim=48, ffn_dropout_p=0.0,
            attn_dropout_p=0.0, resid_dropout_p=0.0, token_dropout_p=0.0, learn_te=True)


def expected_shapes(c: KronosConfig) -> dict[str, tuple[int, ...]]:
    """Spec §3.3 written out by substitution."""
    d, f, hd, V1, V2 = c.d_model, c.ff_dim, c.d_model // c.n_heads, 2 ** c.s1_bits, 2 ** c.s2_bits
    te = "" if c.learn_te else ".emb"
    shapes = {"embedding.emb_s1.weight": (V1, d), "embedding.emb_s2.weight": (V2, d),
              "embedding.fusion_proj.weight": (d, 2 * d), "embedding.fusion_proj.bias": (d,)}
    for name, n in [("minute", 60), ("hour", 24), ("weekday", 7), ("day", 32), ("month", 13)]:
        shapes[f"time_emb.{name}_embed{te}.weight"] = (n, d)
    block = {"norm1.weight": (d,), "self_attn.rotary.inv_freq": (hd // 2,), "norm2.weight": (d,),
             "ffn.w1.weight": (f, d), "ffn.w3.weight": (f, d), "ffn.w2.weight": (d, f)}
    for p in "qkv":
        block[f"self_attn.{p}_proj.weight"], block[f"self_attn.{p}_proj.bias"] = (d, d), (d,)
    block["self_attn.out_proj.weight"], block["self_attn.out_proj.bias"] = (d, d), (d,)
    for i in range(c.n_layers):
        shapes.update({f"transformer.{i}.{k}": block[k] for k in BLOCK_KEYS})
    shapes["norm.weight"] = (d,)
    for p in ("q", "k", "v", "out"):
        shapes[f"dep_layer.cross_attn.{p}_proj.weight"] = (d, d)
        shapes[f"dep_layer.cross_attn.{p}_proj.bias"] = (d,)
    shapes["dep_layer.cross_attn.rotary.inv_freq"] = (d // 8,)
    shapes["dep_layer.norm.weight"] = (d,)
    shapes.update({"head.proj_s1.weight": (V1, d), "head.proj_s1.bias": (V1,),
                   "head.proj_s2.weight": (V2, d), "head.proj_s2.bias": (V2,)})
    return shapes


@pytest.mark.parametrize("name, n_keys, n_params", [
    ("mini", 80, 4_108_032), ("small", 136, 24_741_376), ("base", 192, 102_310_592)])
def test_published_configs_keys_shapes_and_parameter_counts(name, n_keys, n_params):
    config = KRONOS_CONFIGS[name]
    with torch.device("meta"):
        model = Kronos(config)
    state = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert len(state) == n_keys
    assert state == expected_shapes(config)
    assert sum(p.numel() for p in model.parameters()) == n_params


def test_small_dump_of_spec_3_5():
    model = Kronos(**TINY)
    state = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert len(state) == 52
    assert state["transformer.0.self_attn.rotary.inv_freq"] == (8,)
    assert state["dep_layer.cross_attn.rotary.inv_freq"] == (4,)
    assert state["embedding.emb_s2.weight"] == (32, 32) and state["head.proj_s1.weight"] == (16, 32)
    assert model.state_dict()["transformer.0.self_attn.rotary.inv_freq"].dtype == torch.float32
    hd = 16
    expected = 1.0 / 10000 ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd)
    torch.testing.assert_close(model.transformer[0].self_attn.rotary.inv_freq, expected)


def test_learn_te_false_uses_frozen_emb_tables():
    model = Kronos(**{**TINY, "learn_te": False})
    state = model.state_dict()
    assert {k for k in state if k.startswith("time_emb.")} == {
        f"time_emb.{n}_embed.emb.weight" for n in ("minute", "hour", "weekday", "day", "month")}
    assert not model.time_emb.minute_embed.emb.weight.requires_grad
    assert {k: tuple(v.shape) for k, v in state.items()} == expected_shapes(model.config)


def test_block_keys_are_spec_3_1():
    assert list(KronosBlock(32, 4, 48).state_dict()) == BLOCK_KEYS


def test_config_serialises_exactly_the_eleven_keys_and_upstream_keywords_build_it():
    model = Kronos(**TINY)
    assert isinstance(model.config, KronosConfig)
    assert set(config_to_dict(model.config)) == CONFIG_KEYS
    assert model.config == KronosConfig(**TINY)


@pytest.mark.parametrize("change, words", [
    (dict(d_model=30, n_heads=4), ["30", "4"]),
    (dict(d_model=36, n_heads=2), ["36", "8"]),  # dependency layer: 4 heads, even head dim
    (dict(n_layers=0), ["n_layers", "0"]),
    (dict(attn_dropout_p=1.5), ["attn_dropout_p", "1.5"]),
])
def test_config_validation_names_the_numbers(change, words):
    with pytest.raises(ValueError) as err:
        KronosConfig(**{**TINY, **change})
    assert all(w in str(err.value) for w in words)


def _inputs(B=2, T=9, V1=16, V2=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    s1, s2 = torch.randint(0, V1, (B, T), generator=g), torch.randint(0, V2, (B, T), generator=g)
    stamp = torch.stack([torch.randint(0, n, (B, T), generator=g) for n in (60, 24, 7, 32, 13)], -1).float()
    return s1, s2, stamp


@pytest.mark.parametrize("train", [False, True])
def test_sdpa_equals_eager(train):
    torch.manual_seed(0)
    model = Kronos(**TINY).train(train)
    s1, s2, stamp = _inputs()
    outs = {}
    for impl in ("sdpa", "eager"):
        model.set_attn_impl(impl)
        outs[impl] = model(s1, s2, stamp, use_teacher_forcing=True, s1_targets=s1)
    for a, b in zip(outs["sdpa"], outs["eager"]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_eval_mode_is_deterministic_despite_dropouts():
    model = Kronos(**{**TINY, "ffn_dropout_p": 0.3, "attn_dropout_p": 0.3, "resid_dropout_p": 0.3,
                      "token_dropout_p": 0.3}).eval()
    s1, s2, stamp = _inputs()
    torch.testing.assert_close(model.decode_s1(s1, s2, stamp)[0], model.decode_s1(s1, s2, stamp)[0], rtol=0, atol=0)


def test_kv_cache_trunk_equals_full_trunk():
    torch.manual_seed(1)
    model = Kronos(**TINY).eval()
    s1, s2, stamp = _inputs(T=11)
    full = model.trunk(s1, s2, stamp)
    caches = [(torch.zeros(2, 2, 11, 16), torch.zeros(2, 2, 11, 16)) for _ in range(2)]
    parts = [model.trunk(s1[:, :6], s2[:, :6], stamp[:, :6], caches=caches)]
    parts.append(model.trunk(s1[:, 6:8], s2[:, 6:8], stamp[:, 6:8], caches=caches, start=6))
    for t in range(8, 11):
        parts.append(model.trunk(s1[:, t:t + 1], s2[:, t:t + 1], stamp[:, t:t + 1], caches=caches, start=t))
    torch.testing.assert_close(torch.cat(parts, dim=1), full, rtol=1e-5, atol=1e-5)


def test_last_position_s2_equals_decode_s2():
    torch.manual_seed(2)
    model = Kronos(**TINY).eval()
    s1, s2, stamp = _inputs()
    _, ctx = model.decode_s1(s1, s2, stamp)
    a = torch.tensor([3, 7])
    reference = model.decode_s2(ctx, a[:, None])[:, -1]
    k, v = model.dep_kv(ctx)
    torch.testing.assert_close(model.s2_logits_last(ctx[:, -1], k, v, a), reference, rtol=1e-5, atol=1e-5)


def test_forward_samples_s1_without_teacher_forcing_and_shapes():
    model = Kronos(**TINY).train()
    s1, s2, stamp = _inputs()
    l1, l2 = model(s1, s2, stamp)
    assert l1.shape == (2, 9, 16) and l2.shape == (2, 9, 32)
    l1.sum().add(l2.sum()).backward()
    assert model.transformer[0].ffn.w1.weight.grad is not None


def test_rotary_cache_follows_device_moves_and_reloads():
    model = Kronos(**TINY)
    rot = model.transformer[0].self_attn.rotary
    rot(0, 4, torch.device("cpu"))
    assert rot._cos is not None
    model.to(torch.float32)  # any _apply drops the tables
    assert rot._cos is None
    rot(0, 4, torch.device("cpu"))
    model.load_state_dict(model.state_dict())
    assert rot._cos is None


def test_config_dataclass_fields():
    serialised = [f.name for f in dataclasses.fields(KronosConfig) if f.metadata.get("serialize", True)]
    assert set(serialised) == CONFIG_KEYS and len(serialised) == 11
