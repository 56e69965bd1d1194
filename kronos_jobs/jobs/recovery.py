"""Recovery of jobs whose delivery went wrong outside the lifecycle's control.

`sweep` runs in the beat process itself every KRONOS_DISPATCH_INTERVAL seconds (runtime/beat.py),
not as a task on a worker queue, so a backlog of long jobs can never delay or expire it. It does:

* `send_unsent_jobs`, the outbox: queued jobs whose task never reached the broker (`sent_at` NULL:
  the broker was down at submit) are sent once they are KRONOS_DISPATCH_AFTER_SECONDS old, so a
  broker outage delays them by seconds after it ends, never loses them.
* `requeue_stale_jobs` re-sends tasks a broker lost: running jobs whose lease lapsed (their worker
  died, or the broker connection dropped under it and Celery cancelled the task), at most once per
  lease, and queued jobs nobody claimed for 10 leases (Redis without AOF, a filesystem-broker
  worker killed after taking the message, a fine-tune given back whose re-send failed).
* `parts.settle_finished_parents` ends split jobs whose last part ended without its delivery
  settling the parent (a part cancelled while queued, or killed at the hard time limit).
* `fail_after_hard_time_limit` (the worker parent, when Celery's hard limit killed a child) fails
  the job, which the killed child could not record itself.
"""

from __future__ import annotations

import logging

from sqlalchemy import update

from kronos_jobs.core.names import JobKind, JobState
from kronos_jobs.core.settings import Settings
from kronos_jobs.crud import chunks as chunk_crud
from kronos_jobs.crud import jobs as job_crud
from kronos_jobs.db.models import Job, utcnow
from kronos_jobs.db.session import session_scope
from kronos_jobs.jobs import parts
from kronos_jobs.jobs.submit import send_job

logger = logging.getLogger(__name__)


def fail_after_hard_time_limit(job_id: str, *, settings: Settings, limit: float | None = None) -> bool:
    """The hard time limit killed the child running `job_id` before it could record anything:
    fail the job now (in the worker parent) instead of letting redeliveries hit the same wall."""


    now = utcnow()
    error = {"code": "hard_time_limit",
             "message": f"the job's process was killed at its hard time limit ({limit or '?'} s)"}
    try:
        with session_scope(settings) as session:
            result = session.execute(
                update(Job).where(Job.id == job_id, Job.state == JobState.RUNNING.value)
                .values(state=JobState.FAILED.value, error=error, lease_owner=None, lease_expires_at=None,
                        finished_at=now, updated_at=now)
                .execution_options(synchronize_session=False))
    except Exception as exc:  # the lease lapses and the attempt cap ends the job instead
        logger.error("job %s: could not record the hard time limit (%s)", job_id, exc)
        return False
    if result.rowcount:
        logger.info("job %s failed code=hard_time_limit", job_id)
    return bool(result.rowcount)


def _send(settings: Settings, job, start: int | None = None) -> None:
    """Send a job's task at its priority; a backtest, which shares the forecast queues, names its kind."""
    options: dict = {"priority": job.priority}
    if job.kind == JobKind.BACKTEST.value:
        options["kind"] = job.kind
    if start is not None:
        options["start"] = start
    send_job(settings, job.id, job.queue, **options)


def requeue_stale_jobs(session, settings: Settings, *, queued_older_than: float | None = None) -> list[str]:
    """Re-send tasks for queued jobs untouched for a while and running jobs whose lease lapsed
    (each at most once per lease: the re-send touches it).

    A broker can lose messages (Redis without AOF, a whole filesystem-broker worker killed after it
    took the message). A duplicate message is harmless: the lease lets one delivery run the job and
    the others stop quietly. Returns the re-sent job ids (the caller commits the touch).
    """

    older = queued_older_than if queued_older_than is not None else 10 * settings.lease_seconds
    jobs = job_crud.stale_queued_jobs(session, older_than_seconds=older)
    jobs += job_crud.expired_running_jobs(session, untouched_for_seconds=settings.lease_seconds)
    sent = []
    for job in jobs:
        try:
            # A bulk job between chunks: the message names its next chunk (a duplicate then dies out).
            start = (chunk_crud.next_start(session, job_id=job.id)
                     if job.workload == "bulk" and job.state == JobState.RUNNING.value else None)
            _send(settings, job, start=start)
            sent.append(job.id)
        except Exception as exc:
            logger.warning("reconciler: could not re-send job %s (%s)", job.id, exc)
    job_crud.touch_jobs(session, job_ids=sent)
    if sent:
        logger.info("reconciler: re-sent %d job(s): %s", len(sent), ", ".join(sent[:20]))
    return sent


def send_unsent_jobs(session, settings: Settings) -> list[str]:
    """Send the tasks of queued jobs committed but never sent; returns their ids (the caller commits)."""
    jobs = job_crud.unsent_queued_jobs(session, older_than_seconds=settings.dispatch_after_seconds)
    sent = []
    for job in jobs:
        try:
            _send(settings, job)
        except Exception as exc:  # the broker is still down: the next sweep tries again
            logger.warning("dispatcher: could not send job %s (%s); retrying in %.1f s", job.id, exc,
                           settings.dispatch_interval)
            break
        sent.append(job.id)
    job_crud.mark_sent(session, job_ids=sent)
    if sent:
        logger.info("dispatcher: sent %d unsent job(s): %s", len(sent), ", ".join(sent[:20]))
    return sent


def sweep(settings: Settings) -> dict[str, list[str]]:
    """One recovery pass (beat): the outbox, then lost tasks."""
    with session_scope(settings) as session:
        unsent = send_unsent_jobs(session, settings)
    with session_scope(settings) as session:
        resent = requeue_stale_jobs(session, settings)
    return {"sent": unsent, "resent": resent, "settled": parts.settle_finished_parents(settings)}
