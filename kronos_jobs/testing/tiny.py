"""Tiny Kronos configs, the synthetic series model tests feed them, and the predictor test cases.

Only the model's own dependencies (torch, numpy, pandas): tests/model and bench/predict.py import
this where the job system's are not installed (scripts/gpu_check.sh runs tests/model alone).
The configs are small (hidden size 32, 2-3 layers) so a test builds a model in milliseconds.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from model.tokenizer import KronosTokenizer
from model.transformer import Kronos

TINY_TOKENIZER_CONFIG = dict(
    d_in=6, d_model=32, n_heads=4, ff_dim=48, n_enc_layers=3, n_dec_layers=3,
    ffn_dropout_p=0.0, attn_dropout_p=0.0, resid_dropout_p=0.0, s1_bits=4, s2_bits=4,
    beta=0.05, gamma0=1.0, gamma=1.1, zeta=0.05, group_size=4,
)
# Non-zero dropouts like Kronos-small, so forgetting eval mode shows up in equivalence tests.
TINY_KRONOS_CONFIG = dict(
    s1_bits=4, s2_bits=4, n_layers=2, d_model=32, n_heads=2, ff_dim=48, ffn_dropout_p=0.1,
    attn_dropout_p=0.1, resid_dropout_p=0.1, token_dropout_p=0.1, learn_te=True,
)


def generate_bars(n: int, seed: int = 0, freq: str = "5min", start: str = "2024-06-18 09:30") -> pd.DataFrame:
    """Synthetic OHLCV + amount bars with a ``timestamps`` column: a noisy sine-modulated walk."""
    rng = np.random.default_rng(seed)
    t = np.arange(n)
    close = 10.0 + 0.5 * np.sin(t / 12.0) + np.cumsum(rng.normal(0.0, 0.02, n))
    open_ = np.r_[close[0], close[:-1]]
    spread = np.abs(rng.normal(0.0, 0.03, n))
    volume = 1000.0 + 300.0 * np.sin(t / 7.0) + rng.normal(0.0, 50.0, n)
    return pd.DataFrame({
        "timestamps": pd.date_range(start, periods=n, freq=freq),
        "open": open_,
        "high": np.maximum(open_, close) + spread,
        "low": np.minimum(open_, close) - spread,
        "close": close,
        "volume": volume,
        "amount": volume * close,
    })


# --- predictor cases: modules, series and the comparison the equivalence tests share ----------------

M = 16  # a tiny max_context exercises the sliding window cheaply
COLS = ["open", "high", "low", "close", "volume", "amount"]
# Tiny configs shaped like Kronos-mini (no dropout) and Kronos-small (every dropout on, so a missing
# eval() would show); both tokenizer and predictor use 4-bit sub-tokens.
MINI_LIKE = dict(s1_bits=4, s2_bits=4, n_layers=2, d_model=32, n_heads=4, ff_dim=48, ffn_dropout_p=0.2,
                 attn_dropout_p=0.0, resid_dropout_p=0.2, token_dropout_p=0.0, learn_te=True)
SMALL_LIKE = dict(s1_bits=4, s2_bits=4, n_layers=3, d_model=32, n_heads=2, ff_dim=64, ffn_dropout_p=0.25,
                  attn_dropout_p=0.1, resid_dropout_p=0.25, token_dropout_p=0.1, learn_te=True)


def make_modules(config, seed=0):
    torch.manual_seed(seed)
    return Kronos(**config), KronosTokenizer(**TINY_TOKENIZER_CONFIG)


def split(n_ctx, pred_len, seed=0, n_total=None):
    bars = generate_bars(n_ctx + pred_len, seed=seed)
    return bars.iloc[:n_ctx][COLS], bars["timestamps"].iloc[:n_ctx], bars["timestamps"].iloc[n_ctx:]


def batch(lengths, pred_len):
    parts = [split(L, pred_len, seed=i) for i, L in enumerate(lengths)]
    return [list(p) for p in zip(*parts)]


def assert_frames_equal(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want):
        assert list(g.columns) == COLS
        pd.testing.assert_index_equal(g.index, w.index)
        np.testing.assert_allclose(g.to_numpy(), w.to_numpy(), rtol=1e-5, atol=1e-6)
