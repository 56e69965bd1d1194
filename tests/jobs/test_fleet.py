"""Sharing the fleet, run in-process on a migrated test database (no worker processes): a bulk job
yields between chunks and still finishes in one transaction, a cancel between chunks wins, the
tenant's bulk limit defers a claim, schedule runs fan out over the live worker slots, and the job
records its priority and queue wait."""

from __future__ import annotations

import time
from datetime import timedelta

import pandas as pd
import pytest
from sqlalchemy import func, select, update

from kronos_jobs.broker.depth import queue_depths
from kronos_jobs.core.errors import LeaseLost
from kronos_jobs.core.names import DEFAULT_TENANT, JobState
from kronos_jobs.core.workload import DEFAULT_PRIORITY, Workload
from kronos_jobs.crud import jobs as job_crud
from kronos_jobs.crud import series as series_crud
from kronos_jobs.crud import workers as worker_crud
from kronos_jobs.db.models import Job, JobChunk, ScheduleRun, utcnow
from kronos_jobs.db.session import session_scope
from kronos_jobs.jobs import pace, schedules
from kronos_jobs.jobs.forecast import run_forecast_job
from kronos_jobs.testing.factories import load_forecast_job as load
from kronos_jobs.testing.factories import make_bars, worker_identity
from kronos_jobs.testing.factories import submit_forecast_job as submit

SYMBOLS = {s: 30 for s in "ABCDE"}


@pytest.fixture
def fleet_settings(job_settings, monkeypatch):
    """Chunks of two series (no pace measured yet, so every chunk is a probe)."""
    monkeypatch.setattr(pace, "cost_model", lambda key: None)
    return job_settings.model_copy(update={"bulk_probe_series": 2})


def chunk_count(settings, job_id: str) -> int:
    with session_scope(settings) as session:
        return session.scalar(select(func.count()).select_from(JobChunk).where(JobChunk.job_id == job_id))


def deliver(settings, job_id):
    return run_forecast_job(job_id, settings=settings, identity=worker_identity(settings))


def test_a_bulk_job_yields_between_chunks_and_matches_the_same_job_run_whole(fleet_settings, tiny_checkpoint):
    bars = make_bars(SYMBOLS)
    bulk = submit(fleet_settings, tiny_checkpoint, bars, workload=Workload.BULK)
    whole = submit(fleet_settings, tiny_checkpoint, bars)

    assert deliver(fleet_settings, bulk) is JobState.RUNNING
    job, rows = load(fleet_settings, bulk)
    # Still running for its user, owned by nobody, its next chunk's task on the queue at bulk priority.
    assert job.state == "running" and job.lease_owner is None and job.progress_done == 2 and rows.empty
    assert job.attempts == 0 and chunk_count(fleet_settings, bulk) == 1
    assert queue_depths(fleet_settings)[("forecast.cpu", DEFAULT_PRIORITY[Workload.BULK])] == 2  # submit + next chunk

    assert deliver(fleet_settings, bulk) is JobState.RUNNING
    assert load(fleet_settings, bulk)[0].progress_done == 4
    assert deliver(fleet_settings, bulk) is JobState.SUCCEEDED
    assert deliver(fleet_settings, whole) is JobState.SUCCEEDED

    job, rows = load(fleet_settings, bulk)
    assert (job.state, job.progress_done, job.attempts, job.lease_owner) == ("succeeded", 5, 1, None)
    assert chunk_count(fleet_settings, bulk) == 0  # the finish deleted them with the same commit
    meta = job.execution_metadata
    assert meta["chunks"]["count"] == 3 and meta["chunks"]["series"] == [2, 2, 1]
    assert meta["workload"] == "bulk" and meta["priority"] == DEFAULT_PRIORITY[Workload.BULK]
    # Chunk seeds follow the series' position, so the cut does not change the forecast.
    pd.testing.assert_frame_equal(rows.drop(columns="job_id", errors="ignore").reset_index(drop=True),
                                  load(fleet_settings, whole)[1].drop(columns="job_id", errors="ignore").reset_index(drop=True))


def test_a_duplicate_chunk_message_does_nothing_so_duplicates_die_out(fleet_settings, tiny_checkpoint, monkeypatch):
    from kronos_jobs.jobs import recovery

    job_id = submit(fleet_settings, tiny_checkpoint, make_bars(SYMBOLS), workload=Workload.BULK)
    assert deliver(fleet_settings, job_id) is JobState.RUNNING  # chunk 0:2 done, its message names chunk 2
    sent = []
    monkeypatch.setattr(recovery, "send_job", lambda settings, job_id, queue, priority, start=None: sent.append(start))
    with session_scope(fleet_settings) as session:  # the chunk waited past its grace: the reconciler re-sends it
        session.execute(update(Job).where(Job.id == job_id)
                        .values(lease_expires_at=utcnow(), updated_at=utcnow() - timedelta(hours=1)))
    with session_scope(fleet_settings) as session:
        assert recovery.requeue_stale_jobs(session, fleet_settings) == [job_id]
    assert sent == [2]  # the re-send names the job's next chunk

    identity = worker_identity(fleet_settings)
    assert run_forecast_job(job_id, settings=fleet_settings, identity=identity, start=2) is JobState.RUNNING
    # The other message for chunk 2 (the original or the re-send) comes second: it does nothing.
    assert run_forecast_job(job_id, settings=fleet_settings, identity=identity, start=2) is None
    assert load(fleet_settings, job_id)[0].progress_done == 4
    assert run_forecast_job(job_id, settings=fleet_settings, identity=identity, start=4) is JobState.SUCCEEDED


def test_an_interactive_job_runs_whole_in_one_delivery(fleet_settings, tiny_checkpoint):
    job_id = submit(fleet_settings, tiny_checkpoint, make_bars(SYMBOLS))
    assert deliver(fleet_settings, job_id) is JobState.SUCCEEDED
    job, rows = load(fleet_settings, job_id)
    assert job.priority == DEFAULT_PRIORITY[Workload.INTERACTIVE] and job.workload == "interactive"
    assert "chunks" not in job.execution_metadata and rows.symbol.nunique() == 5


def test_fifo_policy_runs_bulk_jobs_whole(fleet_settings, tiny_checkpoint):
    settings = fleet_settings.model_copy(update={"queue_policy": "fifo"})
    job_id = submit(settings, tiny_checkpoint, make_bars(SYMBOLS), workload=Workload.BULK)
    assert deliver(settings, job_id) is JobState.SUCCEEDED


def test_a_cancel_between_chunks_ends_the_job_at_once(fleet_settings, tiny_checkpoint):
    job_id = submit(fleet_settings, tiny_checkpoint, make_bars(SYMBOLS), workload=Workload.BULK)
    assert deliver(fleet_settings, job_id) is JobState.RUNNING
    with session_scope(fleet_settings) as session:
        job = job_crud.request_cancel(session, tenant_id=DEFAULT_TENANT, job_id=job_id)
        assert job.state == "cancelled"  # nobody runs it: no need to wait for a chunk boundary
    assert chunk_count(fleet_settings, job_id) == 0
    with pytest.raises(LeaseLost):  # the next chunk's message finds the job cancelled
        deliver(fleet_settings, job_id)
    job, rows = load(fleet_settings, job_id)
    # As with a cancel while running, the series finished before it are kept.
    assert job.state == "cancelled" and set(rows.symbol) == {"A", "B"} and job.error["code"] == "cancelled"


def test_a_dead_chunk_delivery_is_taken_over_and_the_job_finishes(fleet_settings, tiny_checkpoint):
    job_id = submit(fleet_settings, tiny_checkpoint, make_bars(SYMBOLS), workload=Workload.BULK)
    assert deliver(fleet_settings, job_id) is JobState.RUNNING
    with session_scope(fleet_settings) as session:  # the second chunk's worker claims and dies
        job_crud.claim_job(session, job_id=job_id, owner="dead-worker", lease_seconds=0.01)
    time.sleep(0.05)
    assert deliver(fleet_settings, job_id) is JobState.RUNNING
    assert deliver(fleet_settings, job_id) is JobState.SUCCEEDED
    job, rows = load(fleet_settings, job_id)
    assert rows.symbol.nunique() == 5 and job.attempts == 2  # the dead delivery counts


def test_the_tenant_bulk_limit_defers_a_claim_without_failing_it(fleet_settings, tiny_checkpoint):
    settings = fleet_settings.model_copy(update={"tenant_bulk_limit": 1})
    running = submit(settings, tiny_checkpoint, make_bars(SYMBOLS), workload=Workload.BULK)
    waiting = submit(settings, tiny_checkpoint, make_bars(SYMBOLS), workload=Workload.BULK)
    other = submit(settings, tiny_checkpoint, make_bars(SYMBOLS), workload=Workload.BULK, tenant_id="tenant-b")
    interactive = submit(settings, tiny_checkpoint, make_bars({"A": 30}))
    with session_scope(settings) as session:  # another worker runs a chunk of the tenant's first job
        job_crud.claim_job(session, job_id=running, owner="busy-worker", lease_seconds=60)

    assert deliver(settings, waiting) is None
    job, _ = load(settings, waiting)
    assert (job.state, job.attempts, job.error) == ("queued", 0, None)
    depth = queue_depths(settings)[("forecast.cpu", DEFAULT_PRIORITY[Workload.BULK])]
    assert depth == 4  # three bulk submits and the deferred re-send (with its countdown)

    assert deliver(settings, other) is JobState.RUNNING  # another tenant is not held back
    assert deliver(settings, interactive) is JobState.SUCCEEDED  # nor is interactive work
    with session_scope(settings) as session:
        job_crud.finish_job(session, job_id=running, owner="busy-worker", state=JobState.SUCCEEDED)
    assert deliver(settings, waiting) is JobState.RUNNING  # the tenant's slot is free again


def test_queue_wait_is_recorded_once_and_shown_in_metadata(fleet_settings, tiny_checkpoint):
    job_id = submit(fleet_settings, tiny_checkpoint, make_bars({"A": 30}), priority=8)
    deliver(fleet_settings, job_id)
    job, _ = load(fleet_settings, job_id)
    assert job.priority == 8 and job.queue_wait_seconds is not None and job.queue_wait_seconds >= 0
    assert job.execution_metadata["timings"]["queue_wait_seconds"] == pytest.approx(job.queue_wait_seconds, abs=1e-5)
    with session_scope(fleet_settings) as session:
        buckets = job_crud.queue_wait_buckets(session, bounds=[0.0, 3600.0])
    counts, total, n = buckets[("forecast", "interactive")]
    assert n == 1 and counts[-1] == 1 and total == pytest.approx(job.queue_wait_seconds)


# --- fan-out by live capacity ----------------------------------------------------------------------


def register(settings, worker_id: str, concurrency: int, queues=("forecast.cpu", "finetune.cpu")):
    with session_scope(settings) as session:
        worker_crud.register_worker(session, worker_id=worker_id, hostname="h", pid=1, pool="cpu", queues=list(queues),
                                    concurrency=concurrency, torch_threads=1, device_requested="cpu",
                                    device_resolved="cpu", device_name="cpu", device_warning=None, device_info={})


def run_schedule(settings, n_symbols: int) -> tuple[int, list[int], list[str], list[int]]:
    bars = make_bars({f"S{i:03d}": 40 for i in range(n_symbols)})
    with session_scope(settings) as session:
        series_crud.upsert_bars(session, tenant_id=DEFAULT_TENANT, bars=bars, freqs={s: "5min" for s in bars.symbol.unique()})
        schedule = schedules.create_schedule(session, tenant_id=DEFAULT_TENANT, fields=dict(
            name="nightly", cron="0 18 * * 1-5", timezone="UTC", symbols=None, freq=None, model="random:mini",
            device="cpu", lookback=32, pred_len=4, sampling={"seed": 1}, quantiles=None, calendar={},
            min_history=None, enabled=True))
    run, _ = schedules.trigger_run(settings, tenant_id=DEFAULT_TENANT, schedule_id=schedule.id)
    schedules.fan_out(settings, run.id)
    with session_scope(settings) as session:
        run = session.get(ScheduleRun, run.id)
        jobs = schedules.crud.run_jobs(session, run_id=run.id)
        sizes = sorted(int(j.progress_total) for j in jobs)
        return run.detail["fanout"]["live_slots"], sizes, [j.workload for j in jobs], [j.priority for j in jobs]


@pytest.mark.parametrize(("workers", "max_batch", "sizes"), [
    ([2], 250, [10, 10]),  # one worker, two processes: two jobs, not one
    ([1, 1, 2], 250, [5, 5, 5, 5]),  # four slots on three workers
    ([2], 6, [6, 6, 6, 2]),  # the maximum batch caps each job: more jobs than slots
    ([], 250, [20]),  # nobody live: one job waits for the first worker
])
def test_a_schedule_run_fans_out_over_the_live_slots(db_settings, workers, max_batch, sizes):
    settings = db_settings.model_copy(update={"schedule_batch_symbols": max_batch})
    for i, concurrency in enumerate(workers):
        register(settings, f"cpu{i}@h", concurrency)
    slots, got, workloads, priorities = run_schedule(settings, 20)
    assert slots == sum(workers) and got == sorted(sizes)
    assert set(workloads) == {"bulk"} and set(priorities) == {DEFAULT_PRIORITY[Workload.BULK]}


def test_fifo_policy_fans_out_by_the_fixed_batch(db_settings):
    settings = db_settings.model_copy(update={"schedule_batch_symbols": 250, "queue_policy": "fifo"})
    register(settings, "cpu0@h", 2)
    assert run_schedule(settings, 20)[1] == [20]
