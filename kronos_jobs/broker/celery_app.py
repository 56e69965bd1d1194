"""The Celery app and its configuration, filled from `Settings` in one block.

Like Celery's `examples/next-steps/proj/celery.py`: the app lives here, the tasks in `tasks.py`.
Building the app connects to nothing; a prefork worker opens its broker and database connections
after the fork. The database is the source of truth for job state, so there is no result backend.

    from kronos_jobs.broker.celery_app import app            # process-wide, configured from get_settings()
    app = make_celery(settings)                       # an explicit one (worker bootstrap, tests)
"""

from __future__ import annotations

import logging
import time
from functools import lru_cache
from pathlib import Path
from typing import Any

from celery import Celery

from kronos_jobs.broker.filesystem_broker import TRANSPORT_PATH
from kronos_jobs.broker.redis_broker import TRANSPORT_PATH as REDIS_TRANSPORT_PATH
from kronos_jobs.core.names import TASK_PRUNE, TASK_RUN_BACKTEST, TASK_RUN_FINETUNE, TASK_RUN_FORECAST, Queue
from kronos_jobs.core.settings import Settings, get_settings
from kronos_jobs.core.workload import PRIORITY_MAX

logger = logging.getLogger(__name__)


def broker_folders(settings: Settings) -> dict[str, Path]:
    """Folders of the embedded filesystem broker (one `data` folder: producers and consumers meet)."""
    root = settings.broker_dir
    return {"data": root / "data", "processed": root / "processed", "control": root / "control"}


def ensure_broker_folders(settings: Settings) -> None:
    """Create the embedded broker's folders (no-op for a server broker). The API calls this at
    start-up, so readiness does not depend on a worker having started first."""
    if settings.effective_broker_url.startswith("filesystem://"):
        for folder in broker_folders(settings).values():
            folder.mkdir(parents=True, exist_ok=True)


def _filesystem_transport_options(settings: Settings) -> dict[str, Any]:
    folders = broker_folders(settings)
    ensure_broker_folders(settings)
    return {
        # kombu's default pairs in/out folders for two distinct peers; every process here is both
        # producer and consumer, so both point at one folder.
        "data_folder_in": str(folders["data"]),
        "data_folder_out": str(folders["data"]),
        # Consuming is a rename into this folder. It must sit on the same file system as the data
        # folder: os.rename is atomic, so exactly one consumer wins a message (a copy to /tmp is not).
        "store_processed": True,
        "processed_folder": str(folders["processed"]),
        "control_folder": str(folders["control"]),
        # The transport polls a directory; the default 1 s caps throughput near 1 task/s.
        "polling_interval": settings.broker_polling_interval,
    }


def _redis_transport_options(settings: Settings) -> dict[str, Any]:
    return {
        # Redis re-queues an unacked message after this long. It must exceed the longest hard time
        # limit, or a late-acked job still running is delivered a second time (the DB lease stops
        # that copy, but it should not happen at all).
        "visibility_timeout": settings.effective_visibility_timeout,
        # Detect half-open connections (NAT, Redis failover) instead of hanging on a dead socket.
        "socket_keepalive": True,
        "socket_timeout": 30,
        "socket_connect_timeout": 10,
        # Ping idle connections so a silently dropped one is replaced before the next command.
        "health_check_interval": 25,
        "retry_on_timeout": True,
        # Message priorities (core/workload.py): one Redis list per step, all ten steps so that
        # every job priority keeps its own list, served step 0 first. Separate bulk queues would
        # need every worker started with a queue preference and would double the queue names;
        # with priorities the workers, routing and queue names stay as they are. With prefetch 1
        # and late ack a worker holds no message beyond the ones it runs, so the next free slot
        # takes the best message waiting.
        "priority_steps": list(range(PRIORITY_MAX + 1)),
        # Across the queues a worker consumes, too: the best step of any of them first.
        "queue_order_strategy": "priority",
    }


def celery_config(settings: Settings) -> dict[str, Any]:
    """The whole configuration; every reliability setting says why it is set."""
    broker_url = settings.effective_broker_url
    if broker_url.startswith("filesystem://"):
        transport_options = _filesystem_transport_options(settings)
    elif broker_url.startswith(("redis://", "rediss://", "sentinel://")):
        transport_options = _redis_transport_options(settings)
    else:
        transport_options = {}
    visibility = settings.effective_visibility_timeout
    return {
        "broker_url": broker_url,
        # kombu's filesystem transport can hand a consumer a half-written message (which kills the
        # worker); ours publishes atomically. None keeps the URL's own transport (redis...).
        # Redis: kombu's transport with a softer close while Redis is down (broker/redis_broker.py).
        "broker_transport": (TRANSPORT_PATH if broker_url.startswith("filesystem://")
                             else REDIS_TRANSPORT_PATH if broker_url.startswith(("redis://", "rediss://")) else None),
        "broker_transport_options": transport_options,
        # Celery reads the visibility timeout from three places; set all three, or the shortest
        # (the default hour) silently wins (celery#7651, #9339).
        "result_backend_transport_options": {"visibility_timeout": visibility},
        "visibility_timeout": visibility,
        # Keep retrying the broker at start-up (containers start in any order) and explicitly so:
        # Celery 6 stops inheriting this from broker_connection_retry.
        "broker_connection_retry_on_startup": True,
        "broker_connection_max_retries": None,
        # The database is the only source of job state: no result backend, results ignored.
        "result_backend": None,
        "task_ignore_result": True,
        "task_store_errors_even_if_ignored": False,
        # Tasks carry only a job id; JSON keeps messages readable and pickle-free.
        "task_serializer": "json",
        "accept_content": ["json"],
        # Acknowledge after the task returns: a worker that dies mid-job leaves the message to be
        # delivered again. Safe because the DB lease makes a second delivery a no-op while the
        # first one lives, and results are written once per job.
        # Fine-tunes (hours) keep late ack on purpose rather than early ack + a reaper: a killed
        # child's message comes back at once and the run resumes from its last checkpoint
        # (jobs/finetune.py). Two copies never train at once because of the DB lease with
        # heartbeat, which holds even when Redis redelivers past its visibility timeout.
        "task_acks_late": True,
        # Redeliver also when the child is killed (SIGKILL, OOM): Celery would otherwise ack that
        # message on purpose. Loops are bounded by the job's attempt cap (jobs/forecast.py).
        "task_reject_on_worker_lost": True,
        # A task that raised has already recorded its outcome in the database; redelivering it
        # would re-run a poison message forever. (5.7 split of task_acks_on_failure_or_timeout.)
        "task_acks_on_failure": True,
        # A hard time limit means the job cannot finish inside its limit; running it again would
        # hit the same wall. Ack it; tasks.JobTask.on_failure marks the job failed.
        "task_acks_on_timeout": True,
        # One message per child at a time: forecasts are long, and a prefetched backlog would sit
        # behind a busy child while another worker idles.
        "worker_prefetch_multiplier": 1,
        # Soft limit raises SoftTimeLimitExceeded inside the job so it can record `failed`; the
        # hard limit kills a child stuck in native code (Kronos#403-style hangs). A database or broker
        # outage is retried (runtime/tasks.py deliver) with a backoff capped at KRONOS_RETRY_BACKOFF_MAX,
        # so a task notices within that long that the service is back, KRONOS_TRANSIENT_RETRIES
        # times, minutes in all: a 20 s outage no longer uses up every retry and drops the message.
        "task_annotations": {
            TASK_RUN_FORECAST: {
                "soft_time_limit": settings.forecast_soft_time_limit,
                "time_limit": settings.forecast_time_limit,
                "max_retries": settings.transient_retries,
            },
            TASK_RUN_BACKTEST: {  # a backtest is many forecasts: the forecast limits, on the forecast queues
                "soft_time_limit": settings.forecast_soft_time_limit,
                "time_limit": settings.forecast_time_limit,
                "max_retries": settings.transient_retries,
            },
            TASK_RUN_FINETUNE: {
                "soft_time_limit": settings.finetune_soft_time_limit,
                "time_limit": settings.finetune_time_limit,
                "max_retries": settings.transient_retries,
            },
        },
        # On broker connection loss Celery redelivers running late-ack tasks anyway, so they could
        # run twice in parallel; cancel them instead (the default from Celery 6).
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        # A cold shutdown (SIGQUIT) first gives running jobs this long, then cancels them and
        # re-queues their messages at once instead of leaving them for the visibility timeout. A
        # warm one (SIGTERM) waits for the running tasks: forecasts finish, and fine-tunes
        # checkpoint at their next step and give their job back (runtime/drain.py, jobs/finetune.py).
        "worker_soft_shutdown_timeout": 30.0,
        # Task events (received, started, succeeded...) feed Flower and celery-exporter.
        "worker_send_task_events": True,
        # No "task-sent" event: the job row already records when it was queued, and the event
        # would cost a second broker write on every submit.
        "task_send_sent_event": False,
        # Python keeps a child's high-water memory mark; recycle children now and then.
        "worker_max_tasks_per_child": 200,
        # Model loading happens lazily on the first task, never in worker_process_init; the
        # default 4 s alive timeout is kept on purpose so a slow init is caught, not hidden.
        "worker_proc_alive_timeout": 4.0,
        # Queues are chosen per job by routing.choose_queue and passed at send time, so there are
        # no task_routes and no default queue a job could fall into by accident.
        "task_create_missing_queues": True,
        "timezone": "UTC",
        "enable_utc": True,
        # The recovery sweep (outbox dispatcher and reconciler) is no beat_schedule entry: it runs
        # inside beat itself (runtime/beat.py), where a backlog on the worker queues cannot starve it.
        # Retention (jobs/retention.py) is the one static entry, and a task on a worker queue rather
        # than work inside beat: after downtime a prune may delete for minutes, and beat must keep
        # sweeping meanwhile. Its deletes are bounded batches, so it shares the CPU queue harmlessly;
        # `expires` drops a tick that waited a whole interval (the next one catches up).
        "beat_schedule": {
            "prune-retention": {"task": TASK_PRUNE, "schedule": settings.prune_interval_seconds,
                                "options": {"queue": Queue.FORECAST_CPU.value, "expires": settings.prune_interval_seconds}},
        },
        # Beat also reads the schedules table every KRONOS_SCHEDULER_INTERVAL seconds, so schedules
        # edited through the API take effect without a restart (kronos_jobs/runtime/beat.py says why not a library).
        "beat_scheduler": "kronos_jobs.runtime.beat:DatabaseScheduler",
        "worker_hijack_root_logger": False,
    }


def make_celery(settings: Settings) -> Celery:
    """A Celery app configured from `settings`; connects to nothing until used."""
    app = Celery("kronos_jobs", include=["kronos_jobs.runtime.tasks"], set_as_current=False)
    app.conf.update(celery_config(settings))
    return app


@lru_cache(maxsize=8)
def _app_for(settings_json: str) -> Celery:
    return make_celery(Settings.model_validate_json(settings_json))


def app_for(settings: Settings) -> Celery:
    """The process-wide app for the process settings, else one cached per distinct settings."""
    if settings is get_settings():
        return app
    return _app_for(settings.model_dump_json())


def prune_processed_messages(settings: Settings, older_than_seconds: float = 3600.0) -> int:
    """Delete consumed filesystem-broker messages (kept only so consuming is an atomic rename)."""
    folder = broker_folders(settings)["processed"]
    if not settings.effective_broker_url.startswith("filesystem://") or not folder.is_dir():
        return 0
    cutoff, removed = time.time() - older_than_seconds, 0
    for path in folder.glob("*.msg"):
        try:
            if path.stat().st_mtime < cutoff:
                path.unlink()
                removed += 1
        except FileNotFoundError:  # another process pruned it first
            continue
    return removed


# The process-wide app. Its configuration is computed on first use (add_defaults takes a
# callable), so importing this module reads no settings, creates no folders and opens nothing.
app = Celery("kronos_jobs", include=["kronos_jobs.runtime.tasks"])
app.add_defaults(lambda: celery_config(get_settings()))
