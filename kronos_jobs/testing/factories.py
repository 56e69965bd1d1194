"""Test data builders, one set for the test suite and bench/ (like the FastAPI template's tests/utils/).

Bars come in the shapes the layers take them:
- `make_bars`: the long-format frame the job layer stores (symbol, timestamp UTC, OHLCV, amount);
- `bar_records`, `make_forecast_request`, `bars_frame`, `make_csv`, `make_parquet`: request bodies
  and upload files as an API client sends them (valid by default; a test breaks one field).
One series as `model.KronosPredictor` takes it is `kronos_jobs.testing.tiny.generate_bars`.
"""

from __future__ import annotations

import io
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy.orm import Session

from kronos_jobs.core.identity import WorkerIdentity
from kronos_jobs.core.names import BAR_COLUMNS, DEFAULT_TENANT, DevicePreference, JobKind, JobState, Pool, Queue
from kronos_jobs.core.settings import Settings
from kronos_jobs.core.workload import Workload
from kronos_jobs.crud import chunks as chunk_crud
from kronos_jobs.crud import jobs as job_crud
from kronos_jobs.crud import results as result_crud
from kronos_jobs.crud import workers as worker_crud
from kronos_jobs.db.models import Job
from kronos_jobs.db.session import session_scope
from kronos_jobs.jobs.backtest import run_backtest_job
from kronos_jobs.jobs.finetune_submit import submit_finetune
from kronos_jobs.jobs.submit import submit_forecast
from kronos_jobs.runtime.worker import build_identity

START = datetime(2024, 6, 18, 1, 30, tzinfo=timezone.utc)


# --- frames the job layer stores -------------------------------------------------------------------


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


# --- job rows --------------------------------------------------------------------------------------


def make_job(session: Session, *, commit: bool = True, **overrides: Any) -> Job:
    """A queued forecast job through crud.jobs.create_job; keyword arguments override fields."""
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


# Tiny model, few steps: a test run shares 2 cores.
TINY_FINETUNE = {"device": "cpu", "train": "both", "epochs": 2, "batch_size": 8, "lookback": 24, "predict_window": 4,
                 "tokenizer_learning_rate": 3e-3, "predictor_learning_rate": 3e-3, "samples_per_epoch": 48,
                 "validation_split": 0.2, "log_interval": 2, "checkpoint_every_steps": 3, "eval_windows": 12, "seed": 5}


GPU_FALLBACK = "KRONOS_DEVICE=cuda but torch.cuda.is_available() is False; using CPU"  # a device warning as stored


def make_worker(session: Session, worker_id: str, pool: str, device: str, warning: str | None = None) -> None:
    """A registered worker of `pool` on `device` (committed), as the worker bootstrap registers one."""
    worker_crud.register_worker(
        session, worker_id=worker_id, hostname="host-a", pid=123, pool=pool, queues=[f"forecast.{pool}"],
        concurrency=1, torch_threads=2, device_requested="auto", device_resolved=device,
        device_name="cpu" if device == "cpu" else "NVIDIA H100", device_warning=warning, device_info={},
    )
    session.commit()


def worker_identity(settings: Settings, pool: Pool = Pool.CPU) -> WorkerIdentity:
    """The identity a `pool` worker on this machine registers (device resolved), for in-process job runs."""
    return build_identity(pool, 1, settings)


def submit_forecast_job(settings: Settings, checkpoint: Path, bars: pd.DataFrame, future: pd.DataFrame | None = None,
                        *, workload: Workload = Workload.INTERACTIVE, priority: int | None = None,
                        tenant_id: str = DEFAULT_TENANT, **overrides: Any) -> str:
    """Submit a forecast of `bars` with `checkpoint` (sampled, seed 7, quantiles 0.1/0.9); the job id."""
    request = {"model": str(checkpoint), "device": "cpu", "lookback": 48, "pred_len": 4,
               "sampling": {"temperature": 1.0, "top_k": 0, "top_p": 0.9, "sample_count": 3, "seed": 7},
               "quantiles": [0.1, 0.9], **overrides}
    with session_scope(settings) as session:
        job = submit_forecast(session, settings, tenant_id=tenant_id, request=request, bars=bars,
                              future=future, source="inline", workload=workload, priority=priority)
        return job.id


def submit_finetune_job(settings: Settings, checkpoint: Path, bars: pd.DataFrame, **overrides: Any) -> tuple[str, list[str]]:
    """Submit a TINY_FINETUNE of `checkpoint` on `bars`; the job id and the submit warnings."""
    with session_scope(settings) as session:
        job, warnings = submit_finetune(session, settings, tenant_id=DEFAULT_TENANT,
                                        request={"model": str(checkpoint), **TINY_FINETUNE, **overrides},
                                        bars=bars, source="csv")
        return job.id, warnings


def run_backtest_to_end(settings: Settings, job_id: str, identity: WorkerIdentity | None = None,
                        *, deliveries: list[int | None] | None = None) -> JobState | None:
    """Deliver a backtest in process until a delivery leaves it other than running: a chunked one
    follows its message chain, each delivery for the batch its predecessor's message names (the
    job's next batch). `deliveries` collects each delivery's `start`."""
    identity = identity or worker_identity(settings)
    start = None
    while True:
        if deliveries is not None:
            deliveries.append(start)
        state = run_backtest_job(job_id, settings=settings, identity=identity, start=start)
        if state is not JobState.RUNNING:
            return state
        with session_scope(settings) as session:
            start = chunk_crud.next_start(session, job_id=job_id)


def load_job(settings: Settings, job_id: str) -> Job:
    """The job row, detached from its session."""
    with session_scope(settings) as session:
        job = job_crud.get_job(session, tenant_id=DEFAULT_TENANT, job_id=job_id)
        session.expunge(job)
        return job


def load_forecast_job(settings: Settings, job_id: str) -> tuple[Job, pd.DataFrame]:
    """The job row (detached) and its forecast rows."""
    with session_scope(settings) as session:
        job = job_crud.get_job(session, tenant_id=DEFAULT_TENANT, job_id=job_id)
        rows = result_crud.read_forecasts(session, job_id=job_id)
        session.expunge(job)
    return job, rows


# --- what an API client sends ----------------------------------------------------------------------


def bar_records(n: int = 8, *, start: datetime = START, step: timedelta = timedelta(minutes=5),
                price: float = 11.27) -> list[dict[str, Any]]:
    """`n` sane JSON bars (high >= max(open, close) >= min(open, close) >= low, volume > 0)."""
    bars = []
    for i in range(n):
        close = price + 0.01 * (i % 3)
        bars.append({
            "timestamp": (start + i * step).isoformat(), "open": price, "high": max(price, close) + 0.01,
            "low": min(price, close) - 0.01, "close": close, "volume": 379.0 + i, "amount": 427161.0 + i,
        })
    return bars


def make_forecast_request(n_symbols: int = 2, n_bars: int = 8, **overrides: Any) -> dict[str, Any]:
    """A valid `POST /v1/forecasts` body; keyword arguments replace top-level fields."""
    body: dict[str, Any] = {
        "model": "random:mini", "device": "cpu", "lookback": 16, "pred_len": 3,
        "sampling": {"temperature": 1.0, "top_k": 0, "top_p": 0.9, "sample_count": 2, "seed": 7},
        "quantiles": [0.1, 0.5, 0.9],
        "series": [{"symbol": f"SYM{i}.SH", "freq": "5min", "bars": bar_records(n_bars, price=10.0 + i)}
                   for i in range(n_symbols)],
    }
    body.update(overrides)
    return body


def bars_frame(n_symbols: int = 2, n_bars: int = 8) -> pd.DataFrame:
    """The rows of an upload file (symbol, ISO timestamp text, OHLCV, amount)."""
    rows = [{"symbol": f"SYM{i}.SH", **bar} for i in range(n_symbols) for bar in bar_records(n_bars, price=10.0 + i)]
    return pd.DataFrame(rows)


def make_csv(n_symbols: int = 2, n_bars: int = 8, frame: pd.DataFrame | None = None) -> bytes:
    return (bars_frame(n_symbols, n_bars) if frame is None else frame).to_csv(index=False).encode()


def make_parquet(n_symbols: int = 2, n_bars: int = 8, frame: pd.DataFrame | None = None) -> bytes:
    frame = bars_frame(n_symbols, n_bars) if frame is None else frame
    frame = frame.assign(timestamp=pd.to_datetime(frame["timestamp"], utc=True))
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()
