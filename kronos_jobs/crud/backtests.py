"""A backtest's stored outcome: its per-origin rows (one Parquet table per job) and its metrics table.

Both are written in the job's finish transaction and replace what a previous delivery wrote.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd
from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from kronos_jobs.crud.results import _from_parquet, _to_parquet
from kronos_jobs.db.models import BacktestMetric, BacktestResult

# The metrics columns stored as their own columns; pinball_* and coverage_* go to `bands`.
STORED_METRICS = ("n", "mae", "rmse", "smape", "mase", "directional_accuracy", "crps", "skill", "dm_stat", "dm_pvalue")
ROW_COLUMNS = ("model", "kind", "lookback", "symbol", "origin", "repeat", "step", "timestamp", "open", "high", "low",
               "close", "volume", "amount")
KEY_COLUMNS = ("model", "kind", "lookback", "symbol", "step", "horizon")


def _plain(value: Any) -> Any:
    """A JSON- and SQL-safe scalar: NaN and pandas' NA become None, numpy numbers Python ones."""
    if value is None or value is pd.NA or (isinstance(value, float) and math.isnan(value)):
        return None
    if isinstance(value, np.generic):
        value = value.item()
        return None if isinstance(value, float) and math.isnan(value) else value
    return value


def write_backtest(session: Session, *, job_id: str, tenant_id: str, rows: pd.DataFrame,
                   metrics: pd.DataFrame | None) -> None:
    """Replace the job's rows and metrics (metrics with a `symbol` column of None for pooled rows)."""
    session.execute(delete(BacktestResult).where(BacktestResult.job_id == job_id))
    session.execute(delete(BacktestMetric).where(BacktestMetric.job_id == job_id))
    session.add(BacktestResult(job_id=job_id, tenant_id=tenant_id, rows_parquet=_to_parquet(rows), n_rows=len(rows)))
    if metrics is None or metrics.empty:
        return
    bands = [c for c in metrics.columns if c.startswith(("pinball_", "coverage_"))]
    records = []
    for row in metrics.to_dict("records"):
        record = {"job_id": job_id, "tenant_id": tenant_id, "bands": {c: _plain(row[c]) for c in bands}}
        record.update({c: _plain(row.get(c)) for c in (*KEY_COLUMNS, *STORED_METRICS)})
        record["n"] = int(record["n"] or 0)
        records.append(record)
    session.execute(insert(BacktestMetric.__table__), records)


def read_rows(session: Session, *, job_id: str) -> pd.DataFrame | None:
    """The job's per-origin rows, or None when it wrote none (queued, running, failed early)."""
    data = session.scalar(select(BacktestResult.rows_parquet).where(BacktestResult.job_id == job_id))
    if data is None:
        return None
    frame = _from_parquet(data)
    if "origin" in frame.columns:
        frame["origin"] = pd.to_datetime(frame["origin"], utc=True)
    return frame


def read_metrics(session: Session, *, job_id: str, by_symbol: bool = False) -> pd.DataFrame:
    """The job's metrics table: pooled rows (symbol NULL), or the per-symbol rows with `by_symbol`."""
    table = BacktestMetric.__table__
    stmt = select(table).where(table.c.job_id == job_id)
    stmt = stmt.where(table.c.symbol.is_not(None) if by_symbol else table.c.symbol.is_(None)).order_by(table.c.id)
    fetched = [dict(r._mapping) for r in session.execute(stmt).all()]
    keys = [c for c in KEY_COLUMNS if by_symbol or c != "symbol"]
    if not fetched:
        return pd.DataFrame(columns=[*keys, *STORED_METRICS])
    frame = pd.DataFrame([{**{k: r[k] for k in (*keys, *STORED_METRICS)}, **(r["bands"] or {})} for r in fetched])
    for column in ("step", "horizon"):
        frame[column] = frame[column].astype("Int64")
    return frame
