"""Fixtures for job-service tests: a tiny random local checkpoint and synthetic long-format bars."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.model.conftest import TINY_KRONOS_CONFIG, TINY_TOKENIZER_CONFIG

TINY_MAX_CONTEXT = 64


def save_tiny_checkpoint(directory: Path, seed: int = 7) -> Path:
    """A tiny random model + tokenizer in the local-directory layout `registry.resolve_model` reads."""
    import torch

    from kronos_jobs.registry import save_local_model
    from model.tokenizer import KronosTokenizer
    from model.transformer import Kronos

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, tokenizer = Kronos(**TINY_KRONOS_CONFIG), KronosTokenizer(**TINY_TOKENIZER_CONFIG)
    return save_local_model(directory, model, tokenizer, max_context=TINY_MAX_CONTEXT)


def make_bars(symbols: dict[str, int], freq: str = "5min", start: str = "2024-06-18 01:30", seed: int = 0) -> pd.DataFrame:
    """Long-format bars (symbol, timestamp UTC, open..amount); `symbols` maps symbol -> bar count."""
    rng = np.random.default_rng(seed)
    frames = []
    for symbol, n in symbols.items():
        close = 10 + np.cumsum(rng.normal(0, 0.05, n))
        open_ = close + rng.normal(0, 0.02, n)
        high = np.maximum(open_, close) + rng.uniform(0, 0.03, n)
        low = np.minimum(open_, close) - rng.uniform(0, 0.03, n)
        volume = rng.uniform(100, 1000, n)
        frames.append(pd.DataFrame({
            "symbol": symbol, "timestamp": pd.date_range(start, periods=n, freq=freq, tz="UTC"),
            "open": open_, "high": high, "low": low, "close": close, "volume": volume,
            "amount": volume * close,
        }))
    return pd.concat(frames, ignore_index=True).sort_values(["symbol", "timestamp"], ignore_index=True)


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny checkpoint alone in its own models root: settings use `model_dirs=[tiny_checkpoint.parent]`."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("models") / "tiny")
