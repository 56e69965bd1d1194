"""The forecast job lifecycle, owned in one place (like arq's `run_job`/`finish_job`).

`run_forecast_job` claims the job's lease, heartbeats it, runs the series through the predictor in
chunks, checks for cancellation between decode steps (`CancelFlag`, at most one database read per
KRONOS_CANCEL_CHECK_SECONDS) and between chunks, and writes results, execution metadata and the final
state in ONE transaction. A cancelled job keeps the rows of the chunks that finished before it.

A bulk job (core/workload.py) runs one chunk of about KRONOS_BULK_CHUNK_SECONDS of model time per
delivery, sized by this worker's measured cost (jobs/pace.py): the chunk's rows go to
`job_chunks`, the job yields (still `running` for its user, no owner: crud.jobs.yield_job) and its
task is sent again at the job's priority, so an interactive job queued meanwhile takes the worker
first. The last chunk's delivery writes every chunk's rows, the metadata and the final state in
the one finish transaction. A bulk claim over the tenant's KRONOS_TENANT_BULK_LIMIT sends the task
again after a pause instead (TenantBusy): the job waits, it does not fail.

A forecast a person POSTed with more series than one predictor batch may instead be split, on its
first delivery, into part jobs over the live worker slots (jobs/parts.py); each part then runs
here like any job, and the last one to end settles its parent.

A second delivery of the same job (at-least-once broker) finds the lease held or the job finished
and stops (jobs/lease.py); a delivery after the lease expired (its worker died) takes over. Jobs
whose messages were lost are re-sent by jobs/recovery.py.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from kronos_jobs.core.errors import JobCancelled, LeaseLost, TenantBusy
from kronos_jobs.core.identity import WorkerIdentity
from kronos_jobs.core.names import RESULT_COLUMNS, JobState
from kronos_jobs.core.settings import Settings
from kronos_jobs.core.workload import Workload, chunk_series
from kronos_jobs.crud import chunks as chunk_crud
from kronos_jobs.crud import jobs as job_crud
from kronos_jobs.crud import parts as part_crud
from kronos_jobs.crud import results as result_crud
from kronos_jobs.db.models import utcnow
from kronos_jobs.db.session import session_scope
from kronos_jobs.jobs import pace
from kronos_jobs.jobs import parts as job_parts
from kronos_jobs.jobs.lease import TRANSIENT_ERRORS, LeaseHeartbeat, raise_if_held
from kronos_jobs.jobs.lifecycle import Delivery, new_owner, plan_claim, run_delivery
from kronos_jobs.jobs.registry import PUBLISHED_MODELS, RANDOM_PREFIX, local_model_dir, resolve_model
from kronos_jobs.jobs.series import SeriesInput, build_inputs, result_rows, rows_frame, series_outcome
from kronos_jobs.jobs.submit import ForecastParams, send_job

__all__ = ["run_forecast_job"]

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class _Run(Delivery):
    params: ForecastParams
    parts: list[dict[str, Any]] = dataclasses.field(default_factory=list)  # finished series' result rows
    priority: int = 6
    workload: str = Workload.INTERACTIVE.value
    bulk: bool = False  # one chunk per delivery, then yield (module docstring)
    start: int = 0  # a bulk delivery's first symbol (the chunks before it are stored)
    wait_seconds: float = 0.0  # this delivery's time on the queue
    first_wait_seconds: float | None = None  # the job's: submit -> first claim
    stored_params: dict[str, Any] = dataclasses.field(default_factory=dict)  # the job's params as stored
    parent_id: str | None = None  # a part of a split job (jobs/parts.py)
    offset: int = 0  # a part's first series within its parent: its batches draw the parent's seeds


class CancelFlag:
    """`should_stop` for the decode loop: whether the job's cancel was requested, read from the
    database at most once per `every` seconds (between reads the last answer stands)."""

    def __init__(self, settings: Settings, job_id: str, every: float):
        self.settings, self.job_id, self.every = settings, job_id, every
        self._next_read = time.monotonic() + every
        self.raised = False

    def __call__(self) -> bool:
        if not self.raised and time.monotonic() >= self._next_read:
            try:
                with session_scope(self.settings, autocommit=True) as session:
                    self.raised = job_crud.cancel_requested(session, job_id=self.job_id)
            except TRANSIENT_ERRORS as exc:  # a blip must not fail the forecast; the chunk boundary checks again
                logger.warning("job %s: cancel check failed (%s)", self.job_id, exc)
            self._next_read = time.monotonic() + self.every
        return self.raised


def _log(run: _Run, state: JobState | str, extra: str = "") -> None:
    state = JobState(state).value if isinstance(state, JobState) else state
    logger.info("job %s %s elapsed=%.3fs%s", run.job_id, state, run.elapsed(), f" {extra}" if extra else "")


def run_forecast_job(job_id: str, *, settings: Settings, identity: WorkerIdentity,
                     start: int | None = None) -> JobState | None:
    """Run one delivery of a forecast job on the worker `identity` (its resolved device included);
    the final state (`running` after a bulk chunk), or None when this delivery did nothing.

    `start`: the bulk chunk the message was sent for; a message for a chunk the job has already
    passed is a duplicate and does nothing (lifecycle.plan_claim).

    Raises LeaseLost (another delivery owns the job: stop quietly) and transient errors (database or
    broker down: the task retries). Every other outcome is recorded on the job before returning.
    """

    owner = new_owner()
    t0 = time.perf_counter()
    # --- claim --------------------------------------------------------------------------------
    plan = plan_claim(settings, job_id, start)
    if plan is None:
        return None
    context, wait, bulk, limit = plan.context, plan.wait_seconds, plan.bulk, plan.bulk_limit
    try:
        # The claim is one conditional UPDATE, atomic on its own: run it without a transaction
        # around it (no BEGIN/COMMIT round trips), except for a bulk claim under a tenant limit,
        # which holds the tenant's lock while it counts. The input is read first, as the job's own
        # immutable data, so a failure to read it leaves the job unclaimed as before.
        with session_scope(settings, autocommit=limit is None) as session:
            if limit is not None:
                job_crud.lock_tenant(session, tenant_id=context.tenant_id)
            job_input = result_crud.load_job_input(session, job_id=job_id)
            job = job_crud.claim_job(session, job_id=job_id, owner=owner, lease_seconds=settings.lease_seconds,
                                     wait_seconds=wait, bulk_limit=limit)
            run = _Run(job_id=job.id, owner=owner, tenant_id=job.tenant_id,
                       params=ForecastParams.from_value({k: v for k, v in job.params.items()
                                                         if k not in ("source", "n_series", job_parts.PART_OFFSET)}),
                       stored_params=dict(job.params), parent_id=job.parent_id,
                       offset=int(job.params.get(job_parts.PART_OFFSET, 0)),
                       queue=job.queue, device_requested=job.device_requested, attempt=job.attempts,
                       queued_at=job.created_at, started_at=job.started_at, t0=t0, priority=job.priority,
                       workload=job.workload, bulk=bulk, start=chunk_crud.next_start(session, job_id=job_id) if bulk else 0,
                       wait_seconds=wait, first_wait_seconds=job.queue_wait_seconds)
    except JobCancelled:
        with session_scope(settings) as session:
            chunk_crud.delete_chunks(session, job_id=job_id)
        logger.info("job %s cancelled elapsed=%.3fs (before it started)", job_id, time.perf_counter() - t0)
        if context.parent_id:
            _settle_parent(settings, context.parent_id)
        return JobState.CANCELLED
    except TenantBusy as exc:
        # Not a failure: the job stays where it was and comes back once one of the tenant's
        # chunks (about KRONOS_BULK_CHUNK_SECONDS each) has ended; jitter spreads the retries.
        countdown = settings.bulk_chunk_seconds * random.uniform(1.0, 2.0)
        send_job(settings, job_id, context.queue, priority=context.priority, countdown=countdown, start=start)
        logger.info("job %s waits: %s; sent again in %.1f s", job_id, exc, countdown)
        return None
    except LeaseLost as exc:
        raise_if_held(job_id, settings, exc)
        raise
    _log(run, JobState.RUNNING, f"attempt={run.attempt} owner={owner}")

    heartbeat = LeaseHeartbeat(settings, job_id, owner)
    heartbeat.start()
    try:
        return _execute(run, settings, heartbeat, job_input, identity)
    finally:
        heartbeat.stop()


def _execute(run: _Run, settings: Settings, heartbeat: LeaseHeartbeat, job_input: tuple,
             identity: WorkerIdentity) -> JobState:
    meta: dict[str, Any] = {}
    return run_delivery(
        run, settings, lambda: _forecast(run, settings, heartbeat, job_input, meta, identity),
        fail=lambda error: _finish(run, settings, JobState.FAILED, meta=meta, rows=_EMPTY, error=error),
        cancelled=lambda _exc: _cancelled(run, settings, meta),
        time_limit_message=f"the forecast exceeded its {settings.forecast_soft_time_limit} s soft time limit",
    )


_EMPTY = object()  # "write an empty result": a cancelled or failed job keeps no rows


def _cancelled(run: _Run, settings: Settings, meta: dict[str, Any]) -> JobState:
    """Record a cancel that arrived while running, keeping the series finished before it (a bulk
    job's stored chunks included)."""
    frames = []
    if run.bulk:
        with session_scope(settings) as session:
            frames = [c["rows"] for c in chunk_crud.load_chunks(session, job_id=run.job_id) if c["rows"] is not None]
    if run.parts:
        frames.append(rows_frame(run.parts))
    rows = pd.concat(frames, ignore_index=True) if frames else _EMPTY
    kept = 0 if rows is _EMPTY else rows["symbol"].nunique()
    return _finish(run, settings, JobState.CANCELLED, meta=meta, rows=rows,
                   error={"code": "cancelled", "message": "cancelled by request while running; "
                          f"the {kept} series finished before it are kept"})


def _forecast(run: _Run, settings: Settings, heartbeat: LeaseHeartbeat, job_input: tuple,
              meta: dict[str, Any], identity: WorkerIdentity) -> JobState:
    from kronos_jobs.jobs import model_cache

    params = run.params
    # A job without a seed still gets one, recorded, so any run can be repeated.
    seed = params.sampling.seed if params.sampling.seed is not None else random.SystemRandom().randrange(2**31)
    meta.update(identity.job_metadata())
    meta.update(device_requested=run.device_requested, queue=run.queue, attempt=run.attempt, seed=seed,
                sampling=dataclasses.asdict(params.sampling) | {"seed": seed}, quantiles=params.quantiles,
                lookback=params.lookback, pred_len=params.pred_len)

    # --- input and model ------------------------------------------------------------------------
    bars, future = job_input
    if _may_split(run, settings):
        sizes, slots = job_parts.plan(settings, queue=run.queue, n_series=int(bars["symbol"].nunique()))
        if len(sizes) > 1:
            job_parts.split(settings, job_id=run.job_id, owner=run.owner, job_input=job_input,
                        params=run.stored_params, seed=seed, sizes=sizes)
            _log(run, "split", f"parts={sizes} live_slots={slots}")
            return JobState.RUNNING
    model_dirs = settings.effective_model_dirs
    if _needs_session(params.model, model_dirs):
        with session_scope(settings) as session:
            spec = resolve_model(params.model, session, tenant_id=run.tenant_id, model_dirs=model_dirs)
    else:
        spec = resolve_model(params.model, model_dirs=model_dirs)
    total = stop = int(bars["symbol"].nunique())
    if run.bulk:  # this delivery's chunk only, sized by this worker's pace on this shape
        key = pace.shape_key(params.model, str(identity.device), params.lookback, params.pred_len,
                             params.sampling.sample_count)
        size = chunk_series(pace.cost_model(key), settings.bulk_chunk_seconds, total - run.start,
                            settings.bulk_probe_series)
        stop = min(total, run.start + size)
        wanted = pd.unique(bars["symbol"].astype(str))[run.start:stop]
        bars = bars[bars["symbol"].astype(str).isin(wanted)]
        if future is not None:
            future = future[future["symbol"].astype(str).isin(wanted)]
    inputs, symbol_errors = build_inputs(bars, future, params)
    entry, cached = model_cache.get_predictor(spec, identity.device, settings)
    meta.update(spec.metadata())
    meta.update(model_checksum=entry.model_checksum, tokenizer_checksum=entry.tokenizer_checksum,
                dtype=entry.dtype, model_cached=cached)
    # Which matrix kernels and arithmetic computed this forecast ("approximate-bf16" when opted in).
    kernel = dict(getattr(entry.predictor, "kernel_info", None) or {})
    meta.update(precision=kernel.get("precision", "fp32"), kernel=kernel)
    model_load_seconds = 0.0 if cached else entry.load_seconds

    # --- chunks -----------------------------------------------------------------------------------
    prepare_seconds = run.elapsed()  # claim, input, series, model lookup (or load)
    from model.decoding import DecodeStopped  # torch: this module is imported by torch-free processes

    parts = run.parts  # kept by a cancel: the rows of every finished chunk
    should_stop = CancelFlag(settings, run.job_id, settings.cancel_check_seconds)
    done, inference_seconds = run.start + len(symbol_errors), 0.0
    # How the predictor chunked its rows; kept current so a failed job records it too.
    meta["decode"] = decode = {"requested_rows_per_chunk": None, "rows_per_chunk": None, "oom_retries": 0}
    size = settings.max_batch_size
    steps = _ChunkProgress(run, settings, total=total, series_steps_total=len(inputs) * params.pred_len)
    for index in range(0, len(inputs), size):
        if heartbeat.lost:
            raise LeaseLost(f"job {run.job_id}: lease lost while running")
        chunk = inputs[index:index + size]
        started = time.perf_counter()
        steps.start_chunk(done=done, decoded_series=index, chunk_series=len(chunk))
        # Each chunk seeds its own generator from the job's seed: reproducible, and no two chunks
        # replay the same random draws.
        try:
            outputs, errors = _predict_chunk(entry.predictor, chunk, params, seed + (run.offset + run.start + index) // size,
                                             decode, should_stop, steps.report)
        except DecodeStopped:
            raise JobCancelled(f"job {run.job_id} cancelled while decoding after {done}/{total} series") from None
        inference_seconds += time.perf_counter() - started
        parts += [result_rows(item, out, params.quantiles) for item, out in outputs]
        symbol_errors += errors
        done += len(chunk)
        if done < total:  # the last boundary's progress and cancel check ride in the finish transaction
            with session_scope(settings) as session:
                cancel = job_crud.update_progress(session, job_id=run.job_id, owner=run.owner, done=done, total=total,
                                                  detail=steps.detail(index + len(chunk)))
                if run.parent_id:
                    part_crud.roll_up_progress(session, parent_id=run.parent_id)
            if cancel:
                raise JobCancelled(f"job {run.job_id} cancelled after {done}/{total} series")

    merged = None
    if run.bulk:
        pace.record(key, len(inputs), inference_seconds)
        if stop < total:
            return _yield_chunk(run, settings, parts, symbol_errors, inference_seconds, stop, identity)
        merged, symbol_errors, inference_seconds = _merge_chunks(run, settings, parts, symbol_errors,
                                                                 inference_seconds, meta, stop)

    # --- classify and finish ------------------------------------------------------------------------
    meta["timings"] = {"prepare_seconds": round(prepare_seconds, 6), "model_load_seconds": round(model_load_seconds, 6),
                       "inference_seconds": round(inference_seconds, 6)}
    meta["series_steps"] = len(inputs) * params.pred_len  # with inference_seconds: the decode rate
    state, error = series_outcome(total, total - len(symbol_errors), symbol_errors)
    rows = merged if merged is not None else rows_frame(parts) if parts else _EMPTY
    return _finish(run, settings, state, meta=meta, rows=rows, error=error, symbol_errors=symbol_errors,
                   progress=(total, total))


def _yield_chunk(run: _Run, settings: Settings, parts: list[dict[str, Any]], symbol_errors: list[dict[str, Any]],
                 inference_seconds: float, stop: int, identity: WorkerIdentity) -> JobState:
    """Store this delivery's chunk and yield the job in one transaction, then send its next task."""
    with session_scope(settings) as session:
        chunk_crud.save_chunk(session, job_id=run.job_id, start=run.start, stop=stop,
                              rows=rows_frame(parts) if parts else None, symbol_errors=symbol_errors,
                              inference_seconds=inference_seconds, wait_seconds=run.wait_seconds,
                              device=str(identity.device))
        # Raises JobCancelled (rolling the chunk back) when a cancel arrived during the chunk.
        job_crud.yield_job(session, job_id=run.job_id, owner=run.owner, done=stop,
                           grace_seconds=10 * settings.lease_seconds)
    # Should this send fail, the job waits yielded until the reconciler sends it (jobs/recovery.py).
    send_job(settings, run.job_id, run.queue, priority=run.priority, start=stop)
    _log(run, "yielded", f"series={run.start}:{stop} inference={inference_seconds:.3f}s")
    return JobState.RUNNING


def _merge_chunks(run: _Run, settings: Settings, parts: list[dict[str, Any]], symbol_errors: list[dict[str, Any]],
                  inference_seconds: float, meta: dict[str, Any], stop: int):
    """The stored chunks' rows and errors joined to this last chunk's: (rows or None, errors,
    inference seconds of every chunk). The finish writes them all and deletes the stored chunks."""
    with session_scope(settings) as session:
        stored = chunk_crud.load_chunks(session, job_id=run.job_id)
    frames = [c["rows"] for c in stored if c["rows"] is not None] + ([rows_frame(parts)] if parts else [])
    errors = [e for c in stored for e in c["symbol_errors"]] + symbol_errors
    # Waits between chunks: every delivery's but the first one's (that is the job's queue wait).
    waits = [c["wait_seconds"] for c in stored[1:]] + ([run.wait_seconds] if stored else [])
    meta["chunks"] = {"count": len(stored) + 1,
                      "series": [c["stop"] - c["start"] for c in stored] + [stop - run.start],
                      "wait_seconds": round(sum(waits), 6)}
    merged = pd.concat(frames, ignore_index=True) if frames else None
    return merged, errors, inference_seconds + sum(c["inference_seconds"] for c in stored)


def _needs_session(model: str, model_dirs: Sequence[Path]) -> bool:
    """Only fine-tuned ids live in the database; published, random and local models do not."""

    return not (model in PUBLISHED_MODELS or model.startswith(RANDOM_PREFIX)
                or local_model_dir(model, model_dirs) is not None)


class _ChunkProgress:
    """Progress within a chunk: the predictor reports row-steps decoded; this writes the job's
    `progress.detail` ({"series_steps_done", "series_steps_total"}, a series-step being one forecast
    bar of one symbol) at most every KRONOS_PROGRESS_WRITE_SECONDS, so `wait` moves while a chunk
    decodes. Cancels are `CancelFlag`'s to notice (between decode steps), not these writes'."""

    def __init__(self, run: "_Run", settings: Settings, *, total: int, series_steps_total: int):
        self.run, self.settings, self.total, self.series_steps_total = run, settings, total, series_steps_total
        self.done, self.base, self.chunk_steps, self.last_write = 0, 0, 0, time.monotonic()

    def start_chunk(self, *, done: int, decoded_series: int, chunk_series: int) -> None:
        self.done, self.base = done, decoded_series * self.run.params.pred_len
        self.chunk_steps = chunk_series * self.run.params.pred_len

    def detail(self, decoded_series: int) -> dict[str, int]:
        return {"series_steps_done": decoded_series * self.run.params.pred_len,
                "series_steps_total": self.series_steps_total}

    def report(self, rows_done: int, rows_total: int) -> None:
        now = time.monotonic()
        if now - self.last_write < self.settings.progress_write_seconds or rows_done >= rows_total:
            return  # the chunk's end is written with its boundary
        self.last_write = now
        within = self.chunk_steps * rows_done // max(1, rows_total)
        detail = {"series_steps_done": min(self.base + within, self.series_steps_total),
                  "series_steps_total": self.series_steps_total}
        with session_scope(self.settings) as session:
            job_crud.update_progress(session, job_id=self.run.job_id, owner=self.run.owner, done=self.done,
                                     total=self.total, detail=detail)


def _predict_chunk(predictor, chunk: list[SeriesInput], params: ForecastParams, seed: int, decode: dict[str, Any],
                   should_stop=None, progress=None):
    """Run one chunk; a ValueError from one bad series is isolated by re-running the series alone.

    After every predictor call (even one that raised), its `last_decode_info` is folded into `decode`:
    the smallest rows per chunk seen (lowered by CUDA out-of-memory back-off) and the retries summed.
    """
    s = params.sampling
    kwargs = dict(pred_len=params.pred_len, T=s.temperature, top_k=s.top_k, top_p=s.top_p,
                  sample_count=s.sample_count, seed=seed, quantiles=params.quantiles or None, should_stop=should_stop)

    def call(items: list[SeriesInput]):
        try:
            return predictor.predict_batch([i.context for i in items], [i.x_timestamp for i in items],
                                           [i.y_timestamp for i in items], progress=progress, **kwargs)
        finally:
            _record_decode(decode, getattr(predictor, "last_decode_info", None) or {})

    try:
        return list(zip(chunk, call(chunk))), []
    except ValueError as exc:
        if len(chunk) == 1:
            return [], [{"symbol": chunk[0].symbol, "code": "predictor_rejected", "message": str(exc)}]
    outputs, errors = [], []
    for item in chunk:
        one_out, one_err = _predict_chunk(predictor, [item], params, seed, decode, should_stop)  # a re-run: no progress
        outputs += one_out
        errors += one_err
    return outputs, errors


def _record_decode(decode: dict[str, Any], info: dict[str, int]) -> None:
    if not info:  # the call failed before decoding (a rejected series)
        return
    decode["requested_rows_per_chunk"] = info["requested_rows_per_chunk"]
    rows = decode["rows_per_chunk"]
    decode["rows_per_chunk"] = info["rows_per_chunk"] if rows is None else min(rows, info["rows_per_chunk"])
    decode["oom_retries"] += info["oom_retries"]


def _finish(run: _Run, settings: Settings, state: JobState, *, meta: dict[str, Any] | None = None,
            rows: Any = None, error: dict[str, Any] | None = None,
            symbol_errors: list[dict[str, Any]] | None = None, progress: tuple[int, int] | None = None) -> JobState:
    """Results, metadata and the final state in ONE transaction (only while we hold the lease).

    With `progress` (done, total), the last progress update and its cancel check happen in the same
    transaction: a cancel that arrived during the last chunk rolls it back (JobCancelled)."""

    meta = dict(meta or {})
    finished_at = utcnow()
    meta.setdefault("timings", {}).update(
        queued_at=run.queued_at.isoformat() if run.queued_at else None,
        started_at=run.started_at.isoformat() if run.started_at else None,
        finished_at=finished_at.isoformat(), elapsed_seconds=round(run.elapsed(), 6))
    first_wait = run.first_wait_seconds if run.first_wait_seconds is not None else run.wait_seconds
    meta.update(priority=run.priority, workload=run.workload)
    meta["timings"]["queue_wait_seconds"] = round(first_wait, 6)  # submit -> first claim
    with session_scope(settings) as session:
        if run.bulk:
            chunk_crud.delete_chunks(session, job_id=run.job_id)
        if rows is not None:
            frame = _empty_rows() if rows is _EMPTY else rows
            result_crud.write_forecasts(session, job_id=run.job_id, tenant_id=run.tenant_id, rows=frame)
        # Raises JobCancelled (rolling the rows back) when a cancel arrived during the last chunk.
        job_crud.finish_job(session, job_id=run.job_id, owner=run.owner, state=state, error=error,
                            symbol_errors=symbol_errors or [], execution_metadata=meta, progress=progress)
    _log(run, state, f"errors={len(symbol_errors or [])}" + (f" code={error['code']}" if error else ""))
    if run.parent_id:
        _settle_parent(settings, run.parent_id)
    return state


def _may_split(run: _Run, settings: Settings) -> bool:
    """Only a job a person POSTed is split over the live slots: schedule runs are fanned out by
    them already, bulk work yields between chunks instead, and a part never splits again."""
    return (settings.queue_policy == "priority" and not run.bulk and run.parent_id is None
            and run.workload == Workload.INTERACTIVE.value)


def _settle_parent(settings: Settings, parent_id: str) -> None:
    """After a part ended: end its split job if this was the last part (jobs/parts.py). Should
    that fail (the database hiccupped), beat's recovery sweep settles it."""
    try:
        job_parts.settle(settings, parent_id)
    except Exception as exc:
        logger.warning("job %s: not settled after its part ended (%s); the recovery sweep will", parent_id, exc)


def _empty_rows() -> pd.DataFrame:
    return pd.DataFrame(columns=[*RESULT_COLUMNS, "step"])


