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

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
from sqlalchemy import delete, insert, select
from sqlalchemy.orm import Session

from kronos_jobs.db.models import ForecastRow, JobInput
from kronos_jobs.errors import NotFound
from kronos_jobs.names import BAR_COLUMNS, RESULT_COLUMNS

# q<level>_<column>, as names.quantile_column writes it.
_QUANTILE_COLUMN = re.compile(rf"^q(?P<level>[0-9.eE+-]+)_(?P<column>{'|'.join(BAR_COLUMNS)})$")


# --- job inputs ----------------------------------------------------------------------------------


def _to_parquet(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pandas(frame, preserve_index=False), buffer, compression="zstd")
    return buffer.getvalue()


def _from_parquet(data: bytes) -> pd.DataFrame:
    frame = pq.read_table(io.BytesIO(data)).to_pandas()
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
    row = session.merge(row)  # a resubmitted input replaces the old one
    session.flush()
    return row


def load_job_input(session: Session, *, job_id: str) -> tuple[pd.DataFrame, pd.DataFrame | None]:
    """The bars and future timestamps of a job, timestamps tz-aware UTC; NotFound if none."""
    row = session.get(JobInput, job_id)
    if row is None:
        raise NotFound(f"job {job_id!r} has no stored input")
    future = None if row.future_parquet is None else _from_parquet(row.future_parquet)
    return _from_parquet(row.bars_parquet), future


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
    frame = rows.sort_values(["symbol", "timestamp"], kind="stable").reset_index(drop=True)
    for column in BAR_COLUMNS:
        bad = frame[column].isna()
        if bad.any():
            symbols = sorted(frame.loc[bad, "symbol"].astype(str).unique())[:5]
            raise ValueError(f"write_forecasts: column {column} has {int(bad.sum())} NaN values (symbols {symbols}); "
                             "report failed symbols in symbol_errors instead of writing them")
    steps = frame["step"] if "step" in frame.columns else frame.groupby("symbol", sort=False).cumcount()
    stamps = pd.to_datetime(frame["timestamp"], utc=True)
    q_columns = quantile_columns(frame.columns)
    quantiles: list[dict[str, Any] | None]
    if q_columns:
        quantiles = [{k: _none_if_nan(v) for k, v in zip(q_columns, values)}
                     for values in frame[q_columns].astype(float).itertuples(index=False, name=None)]
    else:
        quantiles = [None] * len(frame)
    values = {c: frame[c].astype(float).tolist() for c in BAR_COLUMNS}
    records = [
        {"job_id": job_id, "tenant_id": tenant_id, "symbol": str(symbol), "step": int(step),
         "timestamp": stamp.to_pydatetime(), "open": o, "high": h, "low": lo, "close": c, "volume": v,
         "amount": a, "quantiles": q}
        for symbol, step, stamp, o, h, lo, c, v, a, q in zip(
            frame["symbol"], steps, stamps, values["open"], values["high"], values["low"], values["close"],
            values["volume"], values["amount"], quantiles)
    ]
    session.execute(delete(ForecastRow).where(ForecastRow.job_id == job_id).execution_options(synchronize_session=False))
    if records:
        session.execute(insert(ForecastRow.__table__), records)  # Core executemany: no ORM objects
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
