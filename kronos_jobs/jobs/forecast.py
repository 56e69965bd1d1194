"""The forecast job lifecycle, owned in one place (like arq's `run_job`/`finish_job`).

`run_forecast_job` claims the job's lease, heartbeats it, runs the series through the predictor in
chunks, checks for cancellation between chunks, and writes results, execution metadata and the final
state in ONE transaction. A second delivery of the same job (at-least-once broker) finds the lease
held or the job finished and stops quietly (LeaseLost); a delivery after the lease expired (its
worker died) takes over. `requeue_stale_jobs` re-sends tasks a broker lost.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import random
import socket
import threading
import time
import traceback
import uuid
from typing import Any

import pandas as pd
from sqlalchemy.exc import DBAPIError

from kronos_jobs.db.models import utcnow
from kronos_jobs.db.session import session_scope
from kronos_jobs.errors import JobCancelled, JobFailure, LeaseLost, TransientJobError
from kronos_jobs.jobs.series import SeriesInput, build_inputs, result_rows, rows_frame
from kronos_jobs.jobs.submit import ForecastParams, send_job
from kronos_jobs.names import JobState
from kronos_jobs.settings import Settings

logger = logging.getLogger(__name__)


class LeaseHeld(LeaseLost):
    """Another delivery holds a live lease on the running job. If its worker died (SIGKILL, OOM),
    the lease lapses in `retry_after` seconds and this delivery should try again then."""

    def __init__(self, message: str, *, retry_after: float):
        super().__init__(message)
        self.retry_after = retry_after


def _raise_if_held(job_id: str, settings: Settings, exc: LeaseLost) -> None:
    from kronos_jobs.db.models import Job

    with session_scope(settings) as session:
        job = session.get(Job, job_id)
        if job is not None and job.state == JobState.RUNNING.value and job.lease_expires_at is not None:
            remaining = (job.lease_expires_at - utcnow()).total_seconds()
            raise LeaseHeld(str(exc), retry_after=max(0.0, remaining)) from exc


class LeaseHeartbeat(threading.Thread):
    """Renews the job's lease every `heartbeat_seconds` until stopped; notices when it is lost."""

    def __init__(self, settings: Settings, job_id: str, owner: str):
        super().__init__(name=f"lease-{job_id[:8]}", daemon=True)
        self.settings, self.job_id, self.owner = settings, job_id, owner
        self._stop_event = threading.Event()
        self.lost = False

    def run(self) -> None:
        from kronos_jobs.crud import jobs as job_crud

        while not self._stop_event.wait(self.settings.heartbeat_seconds):
            try:
                with session_scope(self.settings) as session:
                    held = job_crud.renew_lease(session, job_id=self.job_id, owner=self.owner,
                                                lease_seconds=self.settings.lease_seconds)
            except Exception as exc:  # a DB hiccup: the lease has slack for a missed beat or two
                logger.warning("job %s: lease renewal failed (%s); retrying", self.job_id, exc)
                continue
            if not held:
                self.lost = True
                return

    def stop(self) -> None:
        self._stop_event.set()
        if self.is_alive() and self is not threading.current_thread():
            self.join(timeout=5)


@dataclasses.dataclass
class _Run:
    """What one delivery knows about its job while it runs."""

    job_id: str
    owner: str
    tenant_id: str
    params: ForecastParams
    queue: str
    device_requested: str
    attempt: int
    queued_at: Any
    started_at: Any
    t0: float

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0


def _log(run: _Run, state: JobState | str, extra: str = "") -> None:
    state = JobState(state).value if isinstance(state, JobState) else state
    logger.info("job %s %s elapsed=%.3fs%s", run.job_id, state, run.elapsed(), f" {extra}" if extra else "")


def run_forecast_job(job_id: str, *, settings: Settings) -> JobState | None:
    """Run one delivery of a forecast job; the final state, or None when this delivery did nothing.

    Raises LeaseLost (another delivery owns the job: stop quietly) and transient errors (database or
    broker down: the task retries). Every other outcome is recorded on the job before returning.
    """
    from kronos_jobs.crud import jobs as job_crud, results as result_crud

    owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
    t0 = time.perf_counter()
    # --- claim --------------------------------------------------------------------------------
    try:
        with session_scope(settings) as session:
            job = job_crud.claim_job(session, job_id=job_id, owner=owner, lease_seconds=settings.lease_seconds)
            job_input = result_crud.load_job_input(session, job_id=job_id)  # same transaction: one round trip less
            run = _Run(job_id=job.id, owner=owner, tenant_id=job.tenant_id,
                       params=ForecastParams.from_value({k: v for k, v in job.params.items()
                                                         if k not in ("source", "n_series")}),
                       queue=job.queue, device_requested=job.device_requested, attempt=job.attempts,
                       queued_at=job.created_at, started_at=job.started_at, t0=t0)
    except JobCancelled:
        logger.info("job %s cancelled elapsed=%.3fs (before it started)", job_id, time.perf_counter() - t0)
        return JobState.CANCELLED
    except LeaseLost as exc:
        _raise_if_held(job_id, settings, exc)
        raise
    _log(run, JobState.RUNNING, f"attempt={run.attempt} owner={owner}")

    heartbeat = LeaseHeartbeat(settings, job_id, owner)
    heartbeat.start()
    try:
        return _execute(run, settings, heartbeat, job_input)
    finally:
        heartbeat.stop()


# Errors worth a retry with backoff: the job itself is fine, something it talks to hiccupped.
def _transient_types() -> tuple[type[BaseException], ...]:
    from kombu.exceptions import OperationalError as BrokerOperationalError
    from sqlalchemy.exc import InterfaceError, OperationalError

    types: list[type[BaseException]] = [TransientJobError, OperationalError, InterfaceError, BrokerOperationalError]
    try:
        from redis.exceptions import ConnectionError as RedisConnectionError, TimeoutError as RedisTimeoutError

        types += [RedisConnectionError, RedisTimeoutError]
    except ImportError:  # redis is optional on the embedded default
        pass
    return tuple(types)


TRANSIENT_ERRORS = _transient_types()


def _is_transient(exc: BaseException) -> bool:
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, TRANSIENT_ERRORS)


def _execute(run: _Run, settings: Settings, heartbeat: LeaseHeartbeat, job_input: tuple) -> JobState:
    from celery.exceptions import SoftTimeLimitExceeded

    if run.attempt > settings.max_retries + 1:
        # Each delivery that claimed the job counts; a job that keeps killing its worker (OOM,
        # segfault, hard time limit) must end instead of looping through redeliveries.
        return _finish(run, settings, JobState.FAILED, error={
            "code": "too_many_attempts",
            "message": f"gave up after {run.attempt - 1} deliveries that did not finish "
                       f"(worker lost, killed or timed out); KRONOS_MAX_RETRIES is {settings.max_retries}"})
    meta: dict[str, Any] = {}
    try:
        return _forecast(run, settings, heartbeat, job_input, meta)
    except JobCancelled:
        return _finish(run, settings, JobState.CANCELLED, meta=meta, rows=_EMPTY,
                       error={"code": "cancelled", "message": "cancelled by request while running"})
    except SoftTimeLimitExceeded:
        return _finish(run, settings, JobState.FAILED, meta=meta, rows=_EMPTY, error={
            "code": "time_limit", "message": f"the forecast exceeded its {settings.forecast_soft_time_limit} s soft time limit"})
    except LeaseLost:
        raise
    except Exception as exc:
        if _is_transient(exc):
            _release_lease(run, settings)
            raise
        code = getattr(exc, "code", "internal_error") if isinstance(exc, JobFailure) else "internal_error"
        logger.error("job %s failed: %s\n%s", run.job_id, exc, traceback.format_exc())
        return _finish(run, settings, JobState.FAILED, meta=meta, rows=_EMPTY,
                       error={"code": code, "message": f"{type(exc).__name__}: {exc}"})


_EMPTY = object()  # "write an empty result": a cancelled or failed job keeps no rows


def _forecast(run: _Run, settings: Settings, heartbeat: LeaseHeartbeat, job_input: tuple,
              meta: dict[str, Any]) -> JobState:
    from kronos_jobs import model_cache
    from kronos_jobs.crud import jobs as job_crud
    from kronos_jobs.registry import resolve_model
    from kronos_jobs.worker import current_identity

    params = run.params
    identity = current_identity(settings)
    seed = params.sampling.seed if params.sampling.seed is not None else random.SystemRandom().randrange(2**31)
    meta.update(identity.job_metadata())
    meta.update(device_requested=run.device_requested, queue=run.queue, attempt=run.attempt, seed=seed,
                sampling=dataclasses.asdict(params.sampling) | {"seed": seed}, quantiles=params.quantiles,
                lookback=params.lookback, pred_len=params.pred_len)

    # --- input and model ------------------------------------------------------------------------
    bars, future = job_input
    if _needs_session(params.model):
        with session_scope(settings) as session:
            spec = resolve_model(params.model, session, tenant_id=run.tenant_id)
    else:
        spec = resolve_model(params.model)
    inputs, symbol_errors = build_inputs(bars, future, params)
    total = len(inputs) + len(symbol_errors)
    entry, cached = model_cache.get_predictor(spec, identity.device, settings)
    meta.update(spec.metadata())
    meta.update(model_checksum=entry.model_checksum, tokenizer_checksum=entry.tokenizer_checksum,
                dtype=entry.dtype, model_cached=cached)
    model_load_seconds = 0.0 if cached else entry.load_seconds

    # --- chunks -----------------------------------------------------------------------------------
    prepare_seconds = run.elapsed()  # claim, input, series, model lookup (or load)
    parts: list[dict[str, Any]] = []
    done, inference_seconds = len(symbol_errors), 0.0
    size = settings.max_batch_size
    for index in range(0, len(inputs), size):
        if heartbeat.lost:
            raise LeaseLost(f"job {run.job_id}: lease lost while running")
        chunk = inputs[index:index + size]
        started = time.perf_counter()
        outputs, errors = _predict_chunk(entry.predictor, chunk, params, seed + index // size)
        inference_seconds += time.perf_counter() - started
        parts += [result_rows(item, out, params.quantiles) for item, out in outputs]
        symbol_errors += errors
        done += len(chunk)
        if done < total:  # the last boundary's progress and cancel check ride in the finish transaction
            with session_scope(settings) as session:
                cancel = job_crud.update_progress(session, job_id=run.job_id, owner=run.owner, done=done, total=total)
            if cancel:
                raise JobCancelled(f"job {run.job_id} cancelled after {done}/{total} series")

    # --- classify and finish ------------------------------------------------------------------------
    meta["timings"] = {"prepare_seconds": round(prepare_seconds, 6), "model_load_seconds": round(model_load_seconds, 6),
                       "inference_seconds": round(inference_seconds, 6)}
    succeeded = total - len(symbol_errors)
    if succeeded == total:
        state, error = JobState.SUCCEEDED, None
    elif succeeded > 0:
        state = JobState.PARTIALLY_SUCCEEDED
        error = {"code": "some_series_failed", "message": f"{len(symbol_errors)} of {total} series failed"}
    else:
        state = JobState.FAILED
        first = symbol_errors[0] if symbol_errors else {"message": "no series"}
        error = {"code": "all_series_failed", "message": f"all {total} series failed; first: {first['message']}"}
    rows = rows_frame(parts) if parts else _EMPTY
    return _finish(run, settings, state, meta=meta, rows=rows, error=error, symbol_errors=symbol_errors,
                   progress=(total, total))


def _needs_session(model: str) -> bool:
    """Only fine-tuned ids live in the database; published, random and local models do not."""
    from kronos_jobs.registry import PUBLISHED_MODELS, RANDOM_PREFIX

    return not (model in PUBLISHED_MODELS or model.startswith(RANDOM_PREFIX) or os.path.isdir(model))


def _predict_chunk(predictor, chunk: list[SeriesInput], params: ForecastParams, seed: int):
    """Run one chunk; a ValueError from one bad series is isolated by re-running the series alone."""
    s = params.sampling
    kwargs = dict(pred_len=params.pred_len, T=s.temperature, top_k=s.top_k, top_p=s.top_p,
                  sample_count=s.sample_count, seed=seed, quantiles=params.quantiles or None)

    def call(items: list[SeriesInput]):
        return predictor.predict_batch([i.context for i in items], [i.x_timestamp for i in items],
                                       [i.y_timestamp for i in items], **kwargs)

    try:
        return list(zip(chunk, call(chunk))), []
    except ValueError as exc:
        if len(chunk) == 1:
            return [], [{"symbol": chunk[0].symbol, "code": "predictor_rejected", "message": str(exc)}]
    outputs, errors = [], []
    for item in chunk:
        one_out, one_err = _predict_chunk(predictor, [item], params, seed)
        outputs += one_out
        errors += one_err
    return outputs, errors


def _finish(run: _Run, settings: Settings, state: JobState, *, meta: dict[str, Any] | None = None,
            rows: Any = None, error: dict[str, Any] | None = None,
            symbol_errors: list[dict[str, Any]] | None = None, progress: tuple[int, int] | None = None) -> JobState:
    """Results, metadata and the final state in ONE transaction (only while we hold the lease).

    With `progress` (done, total), the last progress update and its cancel check happen in the same
    transaction: a cancel that arrived during the last chunk rolls it back (JobCancelled)."""
    from kronos_jobs.crud import jobs as job_crud, results as result_crud

    meta = dict(meta or {})
    finished_at = utcnow()
    meta.setdefault("timings", {}).update(
        queued_at=run.queued_at.isoformat() if run.queued_at else None,
        started_at=run.started_at.isoformat() if run.started_at else None,
        finished_at=finished_at.isoformat(), elapsed_seconds=round(run.elapsed(), 6))
    with session_scope(settings) as session:
        if progress is not None and job_crud.update_progress(session, job_id=run.job_id, owner=run.owner,
                                                             done=progress[0], total=progress[1]):
            raise JobCancelled(f"job {run.job_id} cancelled during its last chunk")
        if rows is not None:
            frame = _empty_rows() if rows is _EMPTY else rows
            result_crud.write_forecasts(session, job_id=run.job_id, tenant_id=run.tenant_id, rows=frame)
        job_crud.finish_job(session, job_id=run.job_id, owner=run.owner, state=state, error=error,
                            symbol_errors=symbol_errors or [], execution_metadata=meta)
    _log(run, state, f"errors={len(symbol_errors or [])}" + (f" code={error['code']}" if error else ""))
    return state


def _empty_rows() -> pd.DataFrame:
    from kronos_jobs.names import RESULT_COLUMNS

    return pd.DataFrame(columns=[*RESULT_COLUMNS, "step"])


def _release_lease(run: _Run, settings: Settings) -> None:
    """Best effort: let the retry of a transient failure claim the job at once instead of waiting."""
    from kronos_jobs.crud import jobs as job_crud

    try:
        with session_scope(settings) as session:
            job_crud.renew_lease(session, job_id=run.job_id, owner=run.owner, lease_seconds=0)
    except Exception as exc:  # the database is what failed; the lease lapses on its own
        logger.warning("job %s: could not release the lease (%s); it lapses in %s s",
                       run.job_id, exc, settings.lease_seconds)


# --- the reconciler ------------------------------------------------------------------------------


def requeue_stale_jobs(session, settings: Settings, *, queued_older_than: float | None = None) -> list[str]:
    """Re-send tasks for queued jobs untouched for a while and running jobs whose lease lapsed.

    A broker can lose messages (Redis without AOF, a whole filesystem-broker worker killed after it
    took the message). A duplicate message is harmless: the lease lets one delivery run the job and
    the others stop quietly. Returns the re-sent job ids (the caller commits the touch).
    """
    from kronos_jobs.crud import jobs as job_crud

    older = queued_older_than if queued_older_than is not None else 10 * settings.lease_seconds
    jobs = job_crud.stale_queued_jobs(session, older_than_seconds=older)
    jobs += job_crud.expired_running_jobs(session)
    sent = []
    for job in jobs:
        try:
            send_job(settings, job.id, job.queue)
            sent.append(job.id)
        except Exception as exc:
            logger.warning("reconciler: could not re-send job %s (%s)", job.id, exc)
    job_crud.touch_jobs(session, job_ids=sent)
    if sent:
        logger.info("reconciler: re-sent %d job(s): %s", len(sent), ", ".join(sent[:20]))
    return sent
