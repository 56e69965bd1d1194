"""Test data builders shared across packages (like the template's tests/utils/)."""

from __future__ import annotations

import uuid
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy.orm import Session

from kronos_jobs.db.models import Job
from kronos_jobs.names import BAR_COLUMNS, DEFAULT_TENANT, DevicePreference, JobKind, Queue


def make_job(session: Session, *, commit: bool = True, **overrides: Any) -> Job:
    """A queued forecast job through crud.jobs.create_job; keyword arguments override fields."""
    from kronos_jobs.crud import jobs as job_crud

    fields: dict[str, Any] = dict(
        job_id=uuid.uuid4().hex, tenant_id=DEFAULT_TENANT, kind=JobKind.FORECAST.value,
        device_requested=DevicePreference.AUTO.value, queue=Queue.FORECAST_CPU.value,
        routing_reason="no live GPU worker; CPU queue", model="random:mini",
        params={"lookback": 32, "pred_len": 4}, progress_total=1,
    )
    fields.update(overrides)
    job = job_crud.create_job(session, **fields)
    if commit:
        session.commit()
    return job


def make_forecast_rows(symbols: list[str] | tuple[str, ...] = ("AAA", "BBB"), steps: int = 4,
                       quantiles: tuple[float, ...] = (), seed: int = 0) -> pd.DataFrame:
    """Forecast rows as a worker writes them: RESULT_COLUMNS plus q<level>_<col> columns."""
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2024-06-18 03:15", tz="UTC")
    frame = pd.DataFrame({
        "symbol": np.repeat(list(symbols), steps),
        "timestamp": np.tile(pd.date_range(start, periods=steps, freq="5min"), len(symbols)),
    })
    for column in BAR_COLUMNS:
        frame[column] = rng.uniform(10, 11, len(frame))
    for level in quantiles:
        for column in BAR_COLUMNS:
            frame[f"q{level:g}_{column}"] = frame[column] + (level - 0.5)
    return frame


def make_bars(symbols: list[str] | tuple[str, ...] = ("AAA", "BBB"), n: int = 32, seed: int = 0) -> pd.DataFrame:
    """Long-format input bars (symbol, timestamp, OHLCV, amount), sorted by symbol and timestamp."""
    rng = np.random.default_rng(seed)
    frames = []
    for symbol in symbols:
        close = 10 + np.cumsum(rng.normal(0, 0.05, n))
        open_ = np.r_[close[0], close[:-1]]
        frames.append(pd.DataFrame({
            "symbol": symbol, "timestamp": pd.date_range("2024-06-18 01:30", periods=n, freq="5min", tz="UTC"),
            "open": open_, "high": np.maximum(open_, close) + 0.01, "low": np.minimum(open_, close) - 0.01,
            "close": close, "volume": rng.uniform(100, 500, n), "amount": rng.uniform(1e3, 5e3, n),
        }))
    return pd.concat(frames, ignore_index=True)
