"""Schedules, their runs, and the forecast jobs each run fanned out to.

A run is inserted with `INSERT ... ON CONFLICT (schedule_id, scheduled_for) DO NOTHING` and then
read back: two beats, or a tick racing a manual trigger, end with one row, and the loser learns it
lost (`created` is False) without an IntegrityError poisoning its transaction. Functions flush but
never commit: the caller owns the transaction.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from kronos_jobs.core.errors import Conflict, NotFound
from kronos_jobs.core.names import JobState, RunTrigger
from kronos_jobs.crud.retention import SCHEDULE_RUN, raise_if_pruned
from kronos_jobs.db.models import Job, Schedule, ScheduleRun, ScheduleRunJob, utcnow

SCHEDULE_FIELDS = ("name", "cron", "timezone", "symbols", "freq", "model", "device", "params", "calendar",
                   "min_history", "enabled")
ACTIVE_RUN_STATES = (JobState.QUEUED.value, JobState.RUNNING.value)


def _dialect_insert(session: Session, table: Any):
    insert = postgresql_insert if session.get_bind().dialect.name == "postgresql" else sqlite_insert
    return insert(table)


# --- schedules -------------------------------------------------------------------------------------


def create_schedule(session: Session, *, tenant_id: str, next_run_at: datetime | None = None,
                    **fields: Any) -> Schedule:
    """Insert a schedule (fields: SCHEDULE_FIELDS); Conflict when the name is taken."""
    unknown = set(fields) - set(SCHEDULE_FIELDS)
    if unknown:
        raise TypeError(f"unknown schedule fields {sorted(unknown)}")
    now = utcnow()
    schedule = Schedule(id=uuid.uuid4().hex, tenant_id=tenant_id, anchor_at=now, next_run_at=next_run_at,
                        created_at=now, updated_at=now, **fields)
    session.add(schedule)
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError:
        raise Conflict(f"a schedule named {fields.get('name')!r} already exists",
                       details=[{"field": "name", "message": "already used by another schedule"}]) from None
    return schedule


def get_schedule(session: Session, *, tenant_id: str, schedule_id: str) -> Schedule:
    schedule = session.get(Schedule, schedule_id)
    if schedule is None or schedule.tenant_id != tenant_id:
        raise NotFound(f"no schedule {schedule_id!r}", details=[{"field": "schedule_id", "message": "not found"}])
    return schedule


def list_schedules(session: Session, *, tenant_id: str | None = None, enabled: bool | None = None) -> list[Schedule]:
    """Schedules of one tenant (or of all tenants, for the beat), oldest first."""
    stmt = select(Schedule).order_by(Schedule.created_at, Schedule.id)
    if tenant_id is not None:
        stmt = stmt.where(Schedule.tenant_id == tenant_id)
    if enabled is not None:
        stmt = stmt.where(Schedule.enabled == enabled)
    return list(session.scalars(stmt))


def update_schedule(session: Session, *, tenant_id: str, schedule_id: str, changes: dict[str, Any]) -> Schedule:
    """Apply `changes` (a subset of SCHEDULE_FIELDS plus anchor_at/next_run_at)."""
    schedule = get_schedule(session, tenant_id=tenant_id, schedule_id=schedule_id)
    for key, value in changes.items():
        if key not in (*SCHEDULE_FIELDS, "anchor_at", "next_run_at"):
            raise TypeError(f"unknown schedule field {key!r}")
        setattr(schedule, key, value)
    try:
        with session.begin_nested():
            session.flush()
    except IntegrityError:
        raise Conflict(f"a schedule named {changes.get('name')!r} already exists",
                       details=[{"field": "name", "message": "already used by another schedule"}]) from None
    return schedule


def delete_schedule(session: Session, *, tenant_id: str, schedule_id: str) -> None:
    """Delete a schedule and its runs (the forecast jobs and their results stay)."""
    schedule = get_schedule(session, tenant_id=tenant_id, schedule_id=schedule_id)
    session.execute(delete(ScheduleRunJob).where(ScheduleRunJob.schedule_id == schedule.id))
    session.execute(delete(ScheduleRun).where(ScheduleRun.schedule_id == schedule.id))
    session.delete(schedule)
    session.flush()


# --- runs ------------------------------------------------------------------------------------------


def create_run(session: Session, *, schedule: Schedule, scheduled_for: datetime,
               trigger: RunTrigger | str) -> tuple[ScheduleRun, bool]:
    """The run of `schedule` at `scheduled_for`, inserted unless it exists; (run, created)."""
    now = utcnow()
    values = dict(id=uuid.uuid4().hex, tenant_id=schedule.tenant_id, schedule_id=schedule.id,
                  scheduled_for=scheduled_for, trigger=RunTrigger(trigger).value, state=JobState.QUEUED.value,
                  progress_done=0, progress_total=0, symbol_errors=[], error=None, detail={},
                  created_at=now, updated_at=now)
    stmt = _dialect_insert(session, ScheduleRun).values(**values).on_conflict_do_nothing(
        index_elements=["schedule_id", "scheduled_for"]).returning(ScheduleRun.id)
    created = session.execute(stmt).scalar() is not None  # RETURNING: rowcount is unreliable here
    run = session.scalars(select(ScheduleRun).where(ScheduleRun.schedule_id == schedule.id,
                                                    ScheduleRun.scheduled_for == scheduled_for)
                          .execution_options(populate_existing=True)).one()
    return run, created


def get_run(session: Session, *, tenant_id: str, run_id: str, schedule_id: str | None = None) -> ScheduleRun:
    run = session.get(ScheduleRun, run_id)
    if run is None or run.tenant_id != tenant_id or (schedule_id is not None and run.schedule_id != schedule_id):
        if run is None:
            raise_if_pruned(session, kind=SCHEDULE_RUN, record_id=run_id, tenant_id=tenant_id, field="run_id")
        raise NotFound(f"no schedule run {run_id!r}", details=[{"field": "run_id", "message": "not found"}])
    return run


def list_runs(session: Session, *, tenant_id: str, schedule_id: str, limit: int = 50) -> list[ScheduleRun]:
    """A schedule's runs, newest scheduled time first."""
    stmt = (select(ScheduleRun).where(ScheduleRun.tenant_id == tenant_id, ScheduleRun.schedule_id == schedule_id)
            .order_by(ScheduleRun.scheduled_for.desc()).limit(limit))
    return list(session.scalars(stmt))


def active_runs(session: Session, *, states: Iterable[str] = ACTIVE_RUN_STATES) -> list[ScheduleRun]:
    """Runs not finished yet (all tenants): the beat finishes them, or retries a stalled fan-out."""
    stmt = select(ScheduleRun).where(ScheduleRun.state.in_(list(states))).order_by(ScheduleRun.created_at)
    return list(session.scalars(stmt))


def link_job(session: Session, *, run: ScheduleRun, batch: int, job_id: str) -> None:
    """Record that batch `batch` of `run` is forecast job `job_id` (idempotent)."""
    stmt = _dialect_insert(session, ScheduleRunJob).values(
        run_id=run.id, batch=batch, job_id=job_id, schedule_id=run.schedule_id, tenant_id=run.tenant_id,
    ).on_conflict_do_nothing(index_elements=["run_id", "batch"])
    session.execute(stmt)


def run_jobs(session: Session, *, run_id: str) -> list[Job]:
    """The forecast jobs of a run, by batch."""
    stmt = (select(Job).join(ScheduleRunJob, ScheduleRunJob.job_id == Job.id)
            .where(ScheduleRunJob.run_id == run_id).order_by(ScheduleRunJob.batch))
    return list(session.scalars(stmt))
