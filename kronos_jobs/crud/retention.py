"""Data access for retention (jobs/retention.py decides what and when): find what is due, delete it
in bounded statements, and remember what was deleted so the API can answer 410 Gone.

Every function takes a `limit`, so one call touches a bounded number of rows and the caller's
transaction stays short; the caller commits between calls.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session

from kronos_jobs.core.errors import Gone
from kronos_jobs.db.models import (
    ForecastRow,
    Job,
    JobInput,
    ModelVersion,
    PrunedRecord,
    ScheduleRun,
    ScheduleRunJob,
)

JOB, SCHEDULE_RUN = "job", "schedule_run"  # PrunedRecord.kind


def raise_if_pruned(session: Session, *, kind: str, record_id: str, tenant_id: str, field: str) -> None:
    """Raise Gone when retention deleted this record of the tenant's; return otherwise."""
    pruned_at = session.scalar(select(PrunedRecord.pruned_at).where(
        PrunedRecord.kind == kind, PrunedRecord.id == record_id, PrunedRecord.tenant_id == tenant_id))
    if pruned_at is not None:
        what = kind.replace("_", " ")
        raise Gone(f"{what} {record_id!r} was deleted by retention on {pruned_at:%Y-%m-%d}",
                   details=[{"field": field, "message": f"{what} deleted by retention"}])


# --- job inputs -----------------------------------------------------------------------------------


def due_inputs(session: Session, *, finished_before: datetime, limit: int) -> list[str]:
    """Ids of finished jobs whose input is still stored and due for deletion."""
    return list(session.scalars(
        select(Job.id).where(Job.finished_at < finished_before, Job.input_pruned_at.is_(None))
        .order_by(Job.finished_at).limit(limit)))


def count_inputs(session: Session, *, finished_before: datetime) -> tuple[int, int]:
    """(jobs, stored bytes) whose input is due."""
    row = session.execute(
        select(func.count(JobInput.job_id),
               func.coalesce(func.sum(func.length(JobInput.bars_parquet)), 0))
        .join(Job, Job.id == JobInput.job_id)
        .where(Job.finished_at < finished_before, Job.input_pruned_at.is_(None))).one()
    return int(row[0]), int(row[1])


def delete_inputs(session: Session, *, job_ids: list[str], at: datetime) -> int:
    """Delete these jobs' inputs and mark them pruned; the number of input rows deleted."""
    deleted = session.execute(delete(JobInput).where(JobInput.job_id.in_(job_ids))).rowcount
    session.execute(update(Job).where(Job.id.in_(job_ids)).values(input_pruned_at=at)
                    .execution_options(synchronize_session=False))
    return int(deleted or 0)


# --- forecast rows --------------------------------------------------------------------------------


def due_results(session: Session, *, finished_before: datetime, limit: int) -> list[str]:
    """Ids of finished jobs whose result rows are still stored and due for deletion."""
    return list(session.scalars(
        select(Job.id).where(Job.finished_at < finished_before, Job.result_pruned_at.is_(None))
        .order_by(Job.finished_at).limit(limit)))


def count_results(session: Session, *, finished_before: datetime) -> tuple[int, int]:
    """(jobs, forecast rows) whose results are due."""
    jobs = session.scalar(select(func.count(Job.id)).where(
        Job.finished_at < finished_before, Job.result_pruned_at.is_(None)))
    rows = session.scalar(select(func.count(ForecastRow.id)).join(Job, Job.id == ForecastRow.job_id).where(
        Job.finished_at < finished_before, Job.result_pruned_at.is_(None)))
    return int(jobs or 0), int(rows or 0)


def delete_forecast_rows(session: Session, *, job_ids: list[str], limit: int) -> int:
    """Delete at most `limit` forecast rows of these jobs; the number deleted (below `limit`: done)."""
    ids = select(ForecastRow.id).where(ForecastRow.job_id.in_(job_ids)).limit(limit).scalar_subquery()
    return int(session.execute(delete(ForecastRow).where(ForecastRow.id.in_(ids))
                               .execution_options(synchronize_session=False)).rowcount or 0)


def mark_results_pruned(session: Session, *, job_ids: list[str], at: datetime) -> None:
    session.execute(update(Job).where(Job.id.in_(job_ids)).values(result_pruned_at=at)
                    .execution_options(synchronize_session=False))


# --- job rows and schedule runs -------------------------------------------------------------------


def due_jobs(session: Session, *, finished_before: datetime, limit: int) -> list[tuple[str, str]]:
    """(id, tenant_id) of finished jobs due for deletion."""
    return [tuple(r) for r in session.execute(
        select(Job.id, Job.tenant_id).where(Job.finished_at < finished_before)
        .order_by(Job.finished_at).limit(limit))]


def count_jobs(session: Session, *, finished_before: datetime) -> int:
    return int(session.scalar(select(func.count(Job.id)).where(Job.finished_at < finished_before)) or 0)


def delete_jobs(session: Session, *, jobs: list[tuple[str, str]], at: datetime) -> int:
    """Delete these job rows (their inputs, forecasts and run links with them) and leave tombstones."""
    if not jobs:
        return 0
    ids = [job_id for job_id, _ in jobs]
    session.execute(insert(PrunedRecord), [{"kind": JOB, "id": job_id, "tenant_id": tenant, "pruned_at": at}
                                           for job_id, tenant in jobs])
    # Children first, explicitly: the same statements on SQLite and PostgreSQL, whatever cascades.
    session.execute(delete(ScheduleRunJob).where(ScheduleRunJob.job_id.in_(ids)))
    session.execute(delete(JobInput).where(JobInput.job_id.in_(ids)))
    session.execute(delete(ForecastRow).where(ForecastRow.job_id.in_(ids)).execution_options(synchronize_session=False))
    session.execute(update(ModelVersion).where(ModelVersion.job_id.in_(ids)).values(job_id=None)
                    .execution_options(synchronize_session=False))
    return int(session.execute(delete(Job).where(Job.id.in_(ids)).execution_options(synchronize_session=False))
               .rowcount or 0)


def due_runs(session: Session, *, finished_before: datetime, limit: int) -> list[tuple[str, str]]:
    """(id, tenant_id) of finished schedule runs due for deletion."""
    return [tuple(r) for r in session.execute(
        select(ScheduleRun.id, ScheduleRun.tenant_id).where(ScheduleRun.finished_at < finished_before)
        .order_by(ScheduleRun.finished_at).limit(limit))]


def count_runs(session: Session, *, finished_before: datetime) -> int:
    return int(session.scalar(select(func.count(ScheduleRun.id)).where(ScheduleRun.finished_at < finished_before)) or 0)


def delete_runs(session: Session, *, runs: list[tuple[str, str]], at: datetime) -> int:
    """Delete these schedule runs (and their job links; the jobs keep their own retention)."""
    if not runs:
        return 0
    ids = [run_id for run_id, _ in runs]
    session.execute(insert(PrunedRecord), [{"kind": SCHEDULE_RUN, "id": run_id, "tenant_id": tenant, "pruned_at": at}
                                           for run_id, tenant in runs])
    session.execute(delete(ScheduleRunJob).where(ScheduleRunJob.run_id.in_(ids)))
    return int(session.execute(delete(ScheduleRun).where(ScheduleRun.id.in_(ids))
                               .execution_options(synchronize_session=False)).rowcount or 0)


# --- retired models' artifacts --------------------------------------------------------------------


def due_model_artifacts(session: Session, *, retired_before: datetime, limit: int, after: str = "") -> list[ModelVersion]:
    """Retired models whose artifact files are still kept and due for deletion, by id after `after`."""
    return list(session.scalars(
        select(ModelVersion).where(ModelVersion.retired_at < retired_before, ModelVersion.artifact_pruned_at.is_(None),
                                   ModelVersion.artifact_path.is_not(None), ModelVersion.id > after)
        .order_by(ModelVersion.id).limit(limit)))


def mark_artifact_pruned(session: Session, *, model_id: str, at: datetime) -> None:
    session.execute(update(ModelVersion).where(ModelVersion.id == model_id).values(artifact_pruned_at=at)
                    .execution_options(synchronize_session=False))
