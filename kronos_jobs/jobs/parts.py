"""A large forecast job spread over every live worker slot of its queue, as part jobs.

On its first delivery, a forecast job a person POSTed (interactive, not already a part) with more
series than one predictor batch is planned by core/workload.split_sizes over the live slots of its
queue (the workers table: what heartbeated recently, with its concurrency). When that gives more
than one part, `split` writes, in ONE transaction, a part job per slice of the series (its own
input, the parent's priority, workload and queue, and the parent's seed) and marks the parent
split: still `running` for its user, with no lease, so nothing claims it again. The parts' tasks
are sent after the commit (the outbox sends any that do not get out).

Parts are ordinary forecast jobs: leased, heartbeated, retried, recovered and cancelled like any
other, each on whichever worker takes it, and not listed on their own. Their series boundaries are
whole predictor batches and they share the parent's seed, so the parts compute exactly the
batches the unsplit job would have: the same forecasts, sampled ones included.

`settle` ends the parent once every part has ended: it moves the parts' forecast rows to the
parent, writes the parent's state, symbol errors and metadata (one entry per part: where it ran,
its queue wait and model time) and deletes the parts, all in ONE transaction under the parent's row
lock. The last part's delivery calls it as it finishes; beat's recovery sweep calls it for parents
whose last part ended any other way (cancelled while queued, killed at the hard time limit).
A cancel of the parent reaches its parts (crud/parts.cancel_parts); it ends cancelled with the
series its parts finished.
"""

from __future__ import annotations

import logging
import uuid
from typing import Any

import pandas as pd
from sqlalchemy import func, select

from kronos_jobs.core.names import JobKind, JobState, Queue
from kronos_jobs.core.routing import slots_of
from kronos_jobs.core.settings import Settings
from kronos_jobs.core.workload import split_sizes
from kronos_jobs.crud import jobs as job_crud
from kronos_jobs.crud import parts as part_crud
from kronos_jobs.crud import results as result_crud
from kronos_jobs.crud import workers as worker_crud
from kronos_jobs.db.models import ForecastRow, Job, utcnow
from kronos_jobs.db.session import session_scope
from kronos_jobs.jobs.series import series_outcome
from kronos_jobs.jobs.submit import send_job

logger = logging.getLogger(__name__)

PART_OFFSET = "part_offset"  # a part's first series within its parent, kept in the part's params


def plan(settings: Settings, *, queue: str, n_series: int) -> tuple[list[int], int]:
    """(series per part, live slots of `queue`): [n_series] when the job runs whole."""
    with session_scope(settings, autocommit=True) as session:
        live = worker_crud.live_workers(session, stale_seconds=settings.worker_stale_seconds)
    slots = slots_of(Queue(queue), live)
    gpu = Queue(queue) is Queue.FORECAST_GPU
    max_series = settings.schedule_batch_symbols_gpu if gpu else settings.schedule_batch_symbols
    sizes = split_sizes(n_series, batch=settings.max_batch_size, slots=slots, max_series=max_series,
                        min_series=settings.split_min_series)
    return sizes, slots


def split(settings: Settings, *, job_id: str, owner: str, job_input: tuple, params: dict[str, Any],
          seed: int, sizes: list[int]) -> list[str]:
    """Write the parts and mark `owner`'s job split (one transaction), then send the parts' tasks.

    Raises JobCancelled (a cancel arrived first: nothing is written) and LeaseLost."""
    bars, future = job_input
    symbols = pd.unique(bars["symbol"].astype(str))
    sampling = dict(params.get("sampling") or {}) | {"seed": seed}
    ids: list[str] = []
    with session_scope(settings) as session:
        job = session.get(Job, job_id)
        offset = 0
        for number, size in enumerate(sizes, start=1):
            wanted = symbols[offset:offset + size]
            part_bars = bars[bars["symbol"].astype(str).isin(wanted)]
            part_future = None if future is None else future[future["symbol"].astype(str).isin(wanted)]
            part_id = uuid.uuid4().hex
            # Live scoring scores the parent's rows once they are its own, never the part's.
            part_params = {**params, "sampling": sampling, "score": False, "n_series": int(size), PART_OFFSET: offset}
            job_crud.create_job(
                session, job_id=part_id, tenant_id=job.tenant_id, kind=JobKind.FORECAST.value,
                device_requested=job.device_requested, queue=job.queue,
                routing_reason=f"part {number} of {len(sizes)} of job {job_id}", model=job.model, params=part_params,
                progress_total=int(size), priority=job.priority, workload=job.workload, parent_id=job_id)
            result_crud.save_job_input(session, job_id=part_id, tenant_id=job.tenant_id, bars=part_bars,
                                       future=part_future, source=str(params.get("source", "split")))
            ids.append(part_id)
            offset += size
        part_crud.mark_split(session, job_id=job_id, owner=owner, parts=len(sizes))
        priority, queue = job.priority, job.queue
    sent = []
    for part_id in ids:
        try:
            send_job(settings, part_id, queue, priority=priority)
            sent.append(part_id)
        except Exception as exc:  # committed: the outbox sends it (jobs/recovery.py)
            logger.warning("job %s: part %s not sent (%s); the dispatcher will send it", job_id, part_id, exc)
    if sent:
        with session_scope(settings) as session:
            job_crud.mark_sent(session, job_ids=sent)
    logger.info("job %s split into %d parts %s", job_id, len(sizes), sizes)
    return ids


def settle(settings: Settings, parent_id: str) -> JobState | None:
    """End the split job `parent_id` if all its parts have ended (module docstring); its final
    state, or None while a part still runs (its progress is brought up to date instead)."""
    with session_scope(settings) as session:
        parent = part_crud.lock_parent(session, parent_id=parent_id)
        if parent is None:
            return None
        parts = part_crud.parts_of(session, parent_id=parent_id)
        if any(not JobState(p.state).is_terminal for p in parts):
            part_crud.roll_up_progress(session, parent_id=parent_id)
            return None
        ids = [p.id for p in parts]
        kept = int(session.scalar(select(func.count(func.distinct(ForecastRow.symbol)))
                                  .where(ForecastRow.job_id.in_(ids))) or 0) if ids else 0
        values = _outcome(session, parent, parts, kept)
        part_crud.adopt_rows(session, parent_id=parent_id, part_ids=ids)
        part_crud.finish_parent(session, parent_id=parent_id, values=values)
        state = values["state"]
    logger.info("job %s %s (%d parts, %d series kept)", parent_id, state, len(ids), kept)
    return JobState(state)


def settle_finished_parents(settings: Settings) -> list[str]:
    """Settle every split job whose parts have all ended (beat's recovery sweep)."""
    with session_scope(settings, autocommit=True) as session:
        ready = part_crud.settled_parents(session)
    return [parent_id for parent_id in ready if settle(settings, parent_id) is not None]


def _outcome(session, parent: Job, parts: list[Job], kept: int) -> dict[str, Any]:
    """The parent's final state, error, symbol errors, progress and metadata from its ended parts."""
    total = int(parent.progress_total)
    errors: list[dict[str, Any]] = []
    for part in parts:
        errors += list(part.symbol_errors or [])
        code = (part.error or {}).get("code")
        if part.state == JobState.FAILED.value and code not in ("all_series_failed", None):
            # A part that failed as a whole (its model, a time limit): each of its series is an error.
            bars, _ = result_crud.load_job_input(session, job_id=part.id)
            named = {e.get("symbol") for e in part.symbol_errors or []}
            errors += [{"symbol": s, "code": code, "message": part.error.get("message", "")}
                       for s in pd.unique(bars["symbol"].astype(str)) if s not in named]
    cancelled = parent.cancel_requested or any(p.state == JobState.CANCELLED.value for p in parts)
    if cancelled:
        state = JobState.CANCELLED
        error = {"code": "cancelled", "message": f"cancelled by request while running; the {kept} series "
                                                 "finished before it are kept"}
    else:
        state, error = series_outcome(total, kept, errors)
        codes = {(p.error or {}).get("code") for p in parts}
        if state is JobState.FAILED and len(codes) == 1 and parts[0].error:
            error = dict(parts[0].error)  # every part failed the same way (its model, say): say that
    # A cancelled job's progress is what it kept, as when a whole job is cancelled while running.
    return {"state": state.value, "error": error, "symbol_errors": errors,
            "progress_done": kept if cancelled else total,
            "execution_metadata": _metadata(parent, parts)}


def _metadata(parent: Job, parts: list[Job]) -> dict[str, Any]:
    """The first part that ran gives what they share (model, seed, sampling, software); each part
    adds where it ran and how long it waited and decoded; timings are the parent's own."""
    ran = [p for p in parts if (p.execution_metadata or {}).get("device_resolved")]
    meta = dict((ran[0] if ran else parts[0]).execution_metadata or {}) if parts else {}
    for key in ("worker_id", "worker_host", "worker_pid", "attempt", "chunks"):
        meta.pop(key, None)
    summary, inference, steps = [], 0.0, 0
    for p in parts:
        m = p.execution_metadata or {}
        timings = m.get("timings") or {}
        inference += float(timings.get("inference_seconds") or 0.0)
        steps += int(m.get("series_steps") or 0)
        summary.append({"job_id": p.id, "series": int(p.progress_total), "offset": int(p.params.get(PART_OFFSET, 0)),
                        "state": p.state, "worker_id": m.get("worker_id"), "worker_host": m.get("worker_host"),
                        "worker_pid": m.get("worker_pid"), "device_resolved": m.get("device_resolved"),
                        "attempt": m.get("attempt"), "queue_wait_seconds": timings.get("queue_wait_seconds"),
                        "inference_seconds": timings.get("inference_seconds")})
    now = utcnow()
    started = parent.started_at or parent.created_at
    meta.update(parts=summary, priority=parent.priority, workload=parent.workload, series_steps=steps,
                queue=parent.queue, device_requested=parent.device_requested)
    meta["timings"] = {"inference_seconds": round(inference, 6),  # summed over parts that ran side by side
                       "queued_at": parent.created_at.isoformat() if parent.created_at else None,
                       "started_at": started.isoformat() if started else None, "finished_at": now.isoformat(),
                       "elapsed_seconds": round((now - started).total_seconds(), 6) if started else None,
                       "queue_wait_seconds": round(parent.queue_wait_seconds or 0.0, 6)}
    return meta
