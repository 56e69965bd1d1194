"""The web console under /console: server-rendered pages over the same handlers and dependencies as
the JSON API, so the same callers see the same rows (and the API's auth applies here too).

Pages: jobs (filter by kind and state, live progress, cancel), a job (parameters, metadata, errors
per symbol, charts), workers, queues, schedules with their runs, models, series. A little vanilla
JavaScript (api/static/console.js) refreshes the parts marked `data-refresh` from the same URLs;
there is no front-end build step.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Form, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from fastapi.templating import Jinja2Templates
from starlette.exceptions import HTTPException

from api.auth import CONSOLE_COOKIE, CONSOLE_PREFIX, authenticate
from api.deps import Caller, SessionDep, SettingsDep
from api.routes import jobs as job_routes
from api.routes import models as model_routes
from api.routes import schedules as schedule_routes
from api.routes import scores as score_routes
from api.routes import workers as worker_routes
from api.routes.jobs import JobId
from api.tables import ResultFormat
from kronos_jobs.charts.forecast import ChartFormat
from kronos_jobs.core.errors import InvalidRequest
from kronos_jobs.core.names import JobKind, JobState, Queue
from kronos_jobs.crud import jobs as job_crud
from kronos_jobs.crud import results as result_crud
from kronos_jobs.crud import series as series_crud
from kronos_jobs.jobs.registry import provenance

router = APIRouter(prefix="/console", tags=["console"], include_in_schema=False)
TEMPLATES = Jinja2Templates(directory=Path(__file__).resolve().parents[1] / "templates")
STATIC_DIR = Path(__file__).resolve().parents[1] / "static"
CHARTS_PER_JOB = 6  # symbols drawn on a job page; the rest are a click away
SCORE_WINDOW_DAYS = 30  # the schedules page answers "is it beating persistence lately?"
PAGES = [("jobs", "Jobs"), ("workers", "Workers"), ("queues", "Queues"), ("schedules", "Schedules"),
         ("models", "Models"), ("series", "Series")]


def console_caller(request: Request, settings: SettingsDep, session: SessionDep) -> Caller:
    """The API's caller dependency (same keys, scopes and rate limit); a page asked for without a
    key sends the browser to the login form instead of a JSON 401."""
    try:
        return authenticate(request, settings, session, None)
    except HTTPException as exc:
        if exc.status_code == 401 and request.method == "GET":
            raise HTTPException(303, "log in with an API key", headers={"Location": f"{CONSOLE_PREFIX}/login"}) from None
        raise


CallerDep = Annotated[Caller, Depends(console_caller)]


def _page(request: Request, template: str, page: str, **context: Any) -> HTMLResponse:
    response = TEMPLATES.TemplateResponse(request, template, {"pages": PAGES, "page": page, **context})
    # Same-origin, not the API's no-referrer: under no-referrer a browser sends `Origin: null` with
    # the page's form POSTs (login, cancel), which the cross-site guard rightly refuses.
    response.headers["Referrer-Policy"] = "same-origin"
    return response


def _job_view(job) -> dict[str, Any]:
    """A job as the templates show it: the public fields plus provenance and a progress fraction."""
    from kronos_jobs.client.progress import job_progress

    public = job.model_dump(mode="json")
    done, total, unit = job_progress(public)
    public.update(made_by=provenance(public["metadata"], public["model"]), fraction=done / total if total else 0.0,
                  steps=f"{done}/{total} {unit}s" if total else "-")
    return public


@router.get("", include_in_schema=False)
def console_home() -> RedirectResponse:
    return RedirectResponse("/console/jobs")


@router.get("/login", response_class=HTMLResponse)
def console_login_form(request: Request, settings: SettingsDep) -> HTMLResponse:
    """The key form (only needed when the API requires keys)."""
    return _page(request, "console/login.html", "login", auth_required=settings.auth_required, error=None)


@router.post("/login", response_class=HTMLResponse)
def console_login(request: Request, settings: SettingsDep, session: SessionDep,
                  key: Annotated[str, Form(max_length=256)]) -> Response:
    """Check the key as the API would, then keep it in an HttpOnly, SameSite=Strict cookie."""
    probe = Request({**request.scope, "method": "GET",
                     "headers": [(b"authorization", f"Bearer {key.strip()}".encode())]})
    try:
        authenticate(probe, settings, session, None)
    except HTTPException as exc:
        return _page(request, "console/login.html", "login", auth_required=settings.auth_required,
                     error=str(exc.detail))
    response = RedirectResponse(f"{CONSOLE_PREFIX}/jobs", status_code=303)
    response.set_cookie(CONSOLE_COOKIE, key.strip(), httponly=True, samesite="strict", path=CONSOLE_PREFIX,
                        secure=request.url.scheme == "https")
    return response


@router.post("/logout")
def console_logout() -> RedirectResponse:
    response = RedirectResponse(f"{CONSOLE_PREFIX}/login", status_code=303)
    response.delete_cookie(CONSOLE_COOKIE, path=CONSOLE_PREFIX)
    return response


def _choice(enum: type, value: str | None, field: str):
    """A filter's value: empty means any (the form's "any" option); anything else must be a member."""
    if not value:
        return None
    try:
        return enum(value)
    except ValueError:
        raise InvalidRequest(f"{field} {value!r} is not one of {', '.join(m.value for m in enum)}", field=field) from None


@router.get("/jobs", response_class=HTMLResponse)
def console_jobs(request: Request, session: SessionDep, caller: CallerDep,
                 state: Annotated[str | None, Query(max_length=32)] = None,
                 kind: Annotated[str | None, Query(max_length=32)] = None,
                 fragment: bool = False) -> HTMLResponse:
    """Jobs, newest first, filtered by kind and state; `fragment` returns only the table body."""
    state, kind = _choice(JobState, state, "state"), _choice(JobKind, kind, "kind")
    listed = job_routes.list_jobs(session, caller, state=state, kind=kind, created_after=None, created_before=None,
                                  limit=100, cursor=None)
    context = {"jobs": [_job_view(j) for j in listed.data], "states": list(JobState), "kinds": list(JobKind),
               "state": state.value if state else "", "kind": kind.value if kind else ""}
    return _page(request, "console/jobs_rows.html" if fragment else "console/jobs.html", "jobs", **context)


@router.get("/jobs/{job_id}", response_class=HTMLResponse)
def console_job(request: Request, job_id: JobId, session: SessionDep, caller: CallerDep,
                fragment: bool = False) -> HTMLResponse:
    """One job: state, progress, parameters, metadata, errors per symbol and its charts."""
    job = _job_view(job_routes.read_job(job_id, session, caller))
    symbols: list[str] = []
    if job["kind"] == JobKind.FORECAST.value and JobState(job["state"]).is_terminal:
        symbols = list(dict.fromkeys(result_crud.read_forecasts(session, job_id=job_id)["symbol"]))
    return _page(request, "console/job_state.html" if fragment else "console/job.html", "jobs", job=job,
                 symbols=symbols[:CHARTS_PER_JOB], more_symbols=symbols[CHARTS_PER_JOB:])


@router.get("/jobs/{job_id}/chart.{fmt}")
def console_job_chart(job_id: JobId, fmt: ChartFormat, session: SessionDep, caller: CallerDep,
                      symbol: Annotated[str | None, Query(max_length=64)] = None) -> Response:
    """The job's chart, as GET /v1/jobs/{id}/chart draws it."""
    return job_routes.read_job_chart(job_id, session, caller, symbol=symbol, format=fmt)


@router.post("/jobs/{job_id}/cancel")
def console_cancel(job_id: JobId, session: SessionDep, caller: CallerDep) -> RedirectResponse:
    job_routes.cancel_job(job_id, session, caller)
    return RedirectResponse(f"/console/jobs/{job_id}", status_code=303)


@router.get("/workers", response_class=HTMLResponse)
def console_workers(request: Request, session: SessionDep, settings: SettingsDep, caller: CallerDep) -> HTMLResponse:
    """Workers seen in the last day: pool, queues, resolved device, warning, heartbeat."""
    listed = worker_routes.list_workers(session, settings, caller, seen_within=86_400)
    return _page(request, "console/workers.html", "workers", workers=[w.model_dump(mode="json") for w in listed.data],
                 stale_seconds=settings.worker_stale_seconds)


@router.get("/queues", response_class=HTMLResponse)
def console_queues(request: Request, session: SessionDep, settings: SettingsDep, caller: CallerDep) -> HTMLResponse:
    """Per queue: the caller's jobs waiting, running and finished, and the live workers consuming it."""
    counts = job_crud.count_by_state_and_queue(session, tenant_id=caller.tenant_id)
    live = worker_routes.list_workers(session, settings, caller, seen_within=0).data
    rows = []
    for queue in sorted({q.value for q in Queue} | {q for _, _, q in counts}):
        by_state = {state: sum(n for (_, s, q), n in counts.items() if q == queue and s == state.value)
                    for state in JobState}
        consumers = [w for w in live if w.live and queue in w.queues]
        rows.append({"queue": queue, "queued": by_state[JobState.QUEUED], "running": by_state[JobState.RUNNING],
                     "finished": sum(n for s, n in by_state.items() if s.is_terminal),
                     "workers": len(consumers), "devices": sorted({w.device_resolved for w in consumers})})
    return _page(request, "console/queues.html", "queues", queues=rows)


@router.get("/schedules", response_class=HTMLResponse)
def console_schedules(request: Request, session: SessionDep, caller: CallerDep) -> HTMLResponse:
    """Schedules with their latest runs and the live scores of their forecasts over the last 30 days."""
    schedules = schedule_routes.list_schedules(session, caller).data
    runs = {s.id: schedule_routes.list_runs(s.id, session, caller, limit=5).data for s in schedules}
    since = datetime.now(timezone.utc) - timedelta(days=SCORE_WINDOW_DAYS)
    scored = score_routes.read_scores(session, caller, schedule=None, model=None, symbol=None, since=since,
                                      by="all", format=ResultFormat.JSON).rows
    scores = {s.id: [row for row in scored if row["schedule_id"] == s.id] for s in schedules}
    return _page(request, "console/schedules.html", "schedules",
                 schedules=[s.model_dump(mode="json") for s in schedules], scores=scores,
                 score_window_days=SCORE_WINDOW_DAYS,
                 runs={k: [r.model_dump(mode="json") for r in v] for k, v in runs.items()})


@router.get("/models", response_class=HTMLResponse)
def console_models(request: Request, session: SessionDep, caller: CallerDep, settings: SettingsDep) -> HTMLResponse:
    """Every model a job may name, with a fine-tune's held-out evaluation."""
    models = model_routes.list_models(session, caller, settings).data
    return _page(request, "console/models.html", "models", models=[m.model_dump(mode="json") for m in models])


@router.get("/series", response_class=HTMLResponse)
def console_series(request: Request, session: SessionDep, caller: CallerDep) -> HTMLResponse:
    """Stored symbols: frequency, first and last bar, rows."""
    series = series_crud.list_symbols(session, tenant_id=caller.tenant_id)
    return _page(request, "console/series.html", "series", series=series)
