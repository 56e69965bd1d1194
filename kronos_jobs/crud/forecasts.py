"""Forecasts across jobs: the latest forecast of each symbol (or the latest as of a time).

"Latest" is by the job's `finished_at`: for each symbol, the rows of the most recently finished
succeeded or partially succeeded forecast job that has rows for it. `schedule_id` limits the
candidates to the jobs of that schedule's runs.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import pandas as pd
from sqlalchemy import select
from sqlalchemy.orm import Session

from kronos_jobs.core.names import RESULT_COLUMNS, JobKind, JobState
from kronos_jobs.crud import results as result_crud
from kronos_jobs.db.models import ForecastRow, Job, ScheduleRunJob

USABLE_STATES = (JobState.SUCCEEDED.value, JobState.PARTIALLY_SUCCEEDED.value)


def latest_forecasts(session: Session, *, tenant_id: str, symbols: Sequence[str] | None = None,
                     as_of: datetime | None = None, schedule_id: str | None = None) -> pd.DataFrame:
    """Columns: symbol, timestamp, open..amount, quantile columns, then job_id and forecast_at."""
    stmt = (select(ForecastRow.symbol, Job.id, Job.finished_at)
            .join(Job, Job.id == ForecastRow.job_id)
            .where(Job.tenant_id == tenant_id, Job.kind == JobKind.FORECAST.value, Job.state.in_(USABLE_STATES))
            .distinct())
    if symbols:
        stmt = stmt.where(ForecastRow.symbol.in_(list(symbols)))
    if as_of is not None:
        stmt = stmt.where(Job.finished_at <= as_of)
    if schedule_id is not None:
        stmt = stmt.join(ScheduleRunJob, ScheduleRunJob.job_id == Job.id).where(ScheduleRunJob.schedule_id == schedule_id)
    candidates = pd.DataFrame(session.execute(stmt).all(), columns=["symbol", "job_id", "forecast_at"])
    if candidates.empty:
        return pd.DataFrame(columns=[*RESULT_COLUMNS, "job_id", "forecast_at"])
    candidates["forecast_at"] = pd.to_datetime(candidates["forecast_at"], utc=True)
    chosen = (candidates.sort_values(["forecast_at", "job_id"])
              .drop_duplicates("symbol", keep="last"))
    frames = []
    for job_id, group in chosen.groupby("job_id", sort=False):
        rows = result_crud.read_forecasts(session, job_id=job_id)
        rows = rows[rows["symbol"].isin(set(group["symbol"]))].copy()
        rows["job_id"] = job_id
        rows["forecast_at"] = group["forecast_at"].iloc[0]
        frames.append(rows)
    out = pd.concat(frames, ignore_index=True)
    leading = [*RESULT_COLUMNS]
    rest = [c for c in out.columns if c not in leading and c not in ("job_id", "forecast_at", "step")]
    out = out.sort_values(["symbol", "timestamp"], ignore_index=True)
    return out[[*leading, *rest, "job_id", "forecast_at"]]
