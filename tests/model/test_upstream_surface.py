"""Upstream Kronos's public surface, name by name: every name of its ``model`` package is imported
from ours and called, with the meaning upstream gives it (the list is the tests below)."""

from __future__ import annotations

import base64
import http.server
import inspect
import json
import math
import threading

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F

import model
from kronos_jobs.testing.oracle import oracle_generate
from model import kronos as kronos_module
from model import module as module_module

UPSTREAM_KRONOS_NAMES = {"Kronos", "KronosTokenizer", "KronosPredictor", "auto_regressive_inference",
                         "calc_time_stamps", "sample_from_logits", "top_k_top_p_filtering"}
UPSTREAM_MODULE_NAMES = {
    "DifferentiableEntropyFunction", "codebook_entropy", "BinarySphericalQuantizer", "BSQuantizer", "RMSNorm",
    "FeedForward", "RotaryPositionalEmbedding", "MultiHeadAttentionWithRoPE", "MultiHeadCrossAttentionWithRoPE",
    "HierarchicalEmbedding", "DependencyAwareLayer", "TransformerBlock", "DualHead", "FixedEmbedding",
    "TemporalEmbedding",
}
TOKENIZER_ARGS = ("d_in", "d_model", "n_heads", "ff_dim", "n_enc_layers", "n_dec_layers", "ffn_dropout_p",
                  "attn_dropout_p", "resid_dropout_p", "s1_bits", "s2_bits", "beta", "gamma0", "gamma", "zeta",
                  "group_size")
KRONOS_ARGS = ("s1_bits", "s2_bits", "n_layers", "d_model", "n_heads", "ff_dim", "ffn_dropout_p", "attn_dropout_p",
               "resid_dropout_p", "token_dropout_p", "learn_te")


# ---- package level ------------------------------------------------------------------------------

def test_every_upstream_name_imports_from_the_same_module():
    from model import Kronos, KronosPredictor, KronosTokenizer, get_model_class, model_dict  # noqa: F401

    for name in UPSTREAM_KRONOS_NAMES | UPSTREAM_MODULE_NAMES:
        assert getattr(kronos_module, name) is not None, f"model.kronos.{name}"
    for name in UPSTREAM_MODULE_NAMES:
        assert getattr(module_module, name) is not None, f"model.module.{name}"
    assert model.__version__
    assert kronos_module.Kronos is model.Kronos and kronos_module.KronosPredictor is model.KronosPredictor


def test_model_dict_and_get_model_class():
    assert model.model_dict == {"kronos_tokenizer": model.KronosTokenizer, "kronos": model.Kronos,
                                "kronos_predictor": model.KronosPredictor}
    for name, cls in model.model_dict.items():
        assert model.get_model_class(name) is cls
    with pytest.raises(NotImplementedError, match="kronos_tokenizer"):
        model.get_model_class("kronos-large")


# ---- constructors, attributes, persistence ---------------------------------------------------------

def test_positional_constructor_arguments_in_upstream_order(tiny_tokenizer_config, tiny_model_config):
    tok_pos = model.KronosTokenizer(*(tiny_tokenizer_config[k] for k in TOKENIZER_ARGS))
    assert tok_pos.config == model.KronosTokenizer(**tiny_tokenizer_config).config
    kr_pos = model.Kronos(*(tiny_model_config[k] for k in KRONOS_ARGS))
    assert kr_pos.config == model.Kronos(**tiny_model_config).config
    half = len(KRONOS_ARGS) // 2  # mixed: the first half positional, the rest by keyword
    mixed = model.Kronos(*(tiny_model_config[k] for k in KRONOS_ARGS[:half]),
                         **{k: tiny_model_config[k] for k in KRONOS_ARGS[half:]})
    assert mixed.config == kr_pos.config
    with pytest.raises(TypeError, match="multiple values"):
        model.Kronos(4, s1_bits=4)
    with pytest.raises(TypeError, match="at most 11"):
        model.Kronos(*range(12))
    assert list(inspect.signature(model.KronosPredictor).parameters)[:5] == [
        "model", "tokenizer", "device", "max_context", "clip"]


def test_config_attributes(tiny_tokenizer, tiny_model, tiny_tokenizer_config, tiny_model_config):
    for name in KRONOS_ARGS:
        assert getattr(tiny_model, name) == tiny_model_config[name], name
    assert tiny_model.s1_vocab_size == 2 ** tiny_model_config["s1_bits"]
    c = tiny_tokenizer_config
    expected = dict(d_in=c["d_in"], d_model=c["d_model"], n_heads=c["n_heads"], ff_dim=c["ff_dim"],
                    enc_layers=c["n_enc_layers"], dec_layers=c["n_dec_layers"], s1_bits=c["s1_bits"],
                    s2_bits=c["s2_bits"], codebook_dim=c["s1_bits"] + c["s2_bits"],
                    ffn_dropout_p=c["ffn_dropout_p"], attn_dropout_p=c["attn_dropout_p"],
                    resid_dropout_p=c["resid_dropout_p"])
    assert {k: getattr(tiny_tokenizer, k) for k in expected} == expected
    assert tiny_tokenizer.tokenizer.codebook_dim == expected["codebook_dim"]
    assert tiny_model.head.vocab_s1 == 16 and tiny_model.head.vocab_s2 == 16


def test_save_pretrained_keywords(tmp_path, tiny_model, tiny_model_config):
    tiny_model.save_pretrained(tmp_path / "a", config=dict(tiny_model_config))
    tiny_model.save_pretrained(tmp_path / "b", config=tiny_model.config)
    loaded = model.Kronos.from_pretrained(tmp_path / "a")
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), tiny_model.state_dict().values()))
    with pytest.raises(ValueError, match=r"\['n_layers'\]"):
        tiny_model.save_pretrained(tmp_path / "c", config=dict(tiny_model_config, n_layers=5))
    assert not (tmp_path / "c").exists()
    assert "model_card_kwargs" in inspect.signature(model.Kronos.save_pretrained).parameters


class _HubStandIn(http.server.BaseHTTPRequestHandler):
    """The few hub endpoints an upload touches; records the committed files."""

    commits: list = []

    def _reply(self, obj, code=200):
        data = json.dumps(obj).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):  # noqa: N802
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        base = f"http://127.0.0.1:{self.server.server_port}"
        if self.path == "/api/repos/create":
            return self._reply({"url": f"{base}/{json.loads(body)['organization']}/{json.loads(body)['name']}"})
        if self.path == "/api/validate-yaml":
            return self._reply({"errors": [], "warnings": []})
        if "/preupload/" in self.path:
            files = json.loads(body)["files"]
            return self._reply({"files": [{"path": f["path"], "uploadMode": "regular", "shouldIgnore": False}
                                          for f in files]})
        if "/commit/" in self.path:
            lines = [json.loads(line) for line in body.decode().splitlines() if line.strip()]
            type(self).commits.append((self.path, lines))
            return self._reply({"commitUrl": f"{base}/me/tiny/commit/{'a' * 40}", "commitOid": "a" * 40})
        return self._reply({"error": "not here"}, 404)

    def do_GET(self):  # noqa: N802
        self._reply({"error": "not here"}, 404)

    def log_message(self, *args):
        pass


@pytest.fixture
def hub_stand_in(monkeypatch):
    import huggingface_hub.constants

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _HubStandIn)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    _HubStandIn.commits = []
    monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{server.server_port}")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)  # other tests may switch it on
    yield _HubStandIn
    server.shutdown()
    server.server_close()


def test_push_to_hub_uploads_the_checkpoint_through_huggingface_hub(tmp_path, tiny_model, hub_stand_in):
    url = tiny_model.push_to_hub("me/tiny", token="hf_test", commit_message="fine-tuned")
    assert url.endswith("/me/tiny/commit/" + "a" * 40)
    (path, lines), = hub_stand_in.commits
    assert path == "/api/models/me/tiny/commit/main"
    assert lines[0]["value"]["summary"] == "fine-tuned"
    files = {entry["value"]["path"]: base64.b64decode(entry["value"]["content"]) for entry in lines[1:]}
    assert set(files) == {"config.json", "model.safetensors", "README.md"}
    for name, data in files.items():
        (tmp_path / name).write_bytes(data)
    loaded = model.Kronos.from_pretrained(tmp_path)  # what was uploaded is a loadable checkpoint
    assert all(torch.equal(a, b) for a, b in zip(loaded.state_dict().values(), tiny_model.state_dict().values()))


def test_push_to_hub_fails_clearly_when_the_hub_cannot_be_reached(tiny_model, monkeypatch):
    import huggingface_hub.constants

    with socket_on_closed_port() as port:
        monkeypatch.setattr(huggingface_hub.constants, "ENDPOINT", f"http://127.0.0.1:{port}")
        monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
        with pytest.raises(model.CheckpointError, match="cannot push Kronos to hub repository 'me/tiny'"):
            tiny_model.push_to_hub("me/tiny", token="hf_test")


class socket_on_closed_port:
    """A local port nothing listens on."""

    def __enter__(self) -> int:
        import socket

        s = socket.socket()
        s.bind(("127.0.0.1", 0))
        self.port = s.getsockname()[1]
        s.close()
        return self.port

    def __exit__(self, *exc):
        return False


# ---- tokenizer ----------------------------------------------------------------------------------

def test_tokenizer_encode_decode_default_to_composite_ids(tiny_tokenizer):
    x = torch.randn(2, 9, 6)
    ids = tiny_tokenizer.encode(x)
    s1, s2 = tiny_tokenizer.encode(x, half=True)
    assert torch.is_tensor(ids) and torch.equal(ids, s1 + s2 * 2 ** tiny_tokenizer.s1_bits)
    torch.testing.assert_close(tiny_tokenizer.decode(ids), tiny_tokenizer.decode([s1, s2], half=True), rtol=0, atol=0)
    bits = tiny_tokenizer.indices_to_bits(ids)
    assert bits.shape == (2, 9, 8)
    torch.testing.assert_close(bits.abs(), torch.full_like(bits, 1 / math.sqrt(8)))
    torch.testing.assert_close(bits, tiny_tokenizer.indices_to_bits((s1, s2), half=True))


def test_tokenizer_training_forward_returns_upstreams_tuple(tiny_tokenizer):
    x = torch.randn(2, 9, 6)
    (z_pre, z), bsq_loss, quantized, z_indices = tiny_tokenizer(x)
    assert z_pre.shape == z.shape == x.shape and bsq_loss.ndim == 0
    assert torch.equal(z_indices, tiny_tokenizer.encode(x))
    loss, q2, ids = tiny_tokenizer.tokenizer(tiny_tokenizer.quant_embed(torch.randn(2, 9, 32)), half=True)
    assert isinstance(ids, tuple) and ids[0].shape == (2, 9) and q2.shape == (2, 9, 8) and loss.ndim == 0
    assert torch.equal(module_module.BSQuantizer.bits_to_indices(torch.tensor([[1.0, -1.0, 0.0]])), torch.tensor([5]))


def test_quantiser_classes_take_upstreams_arguments():
    bsq = module_module.BinarySphericalQuantizer(8, 0.05, 1.0, 1.1, 0.05, group_size=4)
    u = F.normalize(torch.randn(3, 5, 8), dim=-1)
    q, loss, metrics = bsq(u)
    assert q.shape == u.shape and loss.ndim == 0 and set(metrics) == {"H", "indices"}
    expected_msb = ((u > 0).long() * 2 ** torch.arange(7, -1, -1)).sum(-1)
    assert torch.equal(metrics["indices"], expected_msb)
    assert bsq(u, collect_metrics=False)[2] == {}
    with pytest.raises(NotImplementedError, match="soft_entropy"):
        module_module.BinarySphericalQuantizer(8, 0.05, 1.0, 1.1, 0.05, soft_entropy=False, group_size=4)
    quantizer = module_module.BSQuantizer(4, 4, 0.05, 1.0, 1.1, 0.05, 4)
    z = torch.randn(2, 3, 8)
    loss, quantized, ids = quantizer(z)
    s1, s2 = quantizer(z, half=True)[2]
    assert torch.equal(ids, s1 + 16 * s2)
    torch.testing.assert_close(quantized, torch.where(z > 0, 1.0, -1.0) / math.sqrt(8))
    for call in (lambda: module_module.codebook_entropy(q, bsq.basis, 8),
                 lambda: module_module.DifferentiableEntropyFunction.apply(q, bsq.basis, 8, 1e-4)):
        with pytest.raises(NotImplementedError, match="entropies"):
            call()


# ---- predictor model -------------------------------------------------------------------------------

def test_kronos_forward_signature_and_padding_mask(tiny_model):
    s1 = torch.randint(0, 16, (2, 7))
    s2 = torch.randint(0, 16, (2, 7))
    stamp = torch.zeros(2, 7, 5)
    assert list(inspect.signature(model.Kronos.forward).parameters)[1:] == [
        "s1_ids", "s2_ids", "stamp", "padding_mask", "use_teacher_forcing", "s1_targets"]
    l1, l2 = tiny_model(s1, s2, stamp, None, True, s1)
    assert l1.shape == (2, 7, 16) and l2.shape == (2, 7, 16)
    for call in (lambda: tiny_model(s1, s2, stamp, padding_mask=torch.zeros(2, 7)),
                 lambda: tiny_model.decode_s1(s1, s2, stamp, padding_mask=torch.zeros(2, 7))):
        with pytest.raises(ValueError, match="padding_mask"):
            call()
    logits, context = tiny_model.decode_s1(s1, s2, stamp)
    assert tiny_model.decode_s2(context, s1[:, -1:]).shape == (2, 7, 16)


def test_dual_head_compute_loss(tiny_model):
    g = torch.Generator().manual_seed(0)
    l1, l2 = torch.randn(2, 5, 16, generator=g), torch.randn(2, 5, 16, generator=g)
    t1, t2 = torch.randint(0, 16, (2, 5), generator=g), torch.randint(0, 16, (2, 5), generator=g)
    loss, ce1, ce2 = tiny_model.head.compute_loss(l1, l2, t1, t2)
    lp1, lp2 = torch.log_softmax(l1, -1), torch.log_softmax(l2, -1)
    ref1 = -lp1.gather(-1, t1[..., None]).mean()
    ref2 = -lp2.gather(-1, t2[..., None]).mean()
    torch.testing.assert_close(ce1, ref1)
    torch.testing.assert_close(ce2, ref2)
    torch.testing.assert_close(loss, (ref1 + ref2) / 2)
    pad = torch.zeros(2, 5, dtype=torch.long)
    pad[:, :2] = 1  # 1 = padding, 0 = counted
    _, m1, _ = tiny_model.head.compute_loss(l1, l2, t1, t2, padding_mask=pad)
    torch.testing.assert_close(m1, -lp1[:, 2:].gather(-1, t1[:, 2:, None]).mean())


def test_building_blocks_with_upstreams_arguments():
    torch.manual_seed(0)
    x = torch.randn(2, 6, 16)
    norm = module_module.RMSNorm(16)
    torch.testing.assert_close(norm(x), x / torch.sqrt((x * x).mean(-1, keepdim=True) + 1e-5))
    ffn = module_module.FeedForward(16, 24, 0.0)
    torch.testing.assert_close(ffn(x), ffn.w2(F.silu(ffn.w1(x)) * ffn.w3(x)))

    rotary = module_module.RotaryPositionalEmbedding(8)
    q, k = torch.randn(2, 2, 6, 8), torch.randn(2, 2, 6, 8)
    rq, rk = rotary(q, k)
    angles = torch.arange(6.0)[:, None] * 10000.0 ** (-torch.arange(4.0) * 2 / 8)
    cos, sin = torch.cat([angles.cos()] * 2, -1), torch.cat([angles.sin()] * 2, -1)
    torch.testing.assert_close(rq, q * cos + torch.cat([-q[..., 4:], q[..., :4]], -1) * sin)
    torch.testing.assert_close(rk, k * cos + torch.cat([-k[..., 4:], k[..., :4]], -1) * sin)

    attn = module_module.MultiHeadAttentionWithRoPE(16, 2, 0.0, 0.0)
    y = attn(x, key_padding_mask=None)
    torch.testing.assert_close(attn(x[:, :3]), y[:, :3])  # causal
    block = module_module.TransformerBlock(16, 2)  # upstream's default ff_dim
    assert block.ffn.w1.out_features == 1024
    assert block(x, key_padding_mask=None).shape == x.shape

    cross = module_module.MultiHeadCrossAttentionWithRoPE(16, 4)
    assert cross(x, x, x).shape == x.shape
    dep = module_module.DependencyAwareLayer(16)
    assert dep(x, torch.randn(2, 6, 16), key_padding_mask=None).shape == x.shape

    emb = module_module.HierarchicalEmbedding(4, 4, 16)
    s1, s2 = torch.randint(0, 16, (2, 6)), torch.randint(0, 16, (2, 6))
    torch.testing.assert_close(emb([s1, s2]), emb(s1, s2))
    torch.testing.assert_close(emb(s1 * 16 + s2), emb((s1, s2)))  # composite: s1 in the high bits
    assert [t.tolist() for t in emb.split_token(torch.tensor([0x53]), 4)] == [[5], [3]]
    assert module_module.HierarchicalEmbedding(4, 4).d_model == 256

    head = module_module.DualHead(4, 5, 16)
    assert head(x).shape == (2, 6, 16) and head.cond_forward(x).shape == (2, 6, 32)

    fixed = module_module.FixedEmbedding(13, 8)
    table = fixed.emb.weight
    assert not table.requires_grad
    torch.testing.assert_close(table[3, 0], torch.sin(torch.tensor(3.0)))
    torch.testing.assert_close(table[3, 1], torch.cos(torch.tensor(3.0)))
    temporal = module_module.TemporalEmbedding(8, learn_pe=False)
    stamp = torch.tensor([[[5.0, 3.0, 1.0, 20.0, 7.0]]])
    expected = sum(getattr(temporal, f"{n}_embed").emb.weight[int(v)]
                   for n, v in zip(("minute", "hour", "weekday", "day", "month"), stamp[0, 0]))
    torch.testing.assert_close(temporal(stamp)[0, 0], expected)


# ---- sampling helpers and the low-level loop -------------------------------------------------------

def test_top_k_top_p_filtering():
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.15, 0.05]]))
    kept = lambda out: torch.isfinite(out)[0].tolist()  # noqa: E731
    assert kept(kronos_module.top_k_top_p_filtering(logits.clone(), top_k=2)) == [True, True, False, False]
    # keep up to and including the first token at which the cumulative mass exceeds top_p
    assert kept(kronos_module.top_k_top_p_filtering(logits.clone(), top_p=0.6)) == [True, True, False, False]
    assert kept(kronos_module.top_k_top_p_filtering(logits.clone(), top_p=0.4)) == [True, False, False, False]
    assert kept(kronos_module.top_k_top_p_filtering(logits.clone(), top_k=1, top_p=0.99)) == [True, False, False, False]
    assert kept(kronos_module.top_k_top_p_filtering(logits.clone(), top_p=0.4, min_tokens_to_keep=3)) == [
        True, True, True, False]
    t = logits.clone()
    out = kronos_module.top_k_top_p_filtering(t, top_k=1, filter_value=-1e9)
    assert out is t and t[0, 1].item() == -1e9  # in place, as upstream
    assert torch.equal(kronos_module.top_k_top_p_filtering(logits.clone()), logits)


def test_sample_from_logits_draws_from_the_global_generator():
    from model.decoding import sample_tokens

    logits = torch.randn(6, 32, generator=torch.Generator().manual_seed(1))
    torch.manual_seed(3)
    a = kronos_module.sample_from_logits(logits, temperature=0.7, top_k=0, top_p=0.9)
    torch.manual_seed(3)
    b = sample_tokens(logits, 0.7, 0, 0.9, None)  # the predictor's sampler: the same draws
    assert a.shape == (6, 1) and torch.equal(a[:, 0], b)
    greedy = kronos_module.sample_from_logits(logits, sample_logits=False)
    assert torch.equal(greedy[:, 0], logits.argmax(-1))
    assert torch.equal(kronos_module.sample_from_logits(logits, top_k=1)[:, 0], logits.argmax(-1))
    for bad in (dict(temperature=0.0), dict(top_p=1.5), dict(top_p=0.0)):
        with pytest.raises(ValueError):
            kronos_module.sample_from_logits(logits, **bad)


def test_calc_time_stamps():
    ts = pd.Series(pd.to_datetime(["2024-06-18 09:35", "2024-12-01 23:59"]), index=[7, 8])
    out = kronos_module.calc_time_stamps(ts)
    assert list(out.columns) == ["minute", "hour", "weekday", "day", "month"]
    assert out.loc[7].tolist() == [35, 9, 1, 18, 6] and out.loc[8].tolist() == [59, 23, 6, 1, 12]
    assert kronos_module.calc_time_stamps(pd.DatetimeIndex(ts)).iloc[1].tolist() == [59, 23, 6, 1, 12]


def _normalised_inputs(make_bars, B=2, L=20, P=6):
    bars = [make_bars(L + P, seed=i) for i in range(B)]
    feats = ["open", "high", "low", "close", "volume", "amount"]
    x = np.stack([(b[feats].to_numpy(np.float32)[:L] - b[feats].to_numpy(np.float32)[:L].mean(0))
                  / (b[feats].to_numpy(np.float32)[:L].std(0) + 1e-5) for b in bars])
    stamps = np.stack([kronos_module.calc_time_stamps(b["timestamps"]).to_numpy(np.float32) for b in bars])
    return x, stamps[:, :L], stamps[:, L:]


def test_auto_regressive_inference_matches_the_full_recompute_reference(tiny_tokenizer, tiny_model, make_bars):
    x, xs, ys = (torch.from_numpy(a) for a in _normalised_inputs(make_bars))
    M, P = 16, 6  # context 20 > max_context 16: every step slides
    torch.manual_seed(11)
    out = kronos_module.auto_regressive_inference(tiny_tokenizer, tiny_model, x, xs, ys, M, P, T=1.0, top_k=0,
                                                  top_p=0.9, sample_count=3)
    torch.manual_seed(11)
    ref_mean, *_ = oracle_generate(tiny_tokenizer, tiny_model, x, xs, ys, M, P, T=1.0, top_k=0, top_p=0.9,
                                   sample_count=3)
    assert out.shape == (2, min(20 + P, M), 6)
    np.testing.assert_allclose(out[:, -P:], ref_mean, rtol=1e-4, atol=1e-5)
    torch.manual_seed(11)
    again = kronos_module.auto_regressive_inference(tiny_tokenizer, tiny_model, x, xs, ys, M, P, top_p=0.9,
                                                    sample_count=3, use_kv_cache=True)
    np.testing.assert_array_equal(out, again)


# ---- KronosPredictor --------------------------------------------------------------------------------

@pytest.fixture
def predictor(tiny_tokenizer, tiny_model):
    return model.KronosPredictor(tiny_model, tiny_tokenizer, device="cpu", max_context=32)


def test_predictor_attributes(predictor):
    assert predictor.device == "cpu" and predictor.device == torch.device("cpu")
    assert predictor.device.type == "cpu" and str(predictor.device) == "cpu"
    assert predictor.price_cols == ["open", "high", "low", "close"]
    assert (predictor.vol_col, predictor.amt_vol) == ("volume", "amount")
    assert predictor.time_cols == ["minute", "hour", "weekday", "day", "month"]
    assert predictor.max_context == 32 and predictor.clip == 5
    assert model.KronosPredictor(predictor.model, predictor.tokenizer, None).device in ("cpu", "cuda:0", "mps")


def test_predictor_generate(predictor, make_bars):
    x, xs, ys = _normalised_inputs(make_bars)
    torch.manual_seed(5)
    out = predictor.generate(x, xs, ys, 6, 1.0, 0, 0.9, 2, False)
    torch.manual_seed(5)
    ref = kronos_module.auto_regressive_inference(predictor.tokenizer, predictor.model, torch.from_numpy(x),
                                                  torch.from_numpy(xs), torch.from_numpy(ys), 32, 6, 5, 1.0, 0, 0.9, 2)
    assert out.shape == (2, 6, 6)
    np.testing.assert_array_equal(out, ref[:, -6:])


def _predict(predictor, bars, **kw):
    ctx = bars.iloc[:24]
    return predictor.predict(ctx[["open", "high", "low", "close", "volume", "amount"]], ctx["timestamps"],
                             bars["timestamps"].iloc[24:30], pred_len=6, sample_count=2, **kw)


def test_seed_none_draws_from_torchs_global_generator(predictor, make_bars):
    bars = make_bars(30)
    torch.manual_seed(21)
    a = _predict(predictor, bars)
    torch.manual_seed(21)
    b = _predict(predictor, bars)
    torch.manual_seed(22)
    c = _predict(predictor, bars)
    pd.testing.assert_frame_equal(a, b)
    assert not np.allclose(a.to_numpy(), c.to_numpy())
    # an explicit seed keeps its own generator: the global seed does not matter
    torch.manual_seed(1)
    d = _predict(predictor, bars, seed=7)
    torch.manual_seed(2)
    e = _predict(predictor, bars, seed=7)
    pd.testing.assert_frame_equal(d, e)
    # and the same draws as upstream's order: predict == generate on the same normalised inputs
    x = bars.iloc[:24][["open", "high", "low", "close", "volume", "amount"]].to_numpy(np.float32)
    mu, sd = x.mean(0), x.std(0)
    stamps = kronos_module.calc_time_stamps(bars["timestamps"]).to_numpy(np.float32)
    torch.manual_seed(21)
    g = predictor.generate(np.clip((x - mu) / (sd + 1e-5), -5, 5)[None], stamps[None, :24], stamps[None, 24:30],
                           6, 1.0, 0, 0.9, 2, False)
    np.testing.assert_allclose(g[0] * (sd + 1e-5) + mu, a.to_numpy(), rtol=1e-6)


def test_verbose_shows_a_tqdm_bar(predictor, make_bars, capsys):
    _predict(predictor, make_bars(30), seed=1, verbose=True)
    err = capsys.readouterr().err
    assert "6/6" in err and "100%" in err
    _predict(predictor, make_bars(30), seed=1, verbose=False)
    assert capsys.readouterr().err == ""
