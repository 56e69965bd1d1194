"""Worker registrations: who is consuming which queues on which device, and who is still alive.

A worker is live while it heartbeats (every KRONOS_HEARTBEAT_SECONDS) and has not said it stopped;
routing and /readyz only trust live workers, so a crashed worker drops out after
KRONOS_WORKER_STALE_SECONDS without anyone cleaning up.
"""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from sqlalchemy import and_, select, update
from sqlalchemy.orm import Session

from kronos_jobs.db.models import Worker, utcnow

logger = logging.getLogger(__name__)


def _value(member: Any) -> Any:
    return getattr(member, "value", member)  # accept names.* enums or their string values


def register_worker(
    session: Session,
    *,
    worker_id: str,
    hostname: str,
    pid: int,
    pool: str,
    queues: list[str],
    concurrency: int,
    torch_threads: int,
    device_requested: str,
    device_resolved: str,
    device_name: str | None,
    device_warning: str | None,
    device_info: dict[str, Any],
) -> Worker:
    """Insert or refresh the worker's row (a restarted worker keeps its node name and id)."""
    now = utcnow()
    fields = dict(
        hostname=hostname, pid=pid, pool=str(_value(pool)), queues=[str(_value(q)) for q in queues],
        concurrency=concurrency, torch_threads=torch_threads, device_requested=device_requested,
        device_resolved=device_resolved, device_name=device_name, device_warning=device_warning,
        device_info=device_info, started_at=now, heartbeat_at=now, stopped_at=None,
    )
    worker = session.get(Worker, worker_id)
    if worker is None:
        worker = Worker(id=worker_id, **fields)
        session.add(worker)
    else:
        for name, value in fields.items():
            setattr(worker, name, value)
    session.flush()
    return worker


def heartbeat_worker(session: Session, *, worker_id: str) -> bool:
    """Mark the worker alive now; False when it is not registered (it should register again)."""
    result = session.execute(
        update(Worker).where(Worker.id == worker_id).values(heartbeat_at=utcnow(), stopped_at=None)
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def mark_worker_stopped(session: Session, *, worker_id: str) -> bool:
    """Record a clean shutdown, so the worker stops counting as live at once."""
    result = session.execute(
        update(Worker).where(Worker.id == worker_id).values(stopped_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return result.rowcount == 1


def _live(stale_seconds: float):
    """WHERE clause: the worker heartbeated within `stale_seconds` and has not stopped."""
    return and_(Worker.stopped_at.is_(None), Worker.heartbeat_at >= utcnow() - timedelta(seconds=stale_seconds))


def live_workers(session: Session, *, stale_seconds: float, pool: str | None = None) -> list[Worker]:
    """Workers that heartbeated within `stale_seconds` and have not stopped, by id."""
    query = select(Worker).where(_live(stale_seconds))
    if pool is not None:
        query = query.where(Worker.pool == _value(pool))
    return list(session.scalars(query.order_by(Worker.id)))


def live_worker_queues(session: Session, *, stale_seconds: float) -> list[dict[str, Any]]:
    """The queues of each live worker, as `{"queues": [...]}`: all that routing.choose_queue reads,
    without loading whole rows on every submit."""
    return [{"queues": queues} for queues in session.scalars(select(Worker.queues).where(_live(stale_seconds)))]


def list_workers(session: Session) -> list[Worker]:
    """Every registered worker, live or not, by id (for diagnostics)."""
    return list(session.scalars(select(Worker).order_by(Worker.id)))
