"""Live scores of stored forecasts: which forecast bars have realized bars and no score yet, and the
scores themselves. A score is keyed by (job, symbol, step), so scoring twice writes nothing twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

import pandas as pd
from sqlalchemy import and_, or_, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session

from kronos_jobs.core.names import JobKind, JobState
from kronos_jobs.db.models import ForecastRow, ForecastScore, Job, ScheduleRunJob, SeriesBar

USABLE_STATES = (JobState.SUCCEEDED.value, JobState.PARTIALLY_SUCCEEDED.value)
SCORE_COLUMNS = ("job_id", "symbol", "step", "tenant_id", "schedule_id", "model", "timestamp", "forecast", "actual")


def unscored_with_bars(session: Session, *, limit: int) -> pd.DataFrame:
    """Forecast bars of schedule runs (and of jobs that opted in with `score: true`) that have no
    score yet and whose timestamp has a stored bar of the symbol: up to `limit` rows, columns
    SCORE_COLUMNS (actual = the stored bar's close)."""
    f, score = ForecastRow.__table__, ForecastScore.__table__
    stmt = (
        select(f.c.job_id, f.c.symbol, f.c.step, Job.tenant_id, ScheduleRunJob.schedule_id, Job.model, f.c.timestamp,
               f.c.close.label("forecast"), SeriesBar.close.label("actual"))
        .join(Job, Job.id == f.c.job_id)
        .outerjoin(ScheduleRunJob, ScheduleRunJob.job_id == Job.id)
        .join(SeriesBar, and_(SeriesBar.tenant_id == Job.tenant_id, SeriesBar.symbol == f.c.symbol,
                              SeriesBar.timestamp == f.c.timestamp))
        .outerjoin(score, and_(score.c.job_id == f.c.job_id, score.c.symbol == f.c.symbol, score.c.step == f.c.step))
        .where(score.c.job_id.is_(None), Job.kind == JobKind.FORECAST.value, Job.state.in_(USABLE_STATES),
               or_(ScheduleRunJob.job_id.is_not(None), Job.params["score"].as_boolean().is_(True)))
        .order_by(f.c.job_id, f.c.symbol, f.c.step)
        .limit(limit)
    )
    frame = pd.DataFrame(session.execute(stmt).all(), columns=list(SCORE_COLUMNS))
    # A symbol stored at two frequencies matches twice: one score per forecast bar.
    return frame.drop_duplicates(["job_id", "symbol", "step"], ignore_index=True)


def insert_scores(session: Session, *, records: list[dict[str, Any]]) -> None:
    """Insert scores, skipping any (job, symbol, step) already scored (a second beat raced us)."""
    if not records:
        return
    dialect = session.get_bind().dialect.name
    insert = postgresql_insert if dialect == "postgresql" else sqlite_insert
    statement = insert(ForecastScore.__table__).on_conflict_do_nothing(index_elements=["job_id", "symbol", "step"])
    session.execute(statement, records)


def read_scores(session: Session, *, tenant_id: str, schedule_id: str | None = None,
                models: Sequence[str] | None = None, symbols: Sequence[str] | None = None,
                since: datetime | None = None) -> pd.DataFrame:
    """Scored forecast bars, oldest first."""
    table = ForecastScore.__table__
    stmt = select(table.c.job_id, table.c.schedule_id, table.c.model, table.c.symbol, table.c.step, table.c.timestamp,
                  table.c.forecast, table.c.actual, table.c.naive).where(table.c.tenant_id == tenant_id)
    if schedule_id is not None:
        stmt = stmt.where(table.c.schedule_id == schedule_id)
    if models:
        stmt = stmt.where(table.c.model.in_(list(models)))
    if symbols:
        stmt = stmt.where(table.c.symbol.in_(list(symbols)))
    if since is not None:
        stmt = stmt.where(table.c.timestamp >= since)
    rows = session.execute(stmt.order_by(table.c.timestamp, table.c.job_id, table.c.symbol)).all()
    frame = pd.DataFrame(rows, columns=["job_id", "schedule_id", "model", "symbol", "step", "timestamp", "forecast",
                                        "actual", "naive"])
    frame["timestamp"] = pd.to_datetime(frame["timestamp"], utc=True)
    return frame
