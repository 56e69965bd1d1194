"""Recovery of jobs whose delivery went wrong outside the lifecycle's control.

* `requeue_stale_jobs` (beat, every minute) re-sends tasks a broker lost: queued jobs nobody
  claimed for a while (Redis without AOF, a filesystem-broker worker killed after taking the
  message, a fine-tune given back at a warm shutdown whose re-send failed: give_back_job leaves it
  queued with a fresh `updated_at`) and running jobs whose lease lapsed (their worker died and no
  redelivery came).
* `fail_after_hard_time_limit` (the worker parent, when Celery's hard limit killed a child) fails
  the job, which the killed child could not record itself.
"""

from __future__ import annotations

import logging

from sqlalchemy import update

from kronos_jobs.core.names import JobState
from kronos_jobs.core.settings import Settings
from kronos_jobs.crud import chunks as chunk_crud
from kronos_jobs.crud import jobs as job_crud
from kronos_jobs.db.models import Job, utcnow
from kronos_jobs.db.session import session_scope
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


def requeue_stale_jobs(session, settings: Settings, *, queued_older_than: float | None = None) -> list[str]:
    """Re-send tasks for queued jobs untouched for a while and running jobs whose lease lapsed.

    A broker can lose messages (Redis without AOF, a whole filesystem-broker worker killed after it
    took the message). A duplicate message is harmless: the lease lets one delivery run the job and
    the others stop quietly. Returns the re-sent job ids (the caller commits the touch).
    """

    older = queued_older_than if queued_older_than is not None else 10 * settings.lease_seconds
    jobs = job_crud.stale_queued_jobs(session, older_than_seconds=older)
    jobs += job_crud.expired_running_jobs(session)
    sent = []
    for job in jobs:
        try:
            # A bulk job between chunks: the message names its next chunk (a duplicate then dies out).
            start = (chunk_crud.next_start(session, job_id=job.id)
                     if job.workload == "bulk" and job.state == JobState.RUNNING.value else None)
            send_job(settings, job.id, job.queue, priority=job.priority, start=start)
            sent.append(job.id)
        except Exception as exc:
            logger.warning("reconciler: could not re-send job %s (%s)", job.id, exc)
    job_crud.touch_jobs(session, job_ids=sent)
    if sent:
        logger.info("reconciler: re-sent %d job(s): %s", len(sent), ", ".join(sent[:20]))
    return sent
