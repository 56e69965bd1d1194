"""Worker metrics for Prometheus, from the parent and every prefork child of one worker.

With KRONOS_WORKER_METRICS_PORT set, `serve` (run in the worker parent before Celery forks) points
prometheus_client's multiprocess mode at a fresh directory and serves the merged metrics of all
processes on that port; the children record a finished job with `observe_job`. The API's /metrics
(api/routes/health.py) serves what the database knows (jobs, queue depth, live workers); this
serves what only a worker sees: how long jobs waited and ran, model loads, decode throughput,
failures by code. Buckets run from 10 ms to a day, so a queue wait of hours still lands in one.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from functools import lru_cache
from typing import Any

from kronos_jobs.core.settings import Settings
from kronos_jobs.inputs.wall_clock import utc_instant

logger = logging.getLogger(__name__)

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus_client's own variable, inherited by the children
BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 7200, 14400,
           43200, 86400)


def serve(settings: Settings) -> str | None:
    """Start the metrics endpoint of this worker (parent process, before the fork); its directory."""
    if settings.worker_metrics_port is None:
        return None
    directory = tempfile.mkdtemp(prefix="kronos-worker-metrics-")
    os.environ[MULTIPROC_ENV] = directory  # read by prometheus_client when it is first imported
    from prometheus_client import CollectorRegistry, multiprocess, start_http_server

    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    start_http_server(settings.worker_metrics_port, registry=registry)
    logger.info("worker metrics on :%d (multiprocess directory %s)", settings.worker_metrics_port, directory)
    return directory


def stop(directory: str | None) -> None:
    if directory:
        shutil.rmtree(directory, ignore_errors=True)


@lru_cache(maxsize=1)
def _metrics() -> dict[str, Any]:
    from prometheus_client import Counter, Histogram

    return {
        "queue_wait": Histogram("kronos_jobs_job_queue_wait_seconds", "Seconds from submission to start.",
                                ["kind", "queue"], buckets=BUCKETS),
        "run": Histogram("kronos_jobs_job_run_seconds", "Seconds from start to finish, by final state.",
                         ["kind", "queue", "state"], buckets=BUCKETS),
        "model_load": Histogram("kronos_jobs_model_load_seconds", "Seconds to load a model (cache misses only).",
                                ["source", "device"], buckets=BUCKETS),
        "series_steps": Counter("kronos_jobs_inference_series_steps", "Forecast bars decoded (symbols x pred_len).",
                                ["queue", "device"]),
        "inference": Counter("kronos_jobs_inference_seconds", "Seconds spent decoding forecasts.", ["queue", "device"]),
        "failures": Counter("kronos_jobs_job_failures", "Jobs that ended failed, by error code.", ["kind", "code"]),
        "finished": Counter("kronos_jobs_jobs_finished", "Jobs finished by this worker, by final state.",
                            ["kind", "queue", "state"]),
    }


def observe_job(job: Any) -> None:
    """Record a job this process just finished (a row of the jobs table)."""
    metrics = _metrics()
    meta = job.execution_metadata or {}
    timings = meta.get("timings") or {}
    created, started, finished = (utc_instant(t) for t in (job.created_at, job.started_at, job.finished_at))
    if created and started:
        metrics["queue_wait"].labels(job.kind, job.queue).observe(max(0.0, (started - created).total_seconds()))
    if started and finished:
        metrics["run"].labels(job.kind, job.queue, job.state).observe(max(0.0, (finished - started).total_seconds()))
    metrics["finished"].labels(job.kind, job.queue, job.state).inc()
    device = str(meta.get("device_resolved") or "unknown")
    if timings.get("model_load_seconds"):
        metrics["model_load"].labels(str(meta.get("model_source") or "unknown"), device).observe(
            float(timings["model_load_seconds"]))
    if meta.get("series_steps") and timings.get("inference_seconds"):
        metrics["series_steps"].labels(job.queue, device).inc(int(meta["series_steps"]))
        metrics["inference"].labels(job.queue, device).inc(float(timings["inference_seconds"]))
    if job.state == "failed":
        metrics["failures"].labels(job.kind, str((job.error or {}).get("code") or "unknown")).inc()
