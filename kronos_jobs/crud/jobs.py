"""Job rows: creation, lookup, listing, leases and cancellation.

Every state change a worker makes is one conditional UPDATE whose WHERE clause states the
precondition (the job is claimable; this owner holds the lease), so two deliveries racing on the
same job cannot both win: the database serialises the two UPDATEs and the loser matches no row.
Lease times come from the caller's clock (UTC); workers are assumed NTP-synchronised to well
within a lease (KRONOS_LEASE_SECONDS minus KRONOS_HEARTBEAT_SECONDS).

Functions flush but never commit: the caller owns the transaction (`session_scope`).
"""

from __future__ import annotations

import base64
import binascii
import logging
from collections.abc import Iterable
from datetime import datetime, timedelta
from enum import Enum
from typing import Any, TypeVar

from sqlalchemy import and_, case, func, literal, or_, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from kronos_jobs.core.errors import (
    IdempotencyConflict,
    InvalidRequest,
    InvalidTransition,
    JobCancelled,
    LeaseLost,
    NotFound,
    TenantBusy,
)
from kronos_jobs.core.names import JobKind, JobState
from kronos_jobs.crud import chunks as chunk_crud
from kronos_jobs.crud import parts as part_crud
from kronos_jobs.crud.retention import JOB as PRUNED_JOB
from kronos_jobs.crud.retention import raise_if_pruned
from kronos_jobs.db.models import Job, utcnow

logger = logging.getLogger(__name__)

MAX_PAGE_SIZE = 500
E = TypeVar("E", bound=Enum)


# --- creation and lookup ----------------------------------------------------------------------


def create_job(
    session: Session,
    *,
    job_id: str,
    tenant_id: str,
    kind: str,
    device_requested: str,
    queue: str,
    routing_reason: str,
    model: str,
    params: dict[str, Any],
    progress_total: int,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
    priority: int = 6,
    workload: str = "interactive",
    parent_id: str | None = None,
) -> Job:
    """Insert a queued job and flush it (`priority`, `workload`: core/workload.py decides them).

    With an `idempotency_key` already used by this tenant: the same `request_hash` returns the
    existing job (its id differs from `job_id`, so the caller knows not to enqueue again); another
    hash raises IdempotencyConflict. Call it as the first write of its transaction: losing an
    insert race to a concurrent request with the same key rolls the session back.
    """
    if idempotency_key is not None:
        existing = find_by_idempotency_key(session, tenant_id=tenant_id, key=idempotency_key)
        if existing is not None:
            return _same_request(existing, request_hash)
    now = utcnow()
    job = Job(
        id=job_id, tenant_id=tenant_id, kind=str(_value(kind)), state=JobState.QUEUED.value,
        device_requested=str(_value(device_requested)), queue=str(_value(queue)),
        routing_reason=routing_reason, model=model, params=params, progress_done=0,
        progress_total=progress_total, progress_detail={}, error=None, symbol_errors=[],
        execution_metadata={}, idempotency_key=idempotency_key, request_hash=request_hash,
        cancel_requested=False, attempts=0, created_at=now, updated_at=now,
        priority=int(priority), workload=str(_value(workload)), enqueued_at=now, parent_id=parent_id,
    )
    session.add(job)
    try:
        session.flush()
    except IntegrityError:
        session.rollback()
        if idempotency_key is None:
            raise
        existing = find_by_idempotency_key(session, tenant_id=tenant_id, key=idempotency_key)
        if existing is None:
            raise
        return _same_request(existing, request_hash)
    return job


def _same_request(existing: Job, request_hash: str | None) -> Job:
    if existing.request_hash != request_hash:
        raise IdempotencyConflict(
            f"Idempotency-Key {existing.idempotency_key!r} was already used for job {existing.id} "
            "with a different request body",
            details=[{"field": "Idempotency-Key", "message": "reused with a different request body"}],
        )
    return existing


def _value(member: Any) -> Any:
    return getattr(member, "value", member)  # accept names.* enums or their string values


def _member(enum: type[E], value: Any, field: str) -> E:
    try:
        return enum(_value(value))
    except ValueError:
        allowed = ", ".join(m.value for m in enum)
        raise InvalidRequest(f"{field} must be one of {allowed}, got {value!r}", field=field) from None


def get_job(session: Session, *, tenant_id: str, job_id: str) -> Job:
    """The tenant's job; NotFound when it does not exist or belongs to another tenant."""
    job = session.scalar(select(Job).where(Job.id == job_id, Job.tenant_id == tenant_id))
    if job is None:
        raise_if_pruned(session, kind=PRUNED_JOB, record_id=job_id, tenant_id=tenant_id, field="job_id")
        raise NotFound(f"no job {job_id!r}", details=[{"field": "job_id", "message": "not found"}])
    return job


def find_by_idempotency_key(session: Session, *, tenant_id: str, key: str) -> Job | None:
    return session.scalar(select(Job).where(Job.tenant_id == tenant_id, Job.idempotency_key == key))


# --- listing with an opaque cursor -------------------------------------------------------------


def encode_cursor(created_at: datetime, job_id: str) -> str:
    """URL-safe, unpadded base64 of '<created_at ISO>|<id>': the position after this job."""
    raw = f"{created_at.isoformat()}|{job_id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        stamp, job_id = raw.split("|", 1)
        created_at = datetime.fromisoformat(stamp)
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise InvalidRequest("cursor is not a value returned as next_cursor by this API", field="cursor") from exc
    if created_at.tzinfo is None or not job_id:
        raise InvalidRequest("cursor is not a value returned as next_cursor by this API", field="cursor")
    return created_at, job_id


def list_jobs(
    session: Session,
    *,
    tenant_id: str,
    state: str | Iterable[str] | None = None,
    kind: str | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    cursor: str | None = None,
    limit: int = 50,
) -> tuple[list[Job], str | None]:
    """One page of the tenant's jobs, newest first; the cursor for the next page or None."""
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise InvalidRequest(f"limit must be between 1 and {MAX_PAGE_SIZE}, got {limit}", field="limit")
    query = select(Job).where(Job.tenant_id == tenant_id, Job.parent_id.is_(None))  # parts live inside their job
    if state is not None:
        states = [state] if isinstance(state, str) else list(state)
        query = query.where(Job.state.in_([_member(JobState, s, "state").value for s in states]))
    if kind is not None:
        query = query.where(Job.kind == _member(JobKind, kind, "kind").value)
    if created_after is not None:
        query = query.where(Job.created_at >= created_after)
    if created_before is not None:
        query = query.where(Job.created_at < created_before)
    if cursor:
        after_created, after_id = decode_cursor(cursor)
        # Keyset pagination on (created_at, id): stable while new jobs arrive, unlike OFFSET.
        query = query.where(or_(Job.created_at < after_created,
                                and_(Job.created_at == after_created, Job.id < after_id)))
    rows = list(session.scalars(query.order_by(Job.created_at.desc(), Job.id.desc()).limit(limit + 1)))
    if len(rows) <= limit:
        return rows, None
    page = rows[:limit]
    return page, encode_cursor(page[-1].created_at, page[-1].id)


def count_by_state(session: Session, *, tenant_id: str | None = None) -> dict[tuple[str, str], int]:
    """Job counts keyed by (kind, state), over every tenant unless `tenant_id` is given; absent pairs are 0."""
    query = select(Job.kind, Job.state, func.count()).where(Job.parent_id.is_(None)).group_by(Job.kind, Job.state)
    if tenant_id is not None:
        query = query.where(Job.tenant_id == tenant_id)
    return {(kind, state): n for kind, state, n in session.execute(query)}


def count_by_state_and_queue(session: Session, *, tenant_id: str | None = None) -> dict[tuple[str, str, str], int]:
    """Job counts keyed by (kind, state, queue), over every tenant unless `tenant_id` is given; absent triples are 0."""
    query = (select(Job.kind, Job.state, Job.queue, func.count()).where(Job.parent_id.is_(None))
             .group_by(Job.kind, Job.state, Job.queue))
    if tenant_id is not None:
        query = query.where(Job.tenant_id == tenant_id)
    return {(kind, state, queue): n for kind, state, queue, n in session.execute(query)}


def count_in_flight(session: Session, *, tenant_id: str) -> int:
    """The tenant's queued and running jobs (what KRONOS_MAX_INFLIGHT_JOBS bounds)."""
    query = select(func.count()).select_from(Job).where(
        Job.tenant_id == tenant_id, Job.parent_id.is_(None), Job.state.in_((JobState.QUEUED.value, JobState.RUNNING.value)))
    return int(session.scalar(query) or 0)


# --- leases: claim, renew, progress, finish -----------------------------------------------------


def _refetch(session: Session, job_id: str) -> Job | None:
    return session.get(Job, job_id, populate_existing=True)


def _update_returning(session: Session, statement) -> Job | None:
    """Run a conditional UPDATE of one job; the updated row (None when the WHERE matched nothing).

    RETURNING hands back the row the UPDATE wrote, so the hot path (claim, finish) needs no
    second SELECT (PostgreSQL, and SQLite >= 3.35)."""
    return session.scalars(statement.returning(Job).execution_options(
        synchronize_session=False, populate_existing=True)).one_or_none()


def _held_by(job_id: str, owner: str):
    """WHERE clause: the job is running under `owner`'s lease."""
    return and_(Job.id == job_id, Job.lease_owner == owner, Job.state == JobState.RUNNING.value)


def _cancelled_or_lost(session: Session, held, job_id: str, owner: str, action: str) -> Exception:
    """Why a conditional UPDATE guarded by `held` and "no cancel requested" matched nothing."""
    if session.scalar(select(Job.cancel_requested).where(held)):
        return JobCancelled(f"job {job_id} was cancelled before it could be {action}")
    return LeaseLost(f"job {job_id} is no longer leased by {owner}; not {action}")


def _claimable(now: datetime):
    """WHERE clause: queued, running under an expired lease, or running but yielded (a bulk job
    between two chunks: no owner). A split parent (jobs/parts.py) is never claimed again: its
    parts run it."""
    return and_(Job.parts.is_(None),
                or_(Job.state == JobState.QUEUED.value,
                    and_(Job.state == JobState.RUNNING.value,
                         or_(Job.lease_expires_at < now, Job.lease_owner.is_(None)))))


def _running_bulk(tenant_id: str, now: datetime):
    """How many bulk jobs of the tenant run right now under a live lease (a scalar subquery)."""
    return (select(func.count()).select_from(Job)
            .where(Job.tenant_id == tenant_id, Job.workload == "bulk", Job.state == JobState.RUNNING.value,
                   Job.lease_owner.is_not(None), Job.lease_expires_at >= now)
            .scalar_subquery())


def claim_job(session: Session, *, job_id: str, owner: str, lease_seconds: float,
              wait_seconds: float | None = None, bulk_limit: tuple[str, int] | None = None) -> Job:
    """Take the job for `owner`: queued, running under an expired lease, or yielded, becomes running.

    `wait_seconds` (how long the job waited on the queue for this delivery) becomes the job's
    `queue_wait_seconds` on its first claim. `bulk_limit` (tenant, limit) refuses the claim with
    TenantBusy while the tenant already runs `limit` bulk jobs; the count and the claim are one
    statement, and on PostgreSQL the caller holds the tenant's advisory lock (`lock_tenant`) in
    the same transaction, so concurrent claims cannot both slip under the limit.

    Raises JobCancelled when a cancel was requested before the job could start (the job becomes
    cancelled), LeaseLost when another owner holds a live lease or the job is finished, NotFound
    when there is no such job.
    """
    now = utcnow()
    claimable = _claimable(now)
    values: dict[str, Any] = dict(state=JobState.RUNNING.value, lease_owner=owner,
                                  lease_expires_at=now + timedelta(seconds=lease_seconds),
                                  attempts=Job.attempts + 1, updated_at=now,
                                  # a yielded job's next chunk: the job started with its first chunk
                                  started_at=case((and_(Job.state == JobState.RUNNING.value, Job.lease_owner.is_(None)),
                                                   Job.started_at), else_=literal(now, Job.started_at.type)))
    if wait_seconds is not None:
        values["queue_wait_seconds"] = func.coalesce(Job.queue_wait_seconds, float(wait_seconds))
    condition = and_(Job.id == job_id, Job.cancel_requested.is_(False), claimable)
    if bulk_limit is not None:
        condition = and_(condition, _running_bulk(bulk_limit[0], now) < bulk_limit[1])
    job = _update_returning(session, update(Job).where(condition).values(**values))
    if job is not None:
        logger.info("job %s claimed by %s (attempt %d)", job_id, owner, job.attempts)
        return job
    if bulk_limit is not None and session.scalar(select(func.count()).select_from(Job).where(
            Job.id == job_id, Job.cancel_requested.is_(False), claimable)):
        raise TenantBusy(f"tenant {bulk_limit[0]!r} already runs {bulk_limit[1]} bulk task(s) "
                         "(KRONOS_TENANT_BULK_LIMIT)", retry_after=0.0)
    # A cancel that arrived while the job waited (or while its last owner was dying) wins.
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.cancel_requested.is_(True), claimable)
        .values(state=JobState.CANCELLED.value, lease_owner=None, lease_expires_at=None, finished_at=now, updated_at=now)
        .execution_options(synchronize_session=False)
    )
    job = _refetch(session, job_id)
    if job is None:
        raise NotFound(f"no job {job_id!r}")
    if result.rowcount == 1:
        logger.info("job %s cancelled before it started", job_id)
        raise JobCancelled(f"job {job_id} was cancelled before it started")
    raise LeaseLost(f"job {job_id} is {job.state}" + (f", leased by {job.lease_owner}" if job.lease_owner else ""))


def lock_tenant(session: Session, *, tenant_id: str) -> None:
    """On PostgreSQL, serialise bulk claims of one tenant until the transaction ends (an advisory
    lock); SQLite runs one writer at a time anyway."""
    if session.get_bind().dialect.name == "postgresql":
        session.execute(select(func.pg_advisory_xact_lock(func.hashtext(f"kronos-bulk:{tenant_id}"))))


def claim_context(session: Session, *, job_id: str) -> Any:
    """What a delivery needs before its claim: tenant, workload, priority, queue and when the job
    went onto the queue (None when there is no such job)."""
    return session.execute(select(Job.tenant_id, Job.workload, Job.priority, Job.queue, Job.enqueued_at,
                                  Job.created_at, Job.parent_id).where(Job.id == job_id)).first()


def seconds_waiting(context: Any) -> float:
    """How long a job (a `claim_context` row) has been on the queue: since it was last enqueued."""
    return max(0.0, (utcnow() - (context.enqueued_at or context.created_at)).total_seconds())


def yield_job(session: Session, *, job_id: str, owner: str, done: int, grace_seconds: float) -> Job:
    """A bulk job between chunks: still running for its user, but no delivery owns it, so the next
    chunk's delivery claims it at once (attempt uncounted: the delivery did not fail). Its lease
    expiry moves `grace_seconds` ahead: only a chunk message lost for that long makes the
    reconciler send it again. A cancel requested meanwhile raises JobCancelled (the caller
    records it); LeaseLost if `owner` no longer holds the job."""
    now = utcnow()
    held = _held_by(job_id, owner)
    values = {"lease_owner": None, "lease_expires_at": now + timedelta(seconds=grace_seconds),
              "attempts": Job.attempts - 1, "progress_done": done, "enqueued_at": now, "updated_at": now}
    job = _update_returning(session, update(Job).where(held, Job.cancel_requested.is_(False)).values(**values))
    if job is None:
        raise _cancelled_or_lost(session, held, job_id, owner, "yielded")
    return job


def queue_wait_buckets(session: Session, *, bounds: Iterable[float]) -> dict[tuple[str, str], tuple[list[int], float, int]]:
    """Per (kind, workload): cumulative counts of jobs whose first queue wait was <= each bound,
    the sum of the waits and the count (a Prometheus histogram over every claimed job)."""
    bounds = list(bounds)
    wait = Job.queue_wait_seconds
    columns = [func.sum(case((wait <= b, 1), else_=0)) for b in bounds]
    query = (select(Job.kind, Job.workload, func.sum(wait), func.count(), *columns)
             .where(wait.is_not(None)).group_by(Job.kind, Job.workload))
    return {(kind, workload): ([int(c or 0) for c in counts], float(total or 0.0), int(n))
            for kind, workload, total, n, *counts in session.execute(query)}


def renew_lease(session: Session, *, job_id: str, owner: str, lease_seconds: float) -> bool:
    """Extend `owner`'s lease; False when the owner no longer holds it."""
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(_held_by(job_id, owner))
        .values(lease_expires_at=now + timedelta(seconds=lease_seconds), updated_at=now)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def update_progress(
    session: Session,
    *,
    job_id: str,
    owner: str,
    done: int,
    total: int | None = None,
    detail: dict[str, Any] | None = None,
) -> bool:
    """Record progress; returns whether a cancel was requested. LeaseLost if `owner` lost the job."""
    values: dict[str, Any] = {"progress_done": done, "updated_at": utcnow()}
    if total is not None:
        values["progress_total"] = total
    if detail is not None:
        values["progress_detail"] = detail
    row = session.execute(
        update(Job)
        .where(_held_by(job_id, owner))
        .values(**values)
        .returning(Job.cancel_requested)
        .execution_options(synchronize_session=False)
    ).first()
    if row is None:
        raise LeaseLost(f"job {job_id} is no longer leased by {owner}")
    return bool(row[0])


def finish_job(
    session: Session,
    *,
    job_id: str,
    owner: str,
    state: str,
    error: dict[str, Any] | None = None,
    symbol_errors: list[dict[str, Any]] | None = None,
    execution_metadata: dict[str, Any] | None = None,
    progress: tuple[int, int] | None = None,
) -> Job:
    """Move `owner`'s running job to the terminal `state`; LeaseLost if the owner lost the lease.

    With `progress` (done, total) the final progress is recorded too, and the last batch
    boundary's cancel check rides in the same UPDATE: a cancel requested meanwhile raises
    JobCancelled and leaves the job running (the caller rolls back and records the cancel)."""
    state = JobState(_value(state))
    if not state.is_terminal:
        raise ValueError(f"finish_job: state must be terminal, got {state.value!r}")
    now = utcnow()
    values: dict[str, Any] = {"state": state.value, "error": error, "lease_owner": None,
                              "lease_expires_at": None, "finished_at": now, "updated_at": now}
    if symbol_errors is not None:
        values["symbol_errors"] = symbol_errors
    if execution_metadata is not None:
        values["execution_metadata"] = execution_metadata
    held = _held_by(job_id, owner)
    condition = held
    if progress is not None:
        values.update(progress_done=progress[0], progress_total=progress[1])
        condition = and_(held, Job.cancel_requested.is_(False))
    job = _update_returning(session, update(Job).where(condition).values(**values))
    if job is None:  # the rare path: a cancel (checked only with `progress`) or a lost lease
        if progress is None:
            raise LeaseLost(f"job {job_id} is no longer leased by {owner}; not marking it {state.value}")
        raise _cancelled_or_lost(session, held, job_id, owner, f"marked {state.value}")
    logger.info("job %s %s", job_id, state.value)
    return job


def give_back_job(session: Session, *, job_id: str, owner: str,
                  execution_metadata: dict[str, Any] | None = None) -> Job:
    """Return `owner`'s running job to `queued` with its lease released and this attempt uncounted
    (its worker is shutting down and the job checkpointed; it is not a failed delivery).

    A cancel requested meanwhile wins: JobCancelled, and the job stays running under `owner` so
    the caller records the cancel. LeaseLost if `owner` no longer holds the job."""
    now = utcnow()
    held = _held_by(job_id, owner)
    values: dict[str, Any] = {"state": JobState.QUEUED.value, "lease_owner": None, "lease_expires_at": None,
                              "attempts": Job.attempts - 1, "enqueued_at": now, "updated_at": now}
    if execution_metadata is not None:
        values["execution_metadata"] = execution_metadata
    job = _update_returning(session, update(Job).where(held, Job.cancel_requested.is_(False)).values(**values))
    if job is None:
        raise _cancelled_or_lost(session, held, job_id, owner, "given back")
    logger.info("job %s given back to the queue by %s", job_id, owner)
    return job


# --- cancellation and the reconciler -----------------------------------------------------------


def cancel_requested(session: Session, *, job_id: str) -> bool:
    """Whether a cancel of the job was requested (one indexed read: the decode loop asks it)."""
    return bool(session.scalar(select(Job.cancel_requested).where(Job.id == job_id)))


def request_cancel(session: Session, *, tenant_id: str, job_id: str) -> Job:
    """Cancel: a queued job (or a bulk job waiting between chunks) becomes cancelled now, a running
    one is flagged to stop at its next batch boundary; a finished job raises InvalidTransition."""
    now = utcnow()
    mine = and_(Job.id == job_id, Job.tenant_id == tenant_id)
    split = session.execute(update(Job).where(mine, Job.state == JobState.RUNNING.value, Job.parts.is_not(None))
                            .values(cancel_requested=True, updated_at=now).execution_options(synchronize_session=False))
    if split.rowcount == 1:
        # A split job ends once its parts have: jobs/parts.py settles it, keeping what they forecast.
        part_crud.cancel_parts(session, parent_id=job_id)
        logger.info("job %s cancel requested while running in parts", job_id)
        job = _refetch(session, job_id)
        assert job is not None
        return job
    cancelled = {"state": JobState.CANCELLED.value, "cancel_requested": True, "finished_at": now,
                 "lease_owner": None, "lease_expires_at": None}
    # Queued first, then running: if a worker claims the job between the statements, the last
    # one still catches it.
    for from_state, where, values in (
        (JobState.QUEUED, Job.state == JobState.QUEUED.value, cancelled),
        (JobState.RUNNING, and_(Job.state == JobState.RUNNING.value, Job.lease_owner.is_(None)), cancelled),
        (JobState.RUNNING, Job.state == JobState.RUNNING.value, {"cancel_requested": True}),
    ):
        result = session.execute(
            update(Job).where(mine, where).values(updated_at=now, **values)
            .execution_options(synchronize_session=False)
        )
        if result.rowcount == 1:
            if from_state is JobState.RUNNING and values is cancelled:
                # A bulk job between chunks: nobody runs it, so the cancel settles it here, keeping
                # what a cancel while running keeps (crud/chunks.keep_as_result).
                kept, errors = chunk_crud.keep_as_result(session, job_id=job_id, tenant_id=tenant_id)
                session.execute(update(Job).where(Job.id == job_id).values(
                    symbol_errors=errors, error={"code": "cancelled", "message": f"cancelled by request between chunks; {kept}"})
                    .execution_options(synchronize_session=False))
            logger.info("job %s cancel requested while %s", job_id, from_state.value)
            job = _refetch(session, job_id)
            assert job is not None
            return job
    job = get_job(session, tenant_id=tenant_id, job_id=job_id)
    raise InvalidTransition(f"job {job_id} is {job.state} and can no longer be cancelled",
                            details=[{"field": "state", "message": job.state}])


def stale_queued_jobs(session: Session, *, older_than_seconds: float, limit: int = 100) -> list[Job]:
    """Queued jobs untouched for `older_than_seconds`: the broker may have lost their task."""
    cutoff = utcnow() - timedelta(seconds=older_than_seconds)
    query = (select(Job).where(Job.state == JobState.QUEUED.value, Job.updated_at < cutoff)
             .order_by(Job.updated_at).limit(limit))
    return list(session.scalars(query))


def expired_running_jobs(session: Session, *, limit: int = 100, untouched_for_seconds: float = 0.0) -> list[Job]:
    """Running jobs whose lease lapsed: their worker died; a new delivery may claim them. With
    `untouched_for_seconds`, only those not re-sent (touched) within that long."""
    now = utcnow()
    query = (select(Job).where(Job.state == JobState.RUNNING.value, Job.lease_expires_at < now,
                               Job.updated_at <= now - timedelta(seconds=untouched_for_seconds))
             .order_by(Job.lease_expires_at).limit(limit))
    return list(session.scalars(query))


def unsent_queued_jobs(session: Session, *, older_than_seconds: float, limit: int = 500) -> list[Job]:
    """The outbox: queued jobs committed over `older_than_seconds` ago whose task never reached the broker."""
    cutoff = utcnow() - timedelta(seconds=older_than_seconds)
    query = (select(Job).where(Job.state == JobState.QUEUED.value, Job.sent_at.is_(None), Job.created_at < cutoff)
             .order_by(Job.created_at).limit(limit))
    return list(session.scalars(query))


def mark_sent(session: Session, *, job_ids: Iterable[str]) -> int:
    """Record that the jobs' tasks reached the broker (the outbox is drained of them)."""
    ids = list(job_ids)
    if not ids:
        return 0
    result = session.execute(update(Job).where(Job.id.in_(ids), Job.sent_at.is_(None)).values(sent_at=utcnow())
                             .execution_options(synchronize_session=False))
    return result.rowcount


def touch_jobs(session: Session, *, job_ids: Iterable[str]) -> int:
    """Bump updated_at (the reconciler re-sent their tasks), so the next scan skips them a while."""
    ids = list(job_ids)
    if not ids:
        return 0
    result = session.execute(update(Job).where(Job.id.in_(ids)).values(updated_at=utcnow())
                             .execution_options(synchronize_session=False))
    return result.rowcount
