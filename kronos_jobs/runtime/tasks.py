"""Celery tasks: thin, "like a web view". Each takes a job id and calls one service function.

Outcomes: the service records every final state itself. Transient errors (database or broker down)
retry with Celery's exponential backoff and full jitter (a countdown drawn from 0 to
min(KRONOS_RETRY_BACKOFF_MAX, 2**retries) s), up to KRONOS_TRANSIENT_RETRIES times; LeaseLost means another delivery owns
the job, so this one returns quietly; LeaseHeld (the other delivery may have died) looks again when
its lease would lapse; JobGivenBack (a fine-tune checkpointed because its worker is shutting down,
and went back to `queued`) sends the task again at once. A hard time limit kills the child before
the service can record anything, so `JobTask.on_failure` (run in the worker parent) fails the job
instead.

The worker's identity (who runs the job, on which resolved device) and its drain flag are read here,
from the worker bootstrap, and handed to the services as arguments.
`shared_task` binds the tasks to whichever app the process runs (the lazily configured
`celery_app.app`, or `make_celery(settings)` in a worker).
"""

from __future__ import annotations

import logging
import random
from collections.abc import Callable

from celery import Task, shared_task
from celery.exceptions import TimeLimitExceeded
from celery.utils.time import get_exponential_backoff_interval

from kronos_jobs.core.errors import JobGivenBack, LeaseHeld, LeaseLost, NotFound
from kronos_jobs.core.names import TASK_PRUNE, TASK_RUN_BACKTEST, TASK_RUN_FINETUNE, TASK_RUN_FORECAST, JobState
from kronos_jobs.core.settings import get_settings
from kronos_jobs.db.models import Job
from kronos_jobs.db.session import session_scope
from kronos_jobs.jobs.lease import TRANSIENT_ERRORS
from kronos_jobs.jobs.recovery import fail_after_hard_time_limit
from kronos_jobs.jobs.retention import prune
from kronos_jobs.runtime import drain, metrics, worker

logger = logging.getLogger(__name__)


def outage_countdown(retries: int, settings) -> int:
    """Seconds before retry number `retries + 1` of a database or broker outage: Celery's exponential
    backoff from 1 s with full jitter, capped at KRONOS_RETRY_BACKOFF_MAX (Celery's autoretry options
    are fixed when the task is defined; this reads the settings)."""
    return get_exponential_backoff_interval(factor=1, retries=retries, maximum=settings.retry_backoff_max,
                                            full_jitter=True)


class JobTask(Task):
    """Base of the job tasks: a hard time limit fails the job (the killed child could not)."""

    def on_failure(self, exc, task_id, args, kwargs, einfo):
        if isinstance(exc, TimeLimitExceeded):
            fail_after_hard_time_limit(args[0] if args else task_id, settings=get_settings(), limit=exc.args[0] if exc.args else None)


def deliver(task: Task, job_id: str, service: Callable[..., object], **context: object) -> str | None:
    """Run `service(job_id, settings=..., **context)` for one delivery and map its exceptions to an
    outcome; transient errors propagate to Celery's automatic retry."""
    settings = get_settings()
    try:
        state = service(job_id, settings=settings, **context)
    except LeaseHeld as exc:
        # A redelivery (worker child killed, Redis visibility timeout) while the job's lease is
        # live: the other delivery may be healthy or dead. Look again when the lease would lapse;
        # a finished job then stops this delivery, a dead owner's job is taken over.
        countdown = exc.retry_after + random.uniform(0.2, 1.0)
        logger.info("job %s: lease held by another delivery; checking again in %.1f s", job_id, countdown)
        raise task.retry(countdown=countdown, max_retries=None)
    except JobGivenBack as exc:
        # The job is `queued` again with its checkpoint saved; this worker is shutting down, so the
        # re-sent task goes to another one (or to this one after its restart). Acks late: the old
        # message is acknowledged once the new one is sent. Should the send fail, the job is still
        # queued in the database and the beat reconciler re-sends it (jobs/recovery.py).
        logger.info("job %s: %s; sending its task again", job_id, exc)
        raise task.retry(countdown=0, max_retries=None)
    except LeaseLost as exc:
        logger.info("job %s: this delivery stops (%s)", job_id, exc)
        return None
    except NotFound:  # a message for a job that no longer exists (deleted, or another database)
        logger.warning("job %s: no such job; message dropped", job_id)
        return None
    except TRANSIENT_ERRORS as exc:
        # Minutes of tries (KRONOS_TRANSIENT_RETRIES), each at most KRONOS_RETRY_BACKOFF_MAX apart:
        # an outage of any length up to that is ridden out, and noticed soon after it ends.
        retries = task.request.retries or 0
        countdown = outage_countdown(retries, settings)
        logger.warning("job %s: transient %s (%s); retry %d of at most %d in %d s", job_id, type(exc).__name__, exc,
                       retries + 1, settings.transient_retries, countdown)
        raise task.retry(exc=exc, countdown=countdown, max_retries=settings.transient_retries)
    if state is not None and settings.worker_metrics_port is not None:
        _observe(settings, job_id)
    return getattr(state, "value", state)


def _observe(settings, job_id: str) -> None:
    """Worker metrics of a finished job; a failure here never changes the job's outcome."""
    try:
        with session_scope(settings) as session:
            job = session.get(Job, job_id)
            if job is not None and JobState(job.state).is_terminal:
                metrics.observe_job(job)
    except Exception:  # noqa: BLE001 - metrics are best effort; the job is already recorded
        logger.warning("job %s: could not record worker metrics", job_id, exc_info=True)


@shared_task(bind=True, base=JobTask, name=TASK_RUN_FORECAST, ignore_result=True)
def run_forecast(self, job_id: str, start: int | None = None) -> str | None:
    """Run one delivery of forecast job `job_id` (see jobs/forecast.py); `start`: the bulk chunk
    this message is for, None for a job's first message."""
    from kronos_jobs.jobs.forecast import run_forecast_job  # torch, on the first job only

    return deliver(self, job_id, run_forecast_job, identity=worker.current_identity(), start=start)


@shared_task(bind=True, base=JobTask, name=TASK_RUN_BACKTEST, ignore_result=True)
def run_backtest(self, job_id: str, start: int | None = None) -> str | None:
    """Run one delivery of backtest job `job_id` (see jobs/backtest.py); `start`: the batch this
    chunk message is for, None for a job's first message."""
    from kronos_jobs.jobs.backtest import run_backtest_job  # torch, on the first job only

    return deliver(self, job_id, run_backtest_job, identity=worker.current_identity(), start=start)


@shared_task(bind=True, base=JobTask, name=TASK_RUN_FINETUNE, ignore_result=True)
def run_finetune(self, job_id: str) -> str | None:
    """Run one delivery of fine-tune job `job_id` (see jobs/finetune.py: lease, resume, register)."""
    from kronos_jobs.jobs.finetune import run_finetune_job  # torch, on the first job only

    return deliver(self, job_id, run_finetune_job, identity=worker.current_identity(), draining=drain.draining)


@shared_task(name=TASK_PRUNE, ignore_result=True)
def prune_retention() -> dict:
    """Beat: delete inputs, results, job rows, runs and retired models' files past their retention."""
    return prune(get_settings()).as_dict()
