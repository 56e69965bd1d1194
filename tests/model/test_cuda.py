"""CUDA paths: the predictor on the GPU gives the oracle's tokens, bf16 stays close, AMP fine-tuning learns.

These tests run only where CUDA is available and are skipped elsewhere, except with
``KRONOS_REQUIRE_CUDA=1`` (set by ``scripts/gpu_check.sh``): then a missing CUDA fails every test, so
the GPU check cannot pass by skipping. Nothing here touches CUDA at import time; the probe runs in
the ``cuda`` fixture.

The oracle (``tests/model/oracle.py``) runs on the same device as the predictor, so "equal" means
the cached decoder and the full recompute pick the same tokens from CUDA kernels. The two sum in
different orders (different GEMM shapes pick different kernels), so frames are compared to ~1e-5
relative; a different token would move a value by orders of magnitude more.
"""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
import torch

from kronos_jobs.testing.oracle import oracle_predict_batch
from kronos_jobs.testing.tiny import generate_bars
from model.device import device_info
from model.finetune import FinetuneConfig, FinetuneLoop
from model.predictor import KronosPredictor
from tests.model.test_predictor import MINI_LIKE, SMALL_LIKE, M, assert_frames_equal, batch, make_modules

# Read at import: the root conftest's autouse fixture clears KRONOS_* variables before each test.
REQUIRE_CUDA = os.environ.get("KRONOS_REQUIRE_CUDA", "").strip() == "1"


@pytest.fixture(scope="session")
def cuda() -> torch.device:
    """``cuda:0``; skip without CUDA, or fail when ``KRONOS_REQUIRE_CUDA=1``."""
    if not torch.cuda.is_available():
        if REQUIRE_CUDA:
            pytest.fail("KRONOS_REQUIRE_CUDA=1 but torch.cuda.is_available() is False "
                        f"(torch {torch.__version__}, built for CUDA {torch.version.cuda})")
        pytest.skip("CUDA is not available")
    return torch.device("cuda", 0)


@pytest.fixture(scope="module", params=["mini", "small"])
def modules(request, cuda):
    """A tiny Kronos and tokenizer on the GPU, in eval mode (the oracle does not set it)."""
    model, tokenizer = make_modules(MINI_LIKE if request.param == "mini" else SMALL_LIKE)
    return model.to(cuda).eval(), tokenizer.to(cuda).eval()


def oracle(modules, dfs, xts, yts, pred_len, **kwargs):
    model, tokenizer = modules
    return oracle_predict_batch(tokenizer, model, dfs, xts, yts, pred_len, max_context=M, device="cuda", **kwargs)


def predictor(modules, **kwargs) -> KronosPredictor:
    model, tokenizer = modules
    return KronosPredictor(model, tokenizer, device="cuda", max_context=M, **kwargs)


# ---- device ---------------------------------------------------------------------------------------


def test_predictor_runs_on_the_gpu_and_describes_it(modules):
    pred = predictor(modules)
    assert pred.device.type == "cuda" and pred.device_warning is None
    assert all(p.device.type == "cuda" for p in [*pred.model.parameters(), *pred.tokenizer.parameters()])
    info = device_info(pred.device)
    assert info["type"] == "cuda" and info["index"] == 0
    assert isinstance(info["name"], str) and info["name"]
    assert isinstance(info["total_memory"], int) and info["total_memory"] > 2**30
    assert re.fullmatch(r"\d+\.\d+", info["compute_capability"])
    assert info["cuda_version"] is not None


# ---- the oracle's tokens on the GPU ----------------------------------------------------------------


@pytest.mark.parametrize("L, P", [(5, 6), (10, 6), (16, 4), (23, 5)],
                         ids=["short", "grow-then-slide", "equal", "longer"])
@pytest.mark.parametrize("B", [1, 3])
def test_greedy_equals_oracle(modules, L, P, B):
    dfs, xts, yts = batch([L] * B, P)
    want = oracle(modules, dfs, xts, yts, P, top_k=1)
    got = predictor(modules).predict_batch(dfs, xts, yts, P, top_k=1)
    assert_frames_equal(got, want)


def test_mixed_context_lengths_equal_oracle_per_length(modules):
    lengths, P = [5, 20, 12, 16], 6
    dfs, xts, yts = batch(lengths, P)
    got = predictor(modules).predict_batch(dfs, xts, yts, P, top_k=1)
    want = [oracle(modules, [d], [x], [y], P, top_k=1)[0] for d, x, y in zip(dfs, xts, yts)]
    assert_frames_equal(got, want)


@pytest.mark.parametrize("L", [7, 20])
@pytest.mark.parametrize("sampling", [dict(top_p=0.9), dict(top_k=3, T=0.8)])
def test_seeded_sampling_gives_the_oracle_tokens(modules, L, sampling):
    # Both draw from a CUDA torch.Generator seeded alike, with the same calls in the same order.
    dfs, xts, yts = batch([L, L], 5)
    want = oracle(modules, dfs, xts, yts, 5, sample_count=3, seed=11, **sampling)
    got = predictor(modules).predict_batch(dfs, xts, yts, 5, sample_count=3, seed=11, **sampling)
    assert_frames_equal(got, want)


# ---- CUDA graphs (model/step_graph.py) -------------------------------------------------------------------


@pytest.mark.parametrize("L, P", [(5, 6), (10, 6), (3, 14)], ids=["short", "grow-then-slide", "long-growth"])
@pytest.mark.parametrize("B", [1, 3])
def test_cuda_graphs_give_the_oracle_tokens_greedy(modules, L, P, B):
    dfs, xts, yts = batch([L] * B, P)
    want = oracle(modules, dfs, xts, yts, P, top_k=1)
    pred = predictor(modules, cuda_graphs=True)
    assert_frames_equal(pred.predict_batch(dfs, xts, yts, P, top_k=1), want)
    assert_frames_equal(pred.predict_batch(dfs, xts, yts, P, top_k=1), want)  # a second capture, same tokens


def test_cuda_graphs_give_the_oracle_tokens_sampled(modules):
    dfs, xts, yts = batch([7, 7], 6)
    want = oracle(modules, dfs, xts, yts, 6, sample_count=3, seed=5, top_p=0.9)
    got = predictor(modules, cuda_graphs=True).predict_batch(dfs, xts, yts, 6, sample_count=3, seed=5, top_p=0.9)
    assert_frames_equal(got, want)


def test_cuda_graphs_under_bf16_autocast_match_the_eager_bf16_path(modules):
    dfs, xts, yts = batch([9] * 4, 6)
    eager = predictor(modules, autocast_dtype=torch.bfloat16).predict_batch(dfs, xts, yts, 6, top_k=1)
    graphed = predictor(modules, autocast_dtype=torch.bfloat16, cuda_graphs=True).predict_batch(
        dfs, xts, yts, 6, top_k=1)
    # Masked full-cache attention sums in another order than the sliced one; in bf16 that can flip a
    # near-tie token, so compare like the autocast test below (normalised mean gap).
    gaps = []
    for g, e, df in zip(graphed, eager, dfs):
        assert np.isfinite(g.to_numpy()).all()
        gaps.append(np.abs(g.to_numpy() - e.to_numpy()) / (df.to_numpy().std(axis=0) + 1e-5))
    assert np.mean(gaps) < 0.15, np.mean(gaps)


# ---- reduced precision -------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_autocast_runs_and_stays_close_to_float32(modules, dtype):
    dfs, xts, yts = batch([20] * 8, 8)
    want = predictor(modules).predict_batch(dfs, xts, yts, 8, top_k=1)
    got = predictor(modules, autocast_dtype=dtype).predict_batch(dfs, xts, yts, 8, top_k=1)
    # Compare in normalised units (each column's context std). Reduced precision is not exact: a
    # near-tie can flip a token of these tiny random models (on CPU bf16 the mean gap was <= 0.055).
    gaps = []
    for g, w, df in zip(got, want, dfs):
        assert (g.dtypes == np.float32).all() and np.isfinite(g.to_numpy()).all()
        gaps.append(np.abs(g.to_numpy() - w.to_numpy()) / (df.to_numpy().std(axis=0) + 1e-5))
    assert np.mean(gaps) < 0.15, np.mean(gaps)


# ---- loading and training -----------------------------------------------------------------------------


def test_from_pretrained_loads_onto_the_gpu(cuda, tiny_model_dir, tiny_tokenizer_dir):
    pred = KronosPredictor.from_pretrained(tiny_model_dir, tiny_tokenizer_dir, device="cuda", max_context=M)
    assert pred.device == cuda and pred.device_warning is None
    assert all(p.device == cuda for p in [*pred.model.parameters(), *pred.tokenizer.parameters()])
    assert not pred.model.training and not pred.tokenizer.training
    dfs, xts, yts = batch([20], 4)
    got = pred.predict_batch(dfs, xts, yts, 4, top_k=1)
    assert_frames_equal(got, oracle((pred.model, pred.tokenizer), dfs, xts, yts, 4, top_k=1))


@pytest.mark.parametrize("amp_dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("phase", ["tokenizer", "predictor"])
def test_amp_finetune_lowers_the_loss(cuda, tiny_tokenizer, tiny_model, phase, amp_dtype):
    train = {"A": generate_bars(260, seed=1), "B": generate_bars(180, seed=2)}
    val = [generate_bars(100, seed=3)]
    config = FinetuneConfig(epochs=3, batch_size=8, accumulation_steps=2, lookback=24, predict_window=6,
                            tokenizer_learning_rate=3e-3, predictor_learning_rate=3e-3, samples_per_epoch=64,
                            val_max_windows=32, log_interval=4, seed=5, amp=True, amp_dtype=amp_dtype)
    if phase == "tokenizer":
        loop = FinetuneLoop("tokenizer", tiny_tokenizer, train, val, config, device="cuda")
    else:
        loop = FinetuneLoop("predictor", tiny_model, train, val, config, tokenizer=tiny_tokenizer, device="cuda")
    assert loop.use_amp and loop.scaler.is_enabled() == (amp_dtype == "float16")
    before = loop.validate()
    result = loop.fit()
    assert result.stopped == "completed" and result.step == 24
    assert (result.device, result.device_warning) == (str(cuda), None)
    assert all(p.device == cuda for p in loop.model.parameters())
    assert np.isfinite(result.val_loss) and result.val_loss < 0.9 * before, (before, result.val_loss)
