"""Tiny Kronos configs and the synthetic series model tests feed them.

Only numpy and pandas: tests/model and bench/predict.py import this where only the model's
dependencies are installed (scripts/gpu_check.sh runs tests/model without the job system's).
The configs are small (hidden size 32, 2-3 layers) so a test builds a model in milliseconds.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

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
