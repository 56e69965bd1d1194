"""Workers: who consumes which queues, on which device, and whether they are still alive."""

from __future__ import annotations

from datetime import timedelta
from typing import Annotated

from fastapi import APIRouter, Query

from api.deps import CallerDep, SessionDep, SettingsDep
from api.schemas import ErrorResponse, WorkerPublic, WorkersPublic
from kronos_jobs.crud import workers as worker_crud
from kronos_jobs.db.models import utcnow
from kronos_jobs.inputs.wall_clock import utc_instant

router = APIRouter(prefix="/v1/workers", tags=["workers"])


@router.get("", response_model=WorkersPublic, responses={422: {"model": ErrorResponse}})
def list_workers(
    session: SessionDep,
    settings: SettingsDep,
    caller: CallerDep,
    seen_within: Annotated[int, Query(ge=0, le=30 * 86_400, description="Also list stopped or silent workers seen this many seconds ago.")] = 3_600,
) -> WorkersPublic:
    """List live workers and those seen recently, with their devices (hosts, pids and versions: admin keys only)."""
    live = {w.id for w in worker_crud.live_workers(session, stale_seconds=settings.worker_stale_seconds)}
    cutoff = utcnow() - timedelta(seconds=seen_within)
    workers = [w for w in worker_crud.list_workers(session) if w.id in live or utc_instant(w.heartbeat_at) >= cutoff]
    return WorkersPublic(data=[WorkerPublic.from_row(w, live=w.id in live, admin=caller.is_admin) for w in workers])
