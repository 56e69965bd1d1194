"""Part jobs of a job split over the live worker slots (jobs/parts.py): rows, not decisions.

A split parent stays `running` with no lease and `parts` set; each part is an ordinary forecast
job (queued, leased, retried, recovered like any other) whose `parent_id` names the parent. Part
rows are deleted in the transaction that finishes the parent, after their forecast rows have been
moved to it.

Functions flush but never commit: the caller owns the transaction (`session_scope`).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import and_, delete, exists, func, select, update
from sqlalchemy.orm import Session, aliased

from kronos_jobs.core.errors import JobCancelled, LeaseLost
from kronos_jobs.core.names import JobState
from kronos_jobs.db.models import ForecastRow, Job, utcnow

TERMINAL = tuple(s.value for s in JobState if s.is_terminal)


def mark_split(session: Session, *, job_id: str, owner: str, parts: int) -> None:
    """`owner`'s running job becomes a split parent: no lease (its parts hold theirs), `parts`
    set, so no delivery can claim it again. JobCancelled when a cancel arrived first, LeaseLost
    when `owner` no longer holds it."""
    now = utcnow()
    held = and_(Job.id == job_id, Job.lease_owner == owner, Job.state == JobState.RUNNING.value)
    result = session.execute(update(Job).where(held, Job.cancel_requested.is_(False))
                             .values(parts=parts, lease_owner=None, lease_expires_at=None, updated_at=now)
                             .execution_options(synchronize_session=False))
    if result.rowcount == 1:
        return
    if session.scalar(select(Job.cancel_requested).where(held)):
        raise JobCancelled(f"job {job_id} was cancelled before it could be split")
    raise LeaseLost(f"job {job_id} is no longer leased by {owner}; not split")


def parts_of(session: Session, *, parent_id: str) -> list[Job]:
    """The parent's part jobs in series order (their `part_offset`)."""
    rows = list(session.scalars(select(Job).where(Job.parent_id == parent_id)
                                .execution_options(populate_existing=True)))
    return sorted(rows, key=lambda job: int((job.params or {}).get("part_offset", 0)))


def lock_parent(session: Session, *, parent_id: str) -> Job | None:
    """The split parent, still running, locked until the transaction ends (PostgreSQL: FOR UPDATE,
    so two parts finishing at once settle it one after the other; SQLite has one writer anyway)."""
    query = (select(Job).where(Job.id == parent_id, Job.state == JobState.RUNNING.value, Job.parts.is_not(None))
             .with_for_update().execution_options(populate_existing=True))
    return session.scalars(query).one_or_none()


def roll_up_progress(session: Session, *, parent_id: str) -> None:
    """The parent's progress: the series its parts have done."""
    part = aliased(Job)
    done = select(func.coalesce(func.sum(part.progress_done), 0)).where(part.parent_id == parent_id).scalar_subquery()
    session.execute(update(Job).where(Job.id == parent_id, Job.state == JobState.RUNNING.value)
                    .values(progress_done=done).execution_options(synchronize_session=False))


def adopt_rows(session: Session, *, parent_id: str, part_ids: list[str]) -> None:
    """Move the parts' forecast rows to the parent (their symbols are disjoint), then delete the parts."""
    if part_ids:
        table = ForecastRow.__table__
        session.execute(update(table).where(table.c.job_id.in_(part_ids)).values(job_id=parent_id))
        session.execute(delete(Job).where(Job.id.in_(part_ids)).execution_options(synchronize_session=False))


def finish_parent(session: Session, *, parent_id: str, values: dict[str, Any]) -> None:
    now = utcnow()
    session.execute(update(Job).where(Job.id == parent_id)
                    .values(lease_owner=None, lease_expires_at=None, finished_at=now, updated_at=now, **values)
                    .execution_options(synchronize_session=False))


def cancel_parts(session: Session, *, parent_id: str) -> None:
    """A cancel of the parent reaches its parts: queued ones end now, running ones stop at their
    next check (between decode steps)."""
    now = utcnow()
    session.execute(update(Job).where(Job.parent_id == parent_id, Job.state == JobState.QUEUED.value)
                    .values(state=JobState.CANCELLED.value, cancel_requested=True, finished_at=now, updated_at=now)
                    .execution_options(synchronize_session=False))
    session.execute(update(Job).where(Job.parent_id == parent_id, Job.state == JobState.RUNNING.value)
                    .values(cancel_requested=True, updated_at=now).execution_options(synchronize_session=False))


def settled_parents(session: Session, *, limit: int = 100) -> list[str]:
    """Split parents still running whose parts have all ended (what the sweep finishes)."""
    part = aliased(Job)
    open_part = exists().where(part.parent_id == Job.id, part.state.not_in(TERMINAL))
    query = (select(Job.id).where(Job.state == JobState.RUNNING.value, Job.parts.is_not(None), ~open_part)
             .limit(limit))
    return list(session.scalars(query))
