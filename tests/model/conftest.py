"""Shared fixtures for model tests: tiny random checkpoints saved and loaded through the real code path.

The checkpoints are built once per session with ``save_pretrained`` into a temp directory; tests
load them with ``from_pretrained`` (a fresh module per test, so a test may train or mutate it).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

# The build machine has 2 shared cores; tiny configs do not gain from more threads.
torch.set_num_threads(1)



@pytest.fixture(scope="session", autouse=True)
def _kernel_cache_in_a_temp_dir(tmp_path_factory):
    """Predictors keep their CPU kernel choices under $XDG_CACHE_HOME; tests keep theirs out of ~/.cache."""
    import os

    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old


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


@pytest.fixture(scope="session")
def tiny_tokenizer_config():
    """Keyword arguments (upstream style) of the tiny tokenizer of spec §3.5."""
    return dict(TINY_TOKENIZER_CONFIG)


@pytest.fixture(scope="session")
def tiny_model_config():
    """Keyword arguments (upstream style) of the tiny Kronos predictor."""
    return dict(TINY_KRONOS_CONFIG)


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory):
    """Directory with config.json + model.safetensors of a tiny random KronosTokenizer."""
    from model.tokenizer import KronosTokenizer

    torch.manual_seed(1234)
    path = tmp_path_factory.mktemp("tiny-tokenizer")
    KronosTokenizer(**TINY_TOKENIZER_CONFIG).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Directory with config.json + model.safetensors of a tiny random Kronos predictor."""
    from model.transformer import Kronos

    torch.manual_seed(4321)
    path = tmp_path_factory.mktemp("tiny-kronos")
    Kronos(**TINY_KRONOS_CONFIG).save_pretrained(path)
    return path


@pytest.fixture
def tiny_tokenizer(tiny_tokenizer_dir):
    """A fresh tiny tokenizer loaded with ``from_pretrained`` (eval mode)."""
    from model.tokenizer import KronosTokenizer

    return KronosTokenizer.from_pretrained(tiny_tokenizer_dir)


@pytest.fixture
def tiny_model(tiny_model_dir):
    """A fresh tiny Kronos loaded with ``from_pretrained`` (eval mode)."""
    from model.transformer import Kronos

    return Kronos.from_pretrained(tiny_model_dir)


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


@pytest.fixture
def make_bars():
    """Factory fixture: ``make_bars(n, seed=0, freq="5min")`` -> DataFrame of synthetic bars."""
    return generate_bars
