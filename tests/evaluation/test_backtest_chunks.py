"""A backtest yields its worker between chunks (in process, on a migrated test database): the chunked
job's rows and metrics equal the same backtest run whole, a duplicate chunk message does nothing, a
cancel between chunks ends it, a dead chunk delivery is taken over, and the tenant's bulk limit
defers a chunk's claim."""

from __future__ import annotations

import time
from datetime import timedelta

import pandas as pd
import pytest
from sqlalchemy import func, select, update

from kronos_jobs.core.errors import LeaseLost
from kronos_jobs.core.names import DEFAULT_TENANT, JobState
from kronos_jobs.core.workload import DEFAULT_PRIORITY, Workload
from kronos_jobs.crud import backtests as backtest_crud
from kronos_jobs.crud import jobs as job_crud
from kronos_jobs.db.models import Job, JobChunk, utcnow
from kronos_jobs.db.session import session_scope
from kronos_jobs.jobs import backtest, pace
from kronos_jobs.jobs.backtest import Batch, chunk_stop, plan_batches, run_backtest_job
from kronos_jobs.jobs.backtest_submit import submit_backtest
from kronos_jobs.testing.factories import load_job, make_bars, run_backtest_to_end, worker_identity

BARS = {"AAA": 60, "BBB": 55}
GREEDY = {"temperature": 1.0, "top_k": 1, "top_p": 1.0, "sample_count": 1, "seed": 3}
SAMPLED = {"temperature": 1.0, "top_k": 0, "top_p": 0.9, "sample_count": 3, "seed": 5}


@pytest.fixture
def chunked(job_settings, monkeypatch):
    """Chunks of four forecasts, two batches of two (no pace measured, so every chunk is a probe)."""
    monkeypatch.setattr(pace, "cost_model", lambda key: None)
    return job_settings.model_copy(update={"bulk_probe_series": 4})


def submit(settings, checkpoint, **overrides) -> str:
    request = {"models": [str(checkpoint)], "device": "cpu", "lookbacks": [24, 32], "horizon": 4, "horizons": [2],
               "n_windows": 6, "step_size": 3, "sampling": GREEDY, **overrides}
    with session_scope(settings) as session:
        return submit_backtest(session, settings, tenant_id=DEFAULT_TENANT, request=request,
                               bars=make_bars(BARS), source="inline").id


def load(settings, job_id):
    with session_scope(settings) as session:
        return (backtest_crud.read_rows(session, job_id=job_id),
                backtest_crud.read_metrics(session, job_id=job_id, by_symbol=True))


def chunk_count(settings, job_id: str) -> int:
    with session_scope(settings) as session:
        return session.scalar(select(func.count()).select_from(JobChunk).where(JobChunk.job_id == job_id))


def deliver(settings, job_id, start=None):
    return run_backtest_job(job_id, settings=settings, identity=worker_identity(settings), start=start)


@pytest.mark.parametrize("request_fields", [
    {},
    {"sampling": SAMPLED, "repeats": 2, "quantiles": [0.1, 0.9]},
    {"sampling": {**SAMPLED, "seed": None}},
], ids=["greedy", "sampled", "seed-chosen-by-the-first-chunk"])
def test_a_chunked_backtest_yields_and_equals_the_same_backtest_run_whole(chunked, tiny_checkpoint, request_fields):
    job_id = submit(chunked, tiny_checkpoint, **request_fields)
    assert deliver(chunked, job_id) is JobState.RUNNING
    job = load_job(chunked, job_id)
    # Still running for its user, owned by nobody, its next chunk's task on the queue.
    assert (job.state, job.lease_owner, job.progress_done, job.attempts) == ("running", None, 4, 0)
    assert chunk_count(chunked, job_id) == 1 and load(chunked, job_id)[0] is None

    starts: list[int | None] = []
    assert run_backtest_to_end(chunked, job_id, deliveries=starts) is JobState.SUCCEEDED
    job = load_job(chunked, job_id)
    meta = job.execution_metadata
    total = 2 * 12 * meta["repeats"]  # 2 lookbacks x 12 origins x repeats
    # One delivery per two-batch chunk: the one already at batch 2, then each its message names.
    assert starts == [None, *(2 * i for i in range(2, total // 4))]
    assert (job.progress_done, job.progress_total, job.attempts, job.lease_owner) == (total, total, 1, None)
    assert meta["chunks"]["count"] == total // 4 and meta["chunks"]["forecasts"] == [4] * (total // 4)
    assert meta["workload"] == "bulk" and meta["priority"] == DEFAULT_PRIORITY[Workload.BULK]
    assert chunk_count(chunked, job_id) == 0  # deleted by the finish's commit

    # The same backtest, with the seed the chunked one ran with, run whole in one delivery.
    whole_settings = chunked.model_copy(update={"queue_policy": "fifo"})
    fields = {**request_fields, "sampling": {**GREEDY, **request_fields.get("sampling", {}), "seed": meta["seed"]}}
    whole = submit(whole_settings, tiny_checkpoint, **fields)
    assert deliver(whole_settings, whole) is JobState.SUCCEEDED
    assert "chunks" not in load_job(whole_settings, whole).execution_metadata
    (rows, metrics), (whole_rows, whole_metrics) = load(chunked, job_id), load(whole_settings, whole)
    pd.testing.assert_frame_equal(rows, whole_rows)
    pd.testing.assert_frame_equal(metrics, whole_metrics)


def test_a_duplicate_chunk_message_does_nothing(chunked, tiny_checkpoint, monkeypatch):
    from kronos_jobs.jobs import recovery

    job_id = submit(chunked, tiny_checkpoint)
    assert deliver(chunked, job_id) is JobState.RUNNING  # batches 0:2 done, its message names batch 2
    sent = []
    monkeypatch.setattr(recovery, "send_job", lambda settings, job_id, queue, kind=None, **options: sent.append(
        (kind, options.get("start"))))
    with session_scope(chunked) as session:  # the chunk's message waited past its grace: re-sent
        session.execute(update(Job).where(Job.id == job_id)
                        .values(lease_expires_at=utcnow(), updated_at=utcnow() - timedelta(hours=1)))
    with session_scope(chunked) as session:
        assert recovery.requeue_stale_jobs(session, chunked) == [job_id]
    assert sent == [("backtest", 2)]  # the backtest task, for the job's next batch

    assert deliver(chunked, job_id, start=2) is JobState.RUNNING
    # The other message for batch 2 (the original or a reconciler's re-send) comes second: it does nothing.
    assert deliver(chunked, job_id, start=2) is None
    assert load_job(chunked, job_id).progress_done == 8 and chunk_count(chunked, job_id) == 2
    assert run_backtest_to_end(chunked, job_id) is JobState.SUCCEEDED


def test_a_cancel_between_chunks_ends_it_keeping_no_rows(chunked, tiny_checkpoint):
    job_id = submit(chunked, tiny_checkpoint)
    assert deliver(chunked, job_id) is JobState.RUNNING
    with session_scope(chunked) as session:
        job = job_crud.request_cancel(session, tenant_id=DEFAULT_TENANT, job_id=job_id)
        assert job.state == "cancelled"  # nobody runs it: no need to wait for a chunk boundary
    assert chunk_count(chunked, job_id) == 0
    assert deliver(chunked, job_id, start=2) is None  # the next chunk's message does nothing
    with pytest.raises(LeaseLost):  # and a delivery naming no chunk finds the job cancelled
        deliver(chunked, job_id)
    job = load_job(chunked, job_id)
    assert job.error == {"code": "cancelled", "message": "cancelled by request between chunks; a backtest keeps no rows"}
    rows, metrics = load(chunked, job_id)
    assert rows is None and metrics.empty


def test_a_cancel_during_a_chunk_deletes_the_stored_ones(chunked, tiny_checkpoint, monkeypatch):
    job_id = submit(chunked, tiny_checkpoint)
    assert deliver(chunked, job_id) is JobState.RUNNING
    real = backtest.predict_contexts

    def cancel_then_predict(*args, **kwargs):
        with session_scope(chunked) as session:
            job_crud.request_cancel(session, tenant_id=DEFAULT_TENANT, job_id=job_id)
        return real(*args, **kwargs)

    monkeypatch.setattr(backtest, "predict_contexts", cancel_then_predict)
    assert deliver(chunked, job_id, start=2) is JobState.CANCELLED
    assert load_job(chunked, job_id).progress_done == 6 and chunk_count(chunked, job_id) == 0
    assert load(chunked, job_id)[0] is None


def test_a_dead_chunk_delivery_is_taken_over_and_the_job_finishes(chunked, tiny_checkpoint):
    job_id = submit(chunked, tiny_checkpoint, sampling=SAMPLED)
    assert deliver(chunked, job_id) is JobState.RUNNING
    with session_scope(chunked) as session:  # the second chunk's worker claims and dies
        job_crud.claim_job(session, job_id=job_id, owner="dead-worker", lease_seconds=0.01)
    time.sleep(0.05)
    assert run_backtest_to_end(chunked, job_id) is JobState.SUCCEEDED
    job = load_job(chunked, job_id)
    assert job.attempts == 2 and job.progress_done == 24  # the dead delivery counts
    rows = load(chunked, job_id)[0]
    assert len(rows[rows.kind == "model"]) == 24 * 4


def test_the_tenant_bulk_limit_defers_a_chunk_claim(chunked, tiny_checkpoint, monkeypatch):
    settings = chunked.model_copy(update={"tenant_bulk_limit": 1})
    running, waiting = submit(settings, tiny_checkpoint), submit(settings, tiny_checkpoint)
    with session_scope(settings) as session:  # another worker runs a chunk of the tenant's first job
        job_crud.claim_job(session, job_id=running, owner="busy-worker", lease_seconds=60)
    sent = []
    monkeypatch.setattr(backtest, "send_job", lambda s, job_id, queue, kind=None, **options: sent.append((kind, options)))
    assert deliver(settings, waiting) is None
    assert load_job(settings, waiting).state == "queued"
    [(kind, options)] = sent
    assert kind == "backtest" and options["priority"] == DEFAULT_PRIORITY[Workload.BULK] and options["countdown"] > 0


def test_a_chunk_keeps_to_one_model_and_lookback_and_fits_the_target():
    batches = plan_batches(["m"], {24: 5, 32: 4}, repeats=2, size=2)
    assert [b[:4] for b in batches[:4]] == [("m", 24, 0, 0), ("m", 24, 0, 2), ("m", 24, 0, 4), ("m", 24, 1, 0)]
    assert [b.n for b in batches[:3]] == [2, 2, 1] and len(batches) == 6 + 4

    def cost(model, lookback):  # 1 s per forecast, no fixed part
        return (0.0, 1.0)

    assert chunk_stop(batches, 0, cost, target_seconds=5.0, probe=4) == 3  # 2 + 2 + 1 forecasts
    assert chunk_stop(batches, 3, cost, target_seconds=100.0, probe=4) == 6  # not into lookback 32
    assert chunk_stop(batches, 0, cost, target_seconds=0.5, probe=4) == 1  # at least one batch
    assert chunk_stop(batches, 6, lambda m, lb: None, target_seconds=5.0, probe=4) == 8  # a probe
    assert isinstance(batches[0], Batch)
