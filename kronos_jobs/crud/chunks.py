"""Finished chunks of bulk jobs that yield their worker between chunks (jobs/forecast.py,
jobs/backtest.py).

A chunk's rows wait here, as Parquet bytes, until the delivery of the job's last chunk reads them
all back and writes the job's result, metadata and final state in one transaction, deleting them
in the same transaction. A chunk is keyed by its start (a forecast's first series, a backtest's
first batch), so a redelivered chunk rewrites its own row instead of adding a second one.

Functions flush but never commit: the caller owns the transaction (`session_scope`).
"""

from __future__ import annotations

from typing import Any

import pandas as pd
from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from kronos_jobs.core.names import JobKind
from kronos_jobs.crud.results import _from_parquet, _to_parquet, write_forecasts
from kronos_jobs.db.models import Job, JobChunk


def next_start(session: Session, *, job_id: str) -> int:
    """The first series no finished chunk covers (chunks are written in order)."""
    stops = session.scalars(select(JobChunk.stop).where(JobChunk.job_id == job_id))
    return max(stops, default=0)


def save_chunk(session: Session, *, job_id: str, start: int, stop: int, rows: pd.DataFrame | None,
               symbol_errors: list[dict[str, Any]], inference_seconds: float, wait_seconds: float,
               device: str | None) -> None:
    session.execute(delete(JobChunk).where(JobChunk.job_id == job_id, JobChunk.start == start))
    session.add(JobChunk(job_id=job_id, start=start, stop=stop,
                         rows_parquet=None if rows is None or rows.empty else _to_parquet(rows),
                         symbol_errors=list(symbol_errors), inference_seconds=float(inference_seconds),
                         wait_seconds=float(wait_seconds), device=device))
    session.flush()


def load_chunks(session: Session, *, job_id: str) -> list[dict[str, Any]]:
    """The job's finished chunks in series order, rows decoded (None when every series failed)."""
    chunks = session.scalars(select(JobChunk).where(JobChunk.job_id == job_id).order_by(JobChunk.start))
    return [{"start": c.start, "stop": c.stop, "symbol_errors": list(c.symbol_errors or []),
             "inference_seconds": c.inference_seconds, "wait_seconds": c.wait_seconds, "device": c.device,
             "rows": None if c.rows_parquet is None else _from_parquet(c.rows_parquet)} for c in chunks]


def save_plan(session: Session, *, job_id: str, plan: dict[str, Any]) -> None:
    """Keep what every chunk of a job must agree on (a backtest's seed and batch size) in the job's
    metadata, until its finish writes the full metadata over it."""
    session.execute(update(Job).where(Job.id == job_id).values(execution_metadata=plan)
                    .execution_options(synchronize_session=False))


def keep_as_result(session: Session, *, job_id: str, tenant_id: str) -> tuple[str, list[dict[str, Any]]]:
    """A bulk job cancelled between chunks: a forecast keeps what its finished chunks forecast (their
    rows become the job's result), a backtest keeps nothing (metrics over part of its forecasts
    would pass for the whole evaluation's); the chunks are deleted. Returns (what was kept, in
    words, and the kept series' symbol errors)."""
    chunks = load_chunks(session, job_id=job_id)
    delete_chunks(session, job_id=job_id)
    if session.scalar(select(Job.kind).where(Job.id == job_id)) == JobKind.BACKTEST.value:
        return "a backtest keeps no rows", []
    frames = [c["rows"] for c in chunks if c["rows"] is not None]
    if frames:
        write_forecasts(session, job_id=job_id, tenant_id=tenant_id, rows=pd.concat(frames, ignore_index=True))
    kept = int(sum(f["symbol"].nunique() for f in frames))
    return f"the {kept} series finished before it are kept", [e for c in chunks for e in c["symbol_errors"]]


def delete_chunks(session: Session, *, job_id: str) -> int:
    return session.execute(delete(JobChunk).where(JobChunk.job_id == job_id)).rowcount or 0
