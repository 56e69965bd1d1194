"""One delivery of a job, from claim to finish: the lifecycle every job kind shares.

1. Claim: `crud.jobs.claim_job` is one conditional UPDATE that takes the lease for `new_owner()`
   (or raises JobCancelled, LeaseLost, or LeaseHeld via `lease.raise_if_held`).
2. Keep: `lease.LeaseHeartbeat` renews the lease while the job runs.
3. Run: `run_delivery` gives up on a job whose deliveries keep dying (`attempts_exhausted`), runs
   the kind's work, and maps what it raises to an outcome, the same for every kind: a cancel and
   the soft time limit are recorded, a lost lease or a given-back job propagates (the task
   decides), a transient error releases the lease and propagates (the task retries), anything
   else fails the job with the error's code.
4. Finish: the kind's `finish` writes results, metadata and the final state in ONE transaction
   (`crud.jobs.finish_job`, guarded by the lease owner).

The forecast (jobs/forecast.py) and fine-tune (jobs/finetune.py) lifecycles are this sequence with
their own work and finish.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import socket
import time
import traceback
import uuid
from collections.abc import Callable
from typing import Any

from celery.exceptions import SoftTimeLimitExceeded

from kronos_jobs.core.errors import JobCancelled, JobFailure, JobGivenBack, LeaseLost, NotFound
from kronos_jobs.core.names import JobState
from kronos_jobs.core.settings import Settings
from kronos_jobs.core.workload import Workload
from kronos_jobs.crud import chunks as chunk_crud
from kronos_jobs.crud import jobs as job_crud
from kronos_jobs.db.session import session_scope
from kronos_jobs.jobs.lease import is_transient, release_lease

logger = logging.getLogger(__name__)


def new_owner() -> str:
    """The lease owner of one delivery: host, process and a random suffix (a redelivery differs)."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


@dataclasses.dataclass
class Delivery:
    """What one delivery knows about the job it claimed while it runs (kind-specific fields in subclasses)."""

    job_id: str
    owner: str
    tenant_id: str
    queue: str
    device_requested: str
    attempt: int
    queued_at: Any
    started_at: Any
    t0: float  # time.perf_counter() when the delivery began

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


@dataclasses.dataclass
class ClaimPlan:
    """What a delivery reads before its claim (`plan_claim`)."""

    context: Any  # crud.jobs.claim_context's row: tenant, workload, priority, queue, enqueue time, parent
    wait_seconds: float  # how long the job has been on the queue
    bulk: bool  # one chunk per delivery, then yield (core/workload.py)
    bulk_limit: tuple[str, int] | None  # (tenant, KRONOS_TENANT_BULK_LIMIT) when the claim must respect it


def plan_claim(settings: Settings, job_id: str, start: int | None) -> ClaimPlan | None:
    """Read what the claim of `job_id` needs; None when the message names a chunk (`start`) the job
    has already passed: a duplicate (the reconciler re-sent a chunk that was only slow), which does
    nothing, so duplicates die out instead of each yielding and re-sending for the rest of the job.

    Raises NotFound when there is no such job."""
    with session_scope(settings, autocommit=True) as session:
        context = job_crud.claim_context(session, job_id=job_id)
        current = chunk_crud.next_start(session, job_id=job_id) if start is not None and context else None
    if context is None:
        raise NotFound(f"no job {job_id!r}")
    if start is not None and current != start:
        logger.info("job %s: message for chunk %d, the job is at %d; dropped as a duplicate", job_id, start, current)
        return None
    bulk = context.workload == Workload.BULK.value and settings.queue_policy == "priority"
    limit = (context.tenant_id, settings.tenant_bulk_limit) if bulk and settings.tenant_bulk_limit else None
    return ClaimPlan(context=context, wait_seconds=job_crud.seconds_waiting(context), bulk=bulk, bulk_limit=limit)


def attempts_exhausted(run: Delivery, settings: Settings) -> dict[str, str] | None:
    """The error of a job whose deliveries keep dying, or None while it may run again.

    Each delivery that claimed the job counts; a job that keeps killing its worker (OOM, segfault,
    hard time limit) must end instead of looping through redeliveries."""
    if run.attempt <= settings.max_retries + 1:
        return None
    return {"code": "too_many_attempts",
            "message": f"gave up after {run.attempt - 1} deliveries that did not finish "
                       f"(worker lost, killed or timed out); KRONOS_MAX_RETRIES is {settings.max_retries}"}


def run_delivery(run: Delivery, settings: Settings, work: Callable[[], JobState], *,
                 fail: Callable[[dict[str, Any]], JobState], cancelled: Callable[[JobCancelled], JobState],
                 time_limit_message: str) -> JobState:
    """Run `work()` for a claimed job and turn what it raises into the job's outcome (module docstring).

    `fail(error)` and `cancelled(exc)` record that outcome through the kind's one-transaction finish."""
    error = attempts_exhausted(run, settings)
    if error is not None:
        return fail(error)
    try:
        return work()
    except JobCancelled as exc:
        return cancelled(exc)
    except SoftTimeLimitExceeded:
        return fail({"code": "time_limit", "message": time_limit_message})
    except (LeaseLost, JobGivenBack):
        raise
    except Exception as exc:
        if is_transient(exc):
            release_lease(run.job_id, run.owner, settings)
            raise
        code = exc.code if isinstance(exc, JobFailure) else "internal_error"
        logger.error("job %s failed: %s\n%s", run.job_id, exc, traceback.format_exc())
        return fail({"code": code, "message": f"{type(exc).__name__}: {exc}"})
