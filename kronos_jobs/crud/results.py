"""Job inputs (bars stored as Parquet with the job) and forecast rows.

Forecast rows are written in bulk (one executemany, no ORM objects) because a multi-symbol job
easily produces 10k+ rows, and idempotently (delete the job's rows, then insert, in the caller's
transaction) because a redelivered task writes the same job again.
"""

from __future__ import annotations

import io
import math
import re
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from kronos_jobs.core.errors import NotFound
from kronos_jobs.core.names import BAR_COLUMNS, RESULT_COLUMNS
from kronos_jobs.db.models import ForecastRow, JobInput

_THREADED_DECODE_BYTES = 1 << 20  # stored inputs this large decode on Arrow's thread pool
# q<level>_<column>, as names.quantile_column writes it.
_QUANTILE_COLUMN = re.compile(rf"^q(?P<level>[0-9.eE+-]+)_(?P<column>{'|'.join(BAR_COLUMNS)})$")


# --- job inputs ----------------------------------------------------------------------------------


def _to_parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), buffer, compression="zstd")
    return buffer.getvalue()


def _from_parquet(data: bytes) -> pd.DataFrame:
    # ParquetFile reads the bytes directly; pq.read_table goes through the dataset layer, which
    # costs more than decoding a small job's input. Arrow's thread pool only pays off on big ones.
    threads = len(data) >= _THREADED_DECODE_BYTES
    frame = pq.ParquetFile(pa.BufferReader(data)).read(use_threads=threads).to_pandas(use_threads=threads)
    if "timestamp" in frame.columns:
        frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    return frame


def save_job_input(
    session: Session,
    *,
    job_id: str,
    tenant_id: str,
    bars: pd.DataFrame,
    future: pd.DataFrame | None,
    source: str,
) -> JobInput:
    """Store the job's long-format bars (and given future timestamps) as Parquet bytes."""
    row = JobInput(
        job_id=job_id, tenant_id=tenant_id, bars_parquet=_to_parquet(bars),
        future_parquet=None if future is None else _to_parquet(future), source=source,
        n_series=int(bars["symbol"].nunique()) if len(bars) else 0, n_bars=len(bars),
    )
    session.add(row)  # a new job's input: an INSERT, no lookup first
    session.flush()
    return row


def load_job_input(session: Session, *, job_id: str) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The bars and future timestamps of a job, timestamps tz-aware UTC; NotFound if none."""
    # The two columns only: workers read each input once, so an ORM object would be pure overhead.
    row = session.execute(select(JobInput.bars_parquet, JobInput.future_parquet)
                          .where(JobInput.job_id == job_id)).first()
    if row is None:
        raise NotFound(f"job {job_id!r} has no stored input")
    bars, future = row
    return _from_parquet(bars), None if future is None else _from_parquet(future)


# --- forecasts -----------------------------------------------------------------------------------


def quantile_columns(columns: list[str] | pd.Index) -> list[str]:
    """The q<level>_<col> columns among `columns`, in the stable result order:
    by bar column (open … amount), then by level."""
    found = [(m, c) for c in columns if (m := _QUANTILE_COLUMN.match(str(c)))]
    found.sort(key=lambda mc: (BAR_COLUMNS.index(mc[0]["column"]), float(mc[0]["level"])))
    return [c for _, c in found]


def _none_if_nan(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def write_forecasts(session: Session, *, job_id: str, tenant_id: str, rows: pd.DataFrame) -> int:
    """Replace the job's forecast rows with `rows` (RESULT_COLUMNS, optional `step` and quantile
    columns); returns the number written. Steps default to the position within each symbol."""
    missing = [c for c in RESULT_COLUMNS if c not in rows.columns]
    if missing:
        raise ValueError(f"write_forecasts: rows lack columns {missing}; expected {list(RESULT_COLUMNS)}")
    if "step" in rows.columns:  # readers order by (symbol, step): the row order here is free
        frame = rows.reset_index(drop=True)
        steps = frame["step"].to_numpy()
    else:
        frame = rows.sort_values(["symbol", "timestamp"], kind="stable", ignore_index=True)
        steps = frame.groupby("symbol", sort=False).cumcount().to_numpy()
    # Whole-array work below: per-column pandas calls cost more than writing a small job's rows.
    values = np.column_stack([frame[c].to_numpy(dtype="float64") for c in BAR_COLUMNS])  # (N, 6)
    nan = np.isnan(values)
    if nan.any():
        column = int(nan.any(axis=0).argmax())
        bad = nan[:, column]
        symbols = sorted(frame.loc[bad, "symbol"].astype(str).unique())[:5]
        raise ValueError(f"write_forecasts: column {BAR_COLUMNS[column]} has {int(bad.sum())} NaN values "
                         f"(symbols {symbols}); report failed symbols in symbol_errors instead of writing them")
    stamps = pd.DatetimeIndex(pd.to_datetime(frame["timestamp"], utc=True)).to_pydatetime()
    q_columns = quantile_columns(frame.columns)
    quantiles: list[dict[str, Any] | None]
    if q_columns:
        quantiles = [{k: _none_if_nan(v) for k, v in zip(q_columns, row)}
                     for row in frame[q_columns].to_numpy(dtype="float64").tolist()]
    else:
        quantiles = [None] * len(frame)
    records = [
        {"job_id": job_id, "tenant_id": tenant_id, "symbol": str(symbol), "step": step, "timestamp": stamp,
         "open": o, "high": h, "low": lo, "close": c, "volume": v, "amount": a, "quantiles": q}
        for symbol, step, stamp, (o, h, lo, c, v, a), q in zip(
            frame["symbol"].tolist(), steps.astype("int64").tolist(), stamps, values.tolist(), quantiles)
    ]
    # Core statements on the table: the ORM's bulk machinery adds nothing for plain rows.
    table = ForecastRow.__table__
    session.execute(delete(table).where(table.c.job_id == job_id))
    if records:
        session.execute(insert(table), records)  # one executemany (insertmanyvalues batches it)
    return len(records)


def read_forecasts(session: Session, *, job_id: str) -> pd.DataFrame:
    """The job's forecasts: RESULT_COLUMNS then quantile columns, sorted by symbol and step."""
    table = ForecastRow.__table__
    query = (select(table.c.symbol, table.c.timestamp, *(table.c[c] for c in BAR_COLUMNS), table.c.quantiles)
             .where(table.c.job_id == job_id).order_by(table.c.symbol, table.c.step))
    fetched = session.execute(query).all()
    frame = pd.DataFrame([r[:-1] for r in fetched], columns=list(RESULT_COLUMNS))
    frame["symbol"] = frame["symbol"].astype(str)
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    for column in BAR_COLUMNS:
        frame[column] = frame[column].astype("float64")
    quantiles = [r[-1] or {} for r in fetched]
    keys = quantile_columns(sorted({k for q in quantiles for k in q}))
    for key in keys:
        frame[key] = pd.Series([q.get(key) for q in quantiles], dtype="float64")
    return frame
