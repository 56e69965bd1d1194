"""Liveness, readiness and Prometheus metrics.

`/healthz` answers 200 while the process lives and touches nothing. `/readyz` checks the database
(`SELECT 1`) and the broker (one connection with a short timeout) and lists the live workers per
pool with their resolved devices and warnings; it answers 503 when the database or the broker is
down. `/metrics` is the Prometheus text format, written by hand (four gauges need no library).
"""

from __future__ import annotations

import logging
import os
import time
from typing import Any

from fastapi import APIRouter
from fastapi.responses import JSONResponse, PlainTextResponse
from sqlalchemy import text

from api.deps import SettingsDep
from kronos_jobs.core.names import JobKind, JobState, Pool
from kronos_jobs.core.settings import Settings
from kronos_jobs.crud import jobs as job_crud
from kronos_jobs.crud import workers as worker_crud
from kronos_jobs.db.session import session_scope

logger = logging.getLogger(__name__)
router = APIRouter(tags=["health"])

BROKER_TIMEOUT_SECONDS = 2.0
PROMETHEUS_CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


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
def read_readiness(settings: SettingsDep) -> JSONResponse:
    """Readiness: database, broker and the live workers per pool."""
    checks = {"database": check_database(settings), "broker": check_broker(settings)}
    workers: dict[str, list[dict[str, Any]]] = {}
    if checks["database"]["ok"]:
        try:
            workers = _live_workers_by_pool(settings)
        except Exception as exc:  # e.g. reachable but not migrated
            checks["database"] = {"ok": False, "error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300]}"}
    ready = all(check["ok"] for check in checks.values())
    body = {"status": "ready" if ready else "unavailable", "checks": checks, "workers": workers}
    return JSONResponse(body, status_code=200 if ready else 503)


@router.get("/metrics", response_class=PlainTextResponse)
def read_metrics(settings: SettingsDep) -> PlainTextResponse:
    """Prometheus metrics: jobs by kind and state, live workers by pool and device."""
    lines: list[str] = []
    try:
        with session_scope(settings) as session:
            counts = job_crud.count_by_state(session)
            live = worker_crud.live_workers(session, stale_seconds=settings.worker_stale_seconds)
        up = 1
    except Exception as exc:
        logger.warning("metrics: database unreachable: %s", exc)
        counts, live, up = {}, [], 0
    lines += ["# HELP kronos_jobs_database_up 1 if the database answered this scrape.", "# TYPE kronos_jobs_database_up gauge", f"kronos_jobs_database_up {up}"]
    lines += ["# HELP kronos_jobs_jobs Jobs by kind and state.", "# TYPE kronos_jobs_jobs gauge"]
    for kind in JobKind:
        for state in JobState:
            lines.append(f'kronos_jobs_jobs{{kind="{kind.value}",state="{state.value}"}} {counts.get((kind.value, state.value), 0)}')
    lines += ["# HELP kronos_jobs_live_workers Live workers by pool.", "# TYPE kronos_jobs_live_workers gauge"]
    for pool in Pool:
        lines.append(f'kronos_jobs_live_workers{{pool="{pool.value}"}} {sum(1 for w in live if w.pool == pool.value)}')
    lines += ["# HELP kronos_jobs_live_worker_devices Live workers by pool and resolved device.", "# TYPE kronos_jobs_live_worker_devices gauge"]
    per_device: dict[tuple[str, str], int] = {}
    for worker in live:
        per_device[(worker.pool, worker.device_resolved)] = per_device.get((worker.pool, worker.device_resolved), 0) + 1
    for (pool, device), n in sorted(per_device.items()):
        lines.append(f'kronos_jobs_live_worker_devices{{pool="{_label(pool)}",device="{_label(device)}"}} {n}')
    return PlainTextResponse("\n".join(lines) + "\n", media_type=PROMETHEUS_CONTENT_TYPE)


def _label(value: str) -> str:
    return str(value).replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
