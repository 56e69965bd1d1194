"""Fixtures for job-service tests: a tiny random local checkpoint and synthetic long-format bars."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from kronos_jobs.crud import jobs as job_crud, results as result_crud
from kronos_jobs.db.session import session_scope
from kronos_jobs.jobs.submit import submit_forecast
from kronos_jobs.names import DEFAULT_TENANT
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


@pytest.fixture
def job_settings(db_settings, tiny_checkpoint):
    """A migrated test database with a short lease, 2-series chunks and the tiny checkpoint's folder as model root."""
    return db_settings.model_copy(update={"lease_seconds": 4, "heartbeat_seconds": 0.5, "max_batch_size": 2,
                                          "model_dirs": [tiny_checkpoint.parent]})


def submit(settings, checkpoint, bars, future=None, **overrides):
    """Submit a forecast of `bars` with the tiny checkpoint (sampled, seed 7, quantiles 0.1/0.9); the job id."""
    request = {"model": str(checkpoint), "device": "cpu", "lookback": 48, "pred_len": 4,
               "sampling": {"temperature": 1.0, "top_k": 0, "top_p": 0.9, "sample_count": 3, "seed": 7},
               "quantiles": [0.1, 0.9], **overrides}
    with session_scope(settings) as session:
        job = submit_forecast(session, settings, tenant_id=DEFAULT_TENANT, request=request, bars=bars,
                              future=future, source="inline")
        return job.id


def load(settings, job_id):
    """The job row (detached) and its forecast rows."""
    with session_scope(settings) as session:
        job = job_crud.get_job(session, tenant_id=DEFAULT_TENANT, job_id=job_id)
        rows = result_crud.read_forecasts(session, job_id=job_id)
        session.expunge(job)
    return job, rows
