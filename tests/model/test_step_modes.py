"""The fixed-shape growth step (the one CUDA graphs capture) gives the oracle's tokens, tested on CPU."""

from __future__ import annotations

import pytest
import torch

import model.predictor as predictor_module
from kronos_jobs.testing.oracle import oracle_predict_batch
from model.decoding import PackedKronos, generate
from model.predictor import KronosPredictor
from model.step_graph import StepGraph
from tests.model.test_predictor import MINI_LIKE, SMALL_LIKE, M, assert_frames_equal, batch, make_modules


@pytest.fixture(params=["mini", "small"])
def modules(request):
    model, tokenizer = make_modules(MINI_LIKE if request.param == "mini" else SMALL_LIKE)
    return model.eval(), tokenizer.eval()


@pytest.fixture
def static_steps(monkeypatch):
    """Route the predictor's decoding through ``step_mode="static"``."""
    def static_generate(*args, **kwargs):
        kwargs["step_mode"] = "static"
        return generate(*args, **kwargs)

    monkeypatch.setattr(predictor_module, "generate", static_generate)


@pytest.mark.parametrize("L, P", [(5, 6), (10, 6), (3, 14)], ids=["short", "grow-then-slide", "long-growth"])
def test_static_steps_give_the_oracle_tokens_greedy(modules, static_steps, L, P):
    model, tokenizer = modules
    dfs, xts, yts = batch([L, L, L], P)
    want = oracle_predict_batch(tokenizer, model, dfs, xts, yts, P, max_context=M, top_k=1)
    got = KronosPredictor(model, tokenizer, device="cpu", max_context=M).predict_batch(dfs, xts, yts, P, top_k=1)
    assert_frames_equal(got, want)


def test_static_steps_give_the_oracle_tokens_sampled(modules, static_steps):
    model, tokenizer = modules
    dfs, xts, yts = batch([7, 7], 6)
    want = oracle_predict_batch(tokenizer, model, dfs, xts, yts, 6, max_context=M, sample_count=3, seed=5, top_p=0.9)
    got = KronosPredictor(model, tokenizer, device="cpu", max_context=M).predict_batch(
        dfs, xts, yts, 6, sample_count=3, seed=5, top_p=0.9)
    assert_frames_equal(got, want)


def test_step_static_matches_step_at_every_position(modules):
    model, _ = modules
    packed = PackedKronos(model)
    g = torch.Generator().manual_seed(0)
    R, N = 2, 9
    eager = [(torch.randn(R, packed.n_heads, N, packed.head_dim, generator=g),) * 2 for _ in packed.layers]
    eager = [(k.clone(), k.clone()) for (k, _) in eager]
    static = [(torch.zeros_like(k), torch.zeros_like(v)) for k, v in eager]
    rope, pos = packed.rotary(0, N, torch.device("cpu")), torch.zeros((), dtype=torch.long)
    with torch.inference_mode():
        for n in range(N):  # both caches fill up step by step from empty
            x, q = torch.randn(R, packed.d, generator=g), torch.randn(R, 3 * packed.d, generator=g)
            pos.fill_(n)
            want = packed.step(x, q, eager, n)
            got = packed.step_static(x, q, static, pos, rope)
            torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
            for (ke, ve), (ks, vs) in zip(eager, static):
                torch.testing.assert_close(ks[:, :, :n + 1], ke[:, :, :n + 1])
                torch.testing.assert_close(vs[:, :, :n + 1], ve[:, :, :n + 1])


def test_cuda_graphs_are_cuda_only():
    model, tokenizer = make_modules(MINI_LIKE)
    with pytest.raises(ValueError, match="cuda_graphs"):
        KronosPredictor(model, tokenizer, device="cpu", cuda_graphs=True)
    packed = PackedKronos(model.eval())
    caches = [(torch.zeros(1, packed.n_heads, 4, packed.head_dim),) * 2 for _ in packed.layers]
    with pytest.raises(ValueError, match="CUDA device"):
        StepGraph(packed, caches, 1, 0, torch.float32, torch.device("cpu"))


def test_unknown_step_mode_is_refused():
    model, tokenizer = make_modules(MINI_LIKE)
    x = torch.zeros(1, 4, 6)
    with pytest.raises(ValueError, match="step_mode"):
        generate(model.eval(), tokenizer.eval(), x, torch.zeros(1, 4, 5), torch.zeros(1, 2, 5), 2, M,
                 step_mode="graphs")
