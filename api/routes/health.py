"""Liveness, readiness and Prometheus metrics.

`/healthz` answers 200 while the process lives and touches nothing. `/readyz` checks the database
(`SELECT 1`) and the broker (one connection with a short timeout) and lists the live workers per
pool with their resolved devices and warnings; it answers 503 when the database or the broker is
down. `/metrics` is the Prometheus text format, written by prometheus_client.
"""

from __future__ import annotations

import logging
import os
import time
from collections import Counter
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from prometheus_client.utils import floatToGoString
from sqlalchemy import text

from api.auth import IsAdminDep, require_admin_own_session
from api.deps import Caller, SettingsDep
from kronos_jobs.broker.depth import queue_depths
from kronos_jobs.core.names import JobKind, JobState, Pool, Queue
from kronos_jobs.core.workload import PRIORITY_MAX, PRIORITY_MIN
from kronos_jobs.core.settings import Settings
from kronos_jobs.crud import jobs as job_crud
from kronos_jobs.crud import workers as worker_crud
from kronos_jobs.db.session import session_scope

logger = logging.getLogger(__name__)
router = APIRouter(tags=["health"])

BROKER_TIMEOUT_SECONDS = 2.0


def check_database(settings: Settings) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        with session_scope(settings) as session:
            session.execute(text("SELECT 1"))
    except Exception as exc:  # any failure means "not ready"; the message says which
        return {"ok": False, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
    return {"ok": True, "latency_ms": round((time.perf_counter() - started) * 1000, 1)}


def check_broker(settings: Settings) -> dict[str, Any]:
    started = time.perf_counter()
    try:
        from kronos_jobs.broker.celery_app import app_for, broker_folders  # celery only when asked

        if settings.effective_broker_url.startswith("filesystem://"):
            folder = broker_folders(settings)["data"]
            app_for(settings)  # creates the folders, as a sender would
            if not os.access(folder, os.W_OK):
                return {"ok": False, "error": f"broker folder {folder} is not writable"}
        else:
            with app_for(settings).connection_for_write() as connection:
                connection.ensure_connection(max_retries=1, interval_start=0, timeout=BROKER_TIMEOUT_SECONDS)
    except Exception as exc:
        return {"ok": False, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"}
    return {"ok": True, "latency_ms": round((time.perf_counter() - started) * 1000, 1)}


def _live_workers_by_pool(settings: Settings) -> dict[str, list[dict[str, Any]]]:
    pools: dict[str, list[dict[str, Any]]] = {pool.value: [] for pool in Pool}
    with session_scope(settings) as session:
        for worker in worker_crud.live_workers(session, stale_seconds=settings.worker_stale_seconds):
            pools.setdefault(worker.pool, []).append({
                "id": worker.id, "hostname": worker.hostname, "queues": list(worker.queues or []),
                "device_resolved": worker.device_resolved, "device_name": worker.device_name,
                "device_warning": worker.device_warning,
            })
    return pools


@router.get("/healthz")
def read_health() -> dict[str, str]:
    """Liveness: 200 while the process runs."""
    return {"status": "ok"}


@router.get("/readyz", responses={503: {"description": "database or broker unreachable"}})
def read_readiness(settings: SettingsDep, admin: IsAdminDep) -> JSONResponse:
    """Readiness: database, broker and the live workers per pool (error texts and worker names: admin keys only)."""
    checks = {"database": check_database(settings), "broker": check_broker(settings)}
    workers: dict[str, list[dict[str, Any]]] = {}
    if checks["database"]["ok"]:
        try:
            workers = _live_workers_by_pool(settings)
        except Exception as exc:  # e.g. reachable but not migrated
            checks["database"] = {"ok": False, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
    ready = all(check["ok"] for check in checks.values())
    if not admin:  # error texts name hosts and ports; worker ids name hosts
        checks = {name: {k: v for k, v in check.items() if k != "error"} for name, check in checks.items()}
        workers = {pool: [{k: v for k, v in w.items() if k not in ("id", "hostname")} for w in ws]
                   for pool, ws in workers.items()}
    body = {"status": "ready" if ready else "unavailable", "checks": checks, "workers": workers}
    return JSONResponse(body, status_code=200 if ready else 503)


class _ScrapeCollector:
    """The gauges of one scrape, read from the database just before; a fresh registry per scrape,
    so the API process keeps no metric state of its own (several API processes agree)."""

    def __init__(self, counts: dict[tuple[str, str, str], int], live: list[Any], up: int):
        self.counts, self.live, self.up = counts, live, up

    def collect(self):
        yield GaugeMetricFamily("kronos_jobs_database_up", "1 if the database answered this scrape.", value=self.up)
        jobs = GaugeMetricFamily("kronos_jobs_jobs", "Jobs by kind, state and queue.", labels=["kind", "state", "queue"])
        queues = sorted({q.value for q in Queue} | {queue for _, _, queue in self.counts})
        for kind in JobKind:
            for state in JobState:
                for queue in queues:
                    if queue.startswith(f"{kind.value}.") or (kind.value, state.value, queue) in self.counts:
                        jobs.add_metric([kind.value, state.value, queue], self.counts.get((kind.value, state.value, queue), 0))
        yield jobs
        depth = GaugeMetricFamily("kronos_jobs_queue_depth", "Jobs waiting to start (state queued) per queue.",
                                  labels=["queue"])
        for queue in queues:
            depth.add_metric([queue], sum(n for (_, state, q), n in self.counts.items()
                                          if q == queue and state == JobState.QUEUED.value))
        yield depth
        workers = GaugeMetricFamily("kronos_jobs_live_workers", "Live workers by pool.", labels=["pool"])
        for pool in Pool:
            workers.add_metric([pool.value], sum(1 for w in self.live if w.pool == pool.value))
        yield workers
        devices = GaugeMetricFamily("kronos_jobs_live_worker_devices", "Live workers by pool and resolved device.",
                                    labels=["pool", "device"])
        for (pool, device), n in sorted(Counter((w.pool, w.device_resolved) for w in self.live).items()):
            devices.add_metric([pool, device], n)
        yield devices


# --- sharing the fleet: queue depth by priority, time in queue by kind ------------------------------

QUEUE_WAIT_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0)


class _FleetCollector:
    """Queue depth read from the broker and queue wait (submit to first claim) from the jobs table."""

    def __init__(self, depths: dict[tuple[str, int], int] | None, waits: dict[tuple[str, str], tuple[list[int], float, int]]):
        self.depths, self.waits = depths, waits

    def collect(self):
        yield GaugeMetricFamily("kronos_jobs_broker_up", "1 if the broker's queues could be read this scrape.",
                                value=0 if self.depths is None else 1)
        depth = GaugeMetricFamily("kronos_jobs_broker_queue_depth", "Messages waiting on the broker by queue and job priority "
                                  "(higher runs first); reserved and running ones are not counted.",
                                  labels=["queue", "priority"])
        for queue in Queue:
            for priority in range(PRIORITY_MIN, PRIORITY_MAX + 1):
                depth.add_metric([queue.value, str(priority)], (self.depths or {}).get((queue.value, priority), 0))
        yield depth
        wait = HistogramMetricFamily("kronos_jobs_queue_wait_seconds", "Time from submit to the first claim, "
                                     "by job kind and workload, over every job claimed.", labels=["kind", "workload"])
        for (kind, workload), (counts, total, n) in sorted(self.waits.items()):
            buckets = [(floatToGoString(bound), count) for bound, count in zip(QUEUE_WAIT_BUCKETS, counts)] + [("+Inf", n)]
            wait.add_metric([kind, workload], buckets, total)
        yield wait


def _fleet_collector(settings: Settings) -> _FleetCollector:
    try:
        depths = queue_depths(settings)
    except Exception as exc:  # reported as kronos_jobs_broker_up 0
        logger.warning("metrics: broker queues unreadable: %s", exc)
        depths = None
    try:
        with session_scope(settings) as session:
            waits = job_crud.queue_wait_buckets(session, bounds=QUEUE_WAIT_BUCKETS)
    except Exception as exc:  # kronos_jobs_database_up says so
        logger.warning("metrics: queue waits unreadable: %s", exc)
        waits = {}
    return _FleetCollector(depths, waits)


@router.get("/metrics", response_class=PlainTextResponse)
def read_metrics(settings: SettingsDep, request: Request,
                 _admin: Annotated[Caller, Depends(require_admin_own_session)]) -> Response:
    """Prometheus metrics: jobs by kind, state and queue and queue depth (every tenant), live workers by
    pool and device, and this API process's HTTP requests; admin keys only."""
    try:
        with session_scope(settings) as session:
            counts = job_crud.count_by_state_and_queue(session)
            live = worker_crud.live_workers(session, stale_seconds=settings.worker_stale_seconds)
        up = 1
    except Exception as exc:
        logger.warning("metrics: database unreachable: %s", exc)
        counts, live, up = {}, [], 0
    registry = CollectorRegistry(auto_describe=False)
    registry.register(_ScrapeCollector(counts, live, up))
    registry.register(_fleet_collector(settings))
    http = getattr(request.app.state, "http_metrics", None)  # the instrumentator's registry (api/main.py)
    body = generate_latest(registry) + (generate_latest(http) if http is not None else b"")
    return Response(body, media_type=CONTENT_TYPE_PLAIN_0_0_4)
