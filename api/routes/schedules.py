"""Schedules: create, list, read, change, delete; trigger a run; read runs.

The beat reads the schedules table on every tick (kronos_jobs/runtime/beat.py), so a change here takes
effect within KRONOS_SCHEDULER_INTERVAL seconds, without a restart.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, BackgroundTasks, Body, Path, Query, Response

from api.deps import CallerDep, SessionDep, SettingsDep
from api.schemas import (
    ErrorResponse,
    Progress,
    RunCreate,
    RunPublic,
    RunsPublic,
    ScheduleCreate,
    SchedulePublic,
    SchedulesPublic,
    ScheduleUpdate,
    as_utc,
)
from kronos_jobs.crud import schedules as schedule_crud
from kronos_jobs.db.models import Schedule, ScheduleRun
from kronos_jobs.jobs import schedules as schedule_service

router = APIRouter(prefix="/v1/schedules", tags=["schedules"])

ERRORS = {status: {"model": ErrorResponse} for status in (400, 404, 409, 422, 503)}
ScheduleId = Annotated[str, Path(max_length=64, description="The schedule id returned by POST.")]
RunId = Annotated[str, Path(max_length=64)]


def _public(schedule: Schedule) -> SchedulePublic:
    return SchedulePublic.from_row(schedule, schedule_service.schedule_fields(schedule))


def _run_public(session, run: ScheduleRun) -> RunPublic:
    view = schedule_service.refresh_run(session, run)  # live progress from the run's jobs; stores nothing
    return RunPublic(
        id=run.id, schedule_id=run.schedule_id, scheduled_for=as_utc(run.scheduled_for), trigger=run.trigger,
        state=view["state"], progress=Progress(done=min(view["done"], run.progress_total), total=run.progress_total),
        symbol_errors=view["errors"], error=run.error, job_ids=view["job_ids"], detail=run.detail or {},
        created_at=as_utc(run.created_at), started_at=as_utc(run.started_at), finished_at=as_utc(run.finished_at),
    )


@router.post("", status_code=201, response_model=SchedulePublic, responses=ERRORS)
def create_schedule(body: ScheduleCreate, session: SessionDep, settings: SettingsDep, caller: CallerDep,
                    response: Response) -> SchedulePublic:
    """Create a schedule."""
    fields = body.model_dump()
    fields["model"] = fields["model"] or settings.default_model
    schedule = schedule_service.create_schedule(session, tenant_id=caller.tenant_id, fields=fields,
                                                model_dirs=settings.effective_model_dirs)
    response.headers["Location"] = f"{router.prefix}/{schedule.id}"
    return _public(schedule)


@router.get("", response_model=SchedulesPublic, responses=ERRORS)
def list_schedules(session: SessionDep, caller: CallerDep, enabled: bool | None = None) -> SchedulesPublic:
    """List schedules, oldest first."""
    rows = schedule_crud.list_schedules(session, tenant_id=caller.tenant_id, enabled=enabled)
    return SchedulesPublic(data=[_public(s) for s in rows])


@router.get("/{schedule_id}", response_model=SchedulePublic, responses=ERRORS)
def read_schedule(schedule_id: ScheduleId, session: SessionDep, caller: CallerDep) -> SchedulePublic:
    """Read a schedule."""
    return _public(schedule_crud.get_schedule(session, tenant_id=caller.tenant_id, schedule_id=schedule_id))


@router.patch("/{schedule_id}", response_model=SchedulePublic, responses=ERRORS)
def update_schedule(schedule_id: ScheduleId, body: ScheduleUpdate, session: SessionDep, settings: SettingsDep,
                    caller: CallerDep) -> SchedulePublic:
    """Change a schedule; only the fields given change."""
    changes = body.model_dump(exclude_unset=True)
    for key in ("name", "cron", "lookback", "pred_len", "device", "enabled", "sampling", "timezone", "model"):
        if key in changes and changes[key] is None:
            changes.pop(key)  # null for a required field means "leave it"
    return _public(schedule_service.update_schedule(session, tenant_id=caller.tenant_id, schedule_id=schedule_id,
                                                    changes=changes, model_dirs=settings.effective_model_dirs))


@router.delete("/{schedule_id}", status_code=204, responses=ERRORS)
def delete_schedule(schedule_id: ScheduleId, session: SessionDep, caller: CallerDep) -> Response:
    """Delete a schedule and its runs (forecast jobs and results stay)."""
    schedule_crud.delete_schedule(session, tenant_id=caller.tenant_id, schedule_id=schedule_id)
    return Response(status_code=204)


@router.post("/{schedule_id}/run", status_code=202, response_model=RunPublic, responses=ERRORS)
def trigger_run(schedule_id: ScheduleId, session: SessionDep, settings: SettingsDep, caller: CallerDep,
                background: BackgroundTasks, body: Annotated[RunCreate | None, Body()] = None) -> RunPublic:
    """Run a schedule now (or for a given time); one run per (schedule, time)."""
    run, created = schedule_service.trigger_run(settings, tenant_id=caller.tenant_id, schedule_id=schedule_id,
                                                scheduled_for=body.scheduled_for if body else None)
    if created:  # after the response: reading bars and submitting jobs may take seconds
        background.add_task(schedule_service.fan_out, settings, run.id)
    return _run_public(session, session.merge(run, load=True))


@router.get("/{schedule_id}/runs", response_model=RunsPublic, responses=ERRORS)
def list_runs(schedule_id: ScheduleId, session: SessionDep, caller: CallerDep,
              limit: Annotated[int, Query(ge=1, le=500)] = 50) -> RunsPublic:
    """List a schedule's runs, newest first."""
    schedule_crud.get_schedule(session, tenant_id=caller.tenant_id, schedule_id=schedule_id)
    runs = schedule_crud.list_runs(session, tenant_id=caller.tenant_id, schedule_id=schedule_id, limit=limit)
    return RunsPublic(data=[_run_public(session, r) for r in runs])


@router.get("/{schedule_id}/runs/{run_id}", response_model=RunPublic, responses=ERRORS)
def read_run(schedule_id: ScheduleId, run_id: RunId, session: SessionDep, caller: CallerDep) -> RunPublic:
    """Read a run: state, progress, per-symbol errors and its forecast jobs."""
    return _run_public(session, schedule_crud.get_run(session, tenant_id=caller.tenant_id, run_id=run_id,
                                                      schedule_id=schedule_id))
