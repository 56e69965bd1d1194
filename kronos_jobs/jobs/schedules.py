"""Nightly multi-symbol forecasts: when a schedule is due, its runs, and their fan-out.

    tick(settings, now)        the beat's work, drivable directly by tests: create the run of every
                               schedule whose latest cron occurrence is due, fan it out, finish runs
                               whose forecast jobs have all ended
    trigger_run(...)           POST /v1/schedules/{id}/run: a run now (or for a given time)
    fan_out(settings, run_id)  the run reads each symbol's latest `lookback` bars from the series store
                               and submits forecast jobs in batches through jobs/submit.py
    refresh_run(session, run)  progress and final state from the run's jobs

Time policy: a schedule's cron has five fields and is evaluated in its IANA zone on the local wall
clock (croniter on naive local times, then localised with zoneinfo), so `0 18 * * 1-5` in
America/New_York runs at 18:00 New York time in summer and winter. On the spring-forward day a
wall time that does not exist (02:30) runs at the same offset after the jump (03:30); on the
fall-back day an ambiguous wall time runs once, at its first occurrence. Runs are keyed by the UTC
instant of the occurrence.

Catch-up policy: after downtime (beat stopped, schedule disabled), only the LATEST missed
occurrence runs, once, as soon as the beat is back; older missed occurrences are skipped.
Occurrences count only after the schedule's `anchor_at` (its creation, or the last edit of its
cron, zone or enabled flag), so creating or re-enabling a schedule never fires a past occurrence.

Exactly once: (schedule_id, scheduled_for) is unique in `schedule_runs`; the fan-out is claimed with
a conditional UPDATE and each batch's job carries the idempotency key `schedule-run:<run>:<batch>`,
so two beats, a manual trigger racing a tick, or a fan-out retried after a crash create one run and
one job per batch.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

from croniter import CroniterBadDateError, croniter
from sqlalchemy import or_, update
from sqlalchemy.orm import Session

from kronos_jobs.core.errors import IdempotencyConflict, InvalidRequest, KronosJobsError
from kronos_jobs.core.names import SOURCE_STORE, TERMINAL_STATES, JobKind, JobState, Queue, RunTrigger
from kronos_jobs.core.routing import choose_queue, slots_of
from kronos_jobs.core.settings import Settings
from kronos_jobs.core.workload import fanout_batch_size, workload_of
from kronos_jobs.crud import jobs as job_crud
from kronos_jobs.crud import schedules as crud
from kronos_jobs.crud import series as series_crud
from kronos_jobs.crud import workers as worker_crud
from kronos_jobs.db.models import Schedule, ScheduleRun, utcnow
from kronos_jobs.db.session import session_scope
from kronos_jobs.inputs.calendar import check_timezone
from kronos_jobs.inputs.checks import check_freq, check_symbol
from kronos_jobs.jobs.registry import resolve_model
from kronos_jobs.jobs.submit import ForecastParams, check_calendar, submit_forecast, validate_params

logger = logging.getLogger(__name__)

CRON_FIELDS = 5
CRON_MAX_YEARS_BETWEEN_RUNS = 5  # `0 0 29 2 *` (leap days) fires; `0 0 30 2 *` never does
FANOUT_STALL_SECONDS = 300  # a queued run whose fan-out made no progress for this long is taken over


# --- cron in a time zone ---------------------------------------------------------------------------


def check_cron(expression: Any, field: str = "cron") -> str:
    """A five-field cron expression (minute hour day month weekday); InvalidRequest otherwise."""
    text = " ".join(str(expression or "").split())
    if len(text.split(" ")) != CRON_FIELDS or not croniter.is_valid(text):
        raise InvalidRequest(f"{field}: {text[:64]!r} is not a five-field cron expression such as '0 18 * * 1-5'",
                             field=field)
    # A valid expression may still never fire (`0 0 30 2 *`: February 30th); such a schedule would
    # stall the beat looking for its next run, so it is refused here.
    try:
        croniter(text, datetime(2000, 1, 1), max_years_between_matches=CRON_MAX_YEARS_BETWEEN_RUNS).get_next(datetime)
    except (CroniterBadDateError, ValueError, OverflowError):
        raise InvalidRequest(f"{field}: {text!r} never fires (no occurrence within "
                             f"{CRON_MAX_YEARS_BETWEEN_RUNS} years)", field=field) from None
    return text


def _localise(wall: datetime, zone: ZoneInfo) -> datetime:
    # fold=0: an ambiguous wall time is its first occurrence; a nonexistent one keeps the offset
    # from before the jump, i.e. it lands just after the jump.
    return wall.replace(tzinfo=zone, fold=0).astimezone(timezone.utc)


def previous_occurrence(cron: str, zone_name: str, now: datetime) -> datetime:
    """The latest occurrence at or before `now` (UTC)."""
    zone = ZoneInfo(zone_name)
    wall = now.astimezone(zone).replace(tzinfo=None)
    it = croniter(cron, wall + timedelta(seconds=1))  # +1 s: an occurrence exactly at `now` counts
    while True:
        candidate = _localise(it.get_prev(datetime), zone)
        if candidate <= now:  # in a fall-back hour a wall time may map to an instant after `now`
            return candidate


def next_occurrence(cron: str, zone_name: str, now: datetime) -> datetime:
    """The first occurrence strictly after `now` (UTC)."""
    zone = ZoneInfo(zone_name)
    it = croniter(cron, now.astimezone(zone).replace(tzinfo=None))
    while True:
        candidate = _localise(it.get_next(datetime), zone)
        if candidate > now:
            return candidate


def due_occurrence(schedule: Schedule, now: datetime) -> datetime | None:
    """The occurrence to run now (the latest one after `anchor_at`), or None."""
    latest = previous_occurrence(schedule.cron, schedule.timezone, now)
    return latest if latest > schedule.anchor_at else None


# --- validation --------------------------------------------------------------------------------------

FORECAST_KEYS = ("lookback", "pred_len", "sampling", "quantiles")


def validate_schedule(session: Session, *, tenant_id: str, fields: dict[str, Any], now: datetime | None = None,
                      model_dirs: Sequence[Path] = ()) -> dict[str, Any]:
    """Check a whole schedule (after a PATCH is merged in) and return the columns to store.

    `fields`: name, cron, timezone, symbols (None = every stored symbol), freq, model, device,
    lookback, pred_len, sampling, quantiles, calendar, min_history, enabled. Every problem is an
    InvalidRequest naming the field. `model_dirs`: the roots a local model may live in (settings).
    """

    cron = check_cron(fields.get("cron"))
    zone = check_timezone(fields.get("timezone") or "UTC", "timezone")
    symbols = fields.get("symbols")
    if symbols is not None:
        if not symbols:
            raise InvalidRequest("symbols: give at least one symbol, or null for every stored symbol", field="symbols")
        symbols = list(dict.fromkeys(check_symbol(s, f"symbols[{i}]") for i, s in enumerate(symbols)))
    freq = check_freq(fields["freq"], "freq") if fields.get("freq") else None
    calendar = fields.get("calendar") or {}
    check_calendar(calendar)
    spec = resolve_model(fields["model"], session, tenant_id=tenant_id, model_dirs=model_dirs)
    params = ForecastParams.from_value({"model": fields["model"], "device": fields.get("device") or "auto",
                                        **{k: fields[k] for k in FORECAST_KEYS if fields.get(k) is not None}})
    validate_params(params, spec.max_context, [])
    min_history = fields.get("min_history")
    if min_history is not None and min_history < 2:
        raise InvalidRequest(f"min_history: must be >= 2, got {min_history}", field="min_history")
    forecast = params.to_json()
    return {
        "name": fields["name"], "cron": cron, "timezone": zone, "symbols": symbols, "freq": freq,
        "model": params.model, "device": forecast["device"], "calendar": calendar, "min_history": min_history,
        "enabled": bool(fields.get("enabled", True)),
        "params": {k: forecast[k] for k in FORECAST_KEYS},
        "next_run_at": next_occurrence(cron, zone, now or utcnow()),
    }


def schedule_fields(schedule: Schedule) -> dict[str, Any]:
    """A stored schedule in the flat form `validate_schedule` takes (and the API shows)."""
    params = schedule.params or {}
    return {"name": schedule.name, "cron": schedule.cron, "timezone": schedule.timezone, "symbols": schedule.symbols,
            "freq": schedule.freq, "model": schedule.model, "device": schedule.device,
            **{k: params.get(k) for k in FORECAST_KEYS}, "calendar": schedule.calendar or {},
            "min_history": schedule.min_history, "enabled": schedule.enabled}


def create_schedule(session: Session, *, tenant_id: str, fields: dict[str, Any],
                    model_dirs: Sequence[Path] = ()) -> Schedule:

    values = validate_schedule(session, tenant_id=tenant_id, fields=fields, model_dirs=model_dirs)
    return crud.create_schedule(session, tenant_id=tenant_id, **values)


def update_schedule(session: Session, *, tenant_id: str, schedule_id: str, changes: dict[str, Any],
                    model_dirs: Sequence[Path] = ()) -> Schedule:
    """Merge `changes` into the schedule, validate the whole, store. A new cron, zone or a
    re-enable moves `anchor_at` to now: occurrences before the edit never fire."""

    schedule = crud.get_schedule(session, tenant_id=tenant_id, schedule_id=schedule_id)
    before = schedule_fields(schedule)
    values = validate_schedule(session, tenant_id=tenant_id, fields={**before, **changes}, model_dirs=model_dirs)
    if any(values[k] != before[k] for k in ("cron", "timezone")) or (values["enabled"] and not before["enabled"]):
        values["anchor_at"] = utcnow()
    return crud.update_schedule(session, tenant_id=tenant_id, schedule_id=schedule_id, changes=values)


# --- the beat's tick ---------------------------------------------------------------------------------


def tick(settings: Settings, now: datetime | None = None) -> list[str]:
    """Create and fan out the due runs, finish ended runs; returns the ids of runs created now."""
    now = (now or utcnow()).astimezone(timezone.utc)
    created: list[str] = []
    with session_scope(settings) as session:
        for schedule in crud.list_schedules(session, enabled=True):
            try:
                due = due_occurrence(schedule, now)
                upcoming = next_occurrence(schedule.cron, schedule.timezone, now)
            except (CroniterBadDateError, ValueError) as exc:  # stored before check_cron refused such crons
                logger.warning("schedule %s (%s): cron %r has no occurrence (%s); skipped", schedule.id, schedule.name,
                               schedule.cron, exc)
                continue
            if schedule.next_run_at != upcoming:
                schedule.next_run_at = upcoming
            if due is None:
                continue
            run, is_new = crud.create_run(session, schedule=schedule, scheduled_for=due, trigger=RunTrigger.SCHEDULE)
            schedule.anchor_at = max(schedule.anchor_at, due)
            if is_new:
                created.append(run.id)
                logger.info("schedule %s (%s): run %s for %s", schedule.id, schedule.name, run.id, due.isoformat())
    for run_id in created:
        fan_out(settings, run_id)
    _advance_runs(settings, now)
    return created


def trigger_run(settings: Settings, *, tenant_id: str, schedule_id: str,
                scheduled_for: datetime | None = None) -> tuple[ScheduleRun, bool]:
    """A manual run (now, to the second, unless `scheduled_for` is given); (run, created). The fan-out
    is left to the caller (`fan_out`), so the API can answer before it finishes."""

    when = (scheduled_for or utcnow()).astimezone(timezone.utc).replace(microsecond=0)
    with session_scope(settings) as session:
        schedule = crud.get_schedule(session, tenant_id=tenant_id, schedule_id=schedule_id)
        run, created = crud.create_run(session, schedule=schedule, scheduled_for=when, trigger=RunTrigger.MANUAL)
        session.expunge(run)
    return run, created


def _advance_runs(settings: Settings, now: datetime) -> None:
    stalled: list[str] = []
    with session_scope(settings) as session:
        for run in crud.active_runs(session):
            if run.state == JobState.RUNNING.value:
                refresh_run(session, run, persist=True)
            elif run.started_at is None or run.updated_at < now - timedelta(seconds=FANOUT_STALL_SECONDS):
                stalled.append(run.id)  # never fanned out (its process died before), or died midway
    for run_id in stalled:
        fan_out(settings, run_id, now=now)


# --- fan-out -----------------------------------------------------------------------------------------


def _claim_fanout(settings: Settings, run_id: str, now: datetime) -> bool:
    stale = now - timedelta(seconds=FANOUT_STALL_SECONDS)
    with session_scope(settings) as session:
        result = session.execute(
            update(ScheduleRun)
            .where(ScheduleRun.id == run_id, ScheduleRun.state == JobState.QUEUED.value,
                   or_(ScheduleRun.started_at.is_(None), ScheduleRun.updated_at < stale))
            .values(started_at=now, updated_at=now))
        return (result.rowcount or 0) == 1


def _universe(session: Session, schedule: Schedule, lookback: int) -> tuple[list[tuple[str, str]], list[dict]]:
    """(symbol, freq) keys to forecast, and per-symbol errors (not stored, too little history...)."""

    stored = series_crud.list_symbols(session, tenant_id=schedule.tenant_id, freq=schedule.freq,
                                      symbols=schedule.symbols)
    by_symbol: dict[str, list[dict]] = {}
    for entry in stored:
        by_symbol.setdefault(entry["symbol"], []).append(entry)
    wanted = list(schedule.symbols) if schedule.symbols is not None else list(by_symbol)
    need = schedule.min_history or lookback
    keys, errors = [], []
    for symbol in wanted:
        entries = by_symbol.get(symbol, [])
        if not entries:
            where = f" at freq {schedule.freq!r}" if schedule.freq else ""
            errors.append(_error(symbol, "not_in_store", f"no stored bars{where}"))
        elif len(entries) > 1:
            freqs = ", ".join(e["freq"] for e in entries)
            errors.append(_error(symbol, "ambiguous_freq", f"stored at several frequencies ({freqs}); set the schedule's freq"))
        elif entries[0]["rows"] < need:
            errors.append(_error(symbol, "too_little_history",
                                 f"{entries[0]['rows']} stored bar(s), the schedule needs {need} (min_history, default lookback)"))
        else:
            keys.append((symbol, entries[0]["freq"]))
    return keys, errors


def _error(symbol: str, code: str, message: str) -> dict[str, str]:
    return {"symbol": symbol, "code": code, "message": message}


def forecast_request(schedule: Schedule, freqs: dict[str, str]) -> dict[str, Any]:
    """The schedule as a forecast job's parameters (jobs/submit.ForecastParams form)."""
    params = dict(schedule.params or {})
    return {"model": schedule.model, "device": schedule.device, "lookback": params.get("lookback", 400),
            "pred_len": params.get("pred_len", 24), "sampling": params.get("sampling") or {},
            "quantiles": params.get("quantiles"), "freq": freqs, "calendar": schedule.calendar or {}}


def fanout_plan(session: Session, settings: Settings, schedule: Schedule, n_symbols: int) -> dict[str, Any]:
    """Symbols per job for a run of `n_symbols`: spread over every live worker slot of the queue the
    jobs will go to, at most KRONOS_SCHEDULE_BATCH_SYMBOLS per job (..._GPU on the GPU queue, whose
    workers also cut bigger chunks by their measured pace). With KRONOS_QUEUE_POLICY=fifo: the fixed
    batch, as before priorities."""
    live = worker_crud.live_workers(session, stale_seconds=settings.worker_stale_seconds)
    queue, _ = choose_queue(JobKind.FORECAST, schedule.device, live)
    slots = slots_of(queue, live)
    max_batch = settings.schedule_batch_symbols_gpu if queue is Queue.FORECAST_GPU else settings.schedule_batch_symbols
    if settings.queue_policy == "fifo":
        size = settings.schedule_batch_symbols
    else:
        size = fanout_batch_size(n_symbols, slots, max_batch)
    return {"batch_symbols": size, "fanout": {"queue": queue.value, "live_slots": slots, "max_batch": max_batch}}


def fan_out(settings: Settings, run_id: str, *, now: datetime | None = None) -> ScheduleRun | None:
    """Read the universe's latest bars batch by batch and submit one forecast job per batch.

    Returns the run, or None when another process holds the fan-out. Each batch touches the run's
    `updated_at`; a fan-out that dies leaves the run queued, and the first tick FANOUT_STALL_SECONDS
    after its last batch retries it, the idempotency keys returning the jobs already submitted.
    """

    now = now or utcnow()
    if not _claim_fanout(settings, run_id, now):
        return None
    t0 = time.perf_counter()
    with session_scope(settings) as session:
        run = session.get(ScheduleRun, run_id)
        schedule = session.get(Schedule, run.schedule_id)
        session.expunge(schedule)
        lookback = int((schedule.params or {}).get("lookback", 400))
        if "universe" in (run.detail or {}):  # a retried fan-out keeps its batches (and job keys) as they were
            keys, errors = [tuple(k) for k in run.detail["universe"]], [e for e in run.symbol_errors if not e.get("job_id")]
        else:
            keys, errors = _universe(session, schedule, lookback)
            run.detail = {**(run.detail or {}), "universe": [list(k) for k in keys],
                          **fanout_plan(session, settings, schedule, len(keys))}
        run.progress_total, run.progress_done, run.symbol_errors = len(keys) + len(errors), len(errors), errors
        size = int(run.detail["batch_symbols"])
    read_seconds = submit_seconds = 0.0
    try:
        for batch, start in enumerate(range(0, len(keys), size)):
            chunk = keys[start:start + size]
            with session_scope(settings) as session:
                started = time.perf_counter()
                bars = series_crud.latest_bars(session, tenant_id=schedule.tenant_id, keys=chunk, lookback=lookback)
                read_seconds += time.perf_counter() - started
                started = time.perf_counter()
                job_id = _submit_batch(session, settings, schedule, run_id, batch, bars, submit_forecast)
                run = session.get(ScheduleRun, run_id)
                crud.link_job(session, run=run, batch=batch, job_id=job_id)
                run.updated_at = utcnow()  # the fan-out's heartbeat: a stalled one is taken over
                submit_seconds += time.perf_counter() - started
    except KronosJobsError as exc:  # e.g. the model was retired since the schedule was written
        return _fail(settings, run_id, {"code": exc.code, "message": exc.message})
    with session_scope(settings) as session:
        run = session.get(ScheduleRun, run_id)
        run.state = JobState.RUNNING.value
        detail = {k: v for k, v in (run.detail or {}).items() if k != "universe"}
        run.detail = {**detail, "batches": -(-len(keys) // size) if keys else 0,
                      "timings": {"fanout_seconds": round(time.perf_counter() - t0, 6),
                                  "store_read_seconds": round(read_seconds, 6),
                                  "submit_seconds": round(submit_seconds, 6)}}
        refresh_run(session, run, persist=True)
        session.flush()
        session.expunge(run)
    logger.info("schedule run %s: %d symbol(s) in %d batch(es), %d error(s), fan-out %.3fs", run_id, len(keys),
                run.detail["batches"], len(errors), time.perf_counter() - t0)
    return run


def _submit_batch(session: Session, settings: Settings, schedule: Schedule, run_id: str, batch: int,
                  bars, submit_forecast) -> str:

    firsts = bars.drop_duplicates("symbol")
    freqs = dict(zip(firsts["symbol"].tolist(), firsts["freq"].tolist()))
    key = f"schedule-run:{run_id}:{batch}"
    try:
        job = submit_forecast(session, settings, tenant_id=schedule.tenant_id, request=forecast_request(schedule, freqs),
                              bars=bars.drop(columns="freq"), future=None, source=SOURCE_STORE, idempotency_key=key,
                              workload=workload_of(JobKind.FORECAST, scheduled=True))
    except IdempotencyConflict:  # a retried fan-out after new bars arrived: the first job stands
        session.rollback()
        job = job_crud.find_by_idempotency_key(session, tenant_id=schedule.tenant_id, key=key)
    return job.id


def _fail(settings: Settings, run_id: str, error: dict[str, Any]) -> ScheduleRun:
    with session_scope(settings) as session:
        run = session.get(ScheduleRun, run_id)
        run.state, run.error, run.finished_at = JobState.FAILED.value, error, utcnow()
        session.flush()
        session.expunge(run)
    logger.warning("schedule run %s failed: %s", run_id, error["message"])
    return run


# --- progress and outcome -----------------------------------------------------------------------------


def refresh_run(session: Session, run: ScheduleRun, *, persist: bool = False) -> dict[str, Any]:
    """Progress and state of a running run from its jobs; stores the final state when `persist`."""

    jobs = crud.run_jobs(session, run_id=run.id)
    fanout_errors = [e for e in (run.symbol_errors or []) if not e.get("job_id")]
    done, errors, failed = len(fanout_errors), list(fanout_errors), len(fanout_errors)
    for job in jobs:
        n = int((job.params or {}).get("n_series", job.progress_total))
        terminal = JobState(job.state) in TERMINAL_STATES
        done += n if terminal else min(job.progress_done, n)
        job_errors = [{**e, "job_id": job.id} for e in job.symbol_errors or []]
        errors += job_errors
        if job.state in (JobState.FAILED.value, JobState.CANCELLED.value):
            failed += n
            if not job_errors:  # the whole job failed (model load, cancel): say so once
                errors.append({"symbol": None, "code": (job.error or {}).get("code", job.state),
                               "message": f"{n} symbol(s) of job {job.id}: {(job.error or {}).get('message', job.state)}",
                               "job_id": job.id})
        else:
            failed += len(job_errors)
    view = {"done": done, "total": run.progress_total, "errors": errors, "job_ids": [j.id for j in jobs],
            "state": run.state}
    if run.state == JobState.RUNNING.value and all(JobState(j.state) in TERMINAL_STATES for j in jobs):
        total = run.progress_total
        state = (JobState.SUCCEEDED if failed == 0 else
                 JobState.PARTIALLY_SUCCEEDED if failed < total else JobState.FAILED)
        view["state"] = state.value
        if persist:
            run.state, run.finished_at = state.value, utcnow()
            run.error = None if failed == 0 else {"code": "some_symbols_failed" if failed < total else "all_symbols_failed",
                                                  "message": f"{failed} of {total} symbol(s) failed"}
    if persist:
        run.progress_done, run.symbol_errors = min(done, run.progress_total), errors
    return view
