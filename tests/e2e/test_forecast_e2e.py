"""End to end with real worker processes: submit through jobs/submit.py, poll the database.

Two stacks: the embedded default (SQLite file + kombu filesystem broker, always) and Redis +
PostgreSQL (when KRONOS_TEST_REDIS_URL and KRONOS_TEST_DATABASE_URL are set; required under CI=true).
Each stack gets a fresh data dir, a fresh PostgreSQL schema and an empty Redis DB number, and one
`python -m kronos_jobs.runtime.worker --pool cpu --concurrency 2` worker (a parent and two prefork children).
"""

from __future__ import annotations

import os
import signal
import time

import pandas as pd
import pytest

from kronos_jobs.core.names import DEFAULT_TENANT, RESULT_COLUMNS
from kronos_jobs.crud import jobs as job_crud
from kronos_jobs.crud import results as result_crud
from kronos_jobs.crud import workers as worker_crud
from kronos_jobs.db.session import session_scope
from kronos_jobs.testing.factories import make_bars
from tests.e2e.harness import finished, read, submit, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

def test_multi_symbol_forecast(stack):
    bars = make_bars({"AAA": 50, "BBB": 70, "CCC": 40}, freq="1h")
    job_id = submit(stack, bars)
    job = wait_for(stack, job_id, finished)

    assert job.state == "succeeded", job.error
    assert (job.progress_done, job.progress_total, job.attempts) == (3, 3, 1)
    with session_scope(stack.settings) as session:
        rows = result_crud.read_forecasts(session, job_id=job_id)
        (registered,) = worker_crud.live_workers(session, stale_seconds=15)
    assert list(rows.columns) == [*RESULT_COLUMNS, "q0.5_open", "q0.5_high", "q0.5_low", "q0.5_close",
                                  "q0.5_volume", "q0.5_amount"]
    assert len(rows) == 12 and rows[list(RESULT_COLUMNS[2:])].notna().all().all()
    for symbol, group in rows.groupby("symbol"):
        last = bars[bars.symbol == symbol].timestamp.max()
        assert list(group.timestamp) == list(pd.date_range(last + pd.Timedelta("1h"), periods=4, freq="1h"))
    meta = job.execution_metadata
    assert meta["worker_id"] == registered.id and meta["worker_pid"] not in (os.getpid(), registered.pid)
    assert meta["device_resolved"] == "cpu" and meta["device_requested"] == "cpu" and meta["queue"] == "forecast.cpu"
    assert meta["torch_threads"] == 1 and meta["model_source"] == "local" and len(meta["model_checksum"]) == 64
    assert meta["seed"] == 3 and meta["timings"]["inference_seconds"] > 0
    assert registered.queues == ["forecast.cpu", "finetune.cpu"] and registered.torch_threads == 1


def test_cancel_queued_and_running(stack):
    # Nobody consumes forecast.gpu here, so this job stays queued until cancelled.
    queued = submit(stack, make_bars({"Q": 40}), device="gpu")
    assert read(stack, queued).routing_reason.startswith("requested gpu; warning")
    with session_scope(stack.settings) as session:
        assert job_crud.request_cancel(session, tenant_id=DEFAULT_TENANT, job_id=queued).state == "cancelled"

    running = submit(stack, make_bars({f"S{i:03d}": 60 for i in range(120)}), pred_len=8,
                     sampling={"sample_count": 4, "seed": 1})
    wait_for(stack, running, lambda j: j.progress_done >= 2)
    with session_scope(stack.settings) as session:
        job_crud.request_cancel(session, tenant_id=DEFAULT_TENANT, job_id=running)
    job = wait_for(stack, running, finished)
    assert job.state == "cancelled" and job.progress_done < job.progress_total
    with session_scope(stack.settings) as session:  # the series finished before the cancel are kept
        kept = result_crud.read_forecasts(session, job_id=running)
    assert kept.symbol.nunique() == job.progress_done >= 2 and len(kept) == job.progress_done * 8
    job = read(stack, queued)
    assert job.state == "cancelled" and job.attempts == 0 and job.started_at is None


def test_killed_child_job_is_redelivered_and_succeeds_once(stack):
    symbols = {f"K{i:03d}": 60 for i in range(120)}
    job_id = submit(stack, make_bars(symbols), pred_len=8, sampling={"sample_count": 4, "seed": 2})
    job = wait_for(stack, job_id, lambda j: j.state == "running" and j.progress_done >= 2)
    child_pid = int(job.lease_owner.split(":")[1])  # owner = host:pid:token of the child running it
    assert child_pid != stack.proc.pid
    os.kill(child_pid, signal.SIGKILL)

    job = wait_for(stack, job_id, finished, timeout=180)
    assert job.state == "succeeded", job.error
    assert job.attempts == 2 and job.execution_metadata["worker_pid"] != child_pid
    with session_scope(stack.settings) as session:
        rows = result_crud.read_forecasts(session, job_id=job_id)
    assert len(rows) == len(symbols) * 8 and not rows.duplicated(["symbol", "timestamp"]).any()
    assert stack.proc.poll() is None  # the worker parent survived and replaced its child


def test_reconciler_resends_a_message_the_broker_lost(stack):
    from kronos_jobs.broker.celery_app import broker_folders
    from kronos_jobs.jobs.recovery import requeue_stale_jobs

    stack.stop_worker()
    job_id = submit(stack, make_bars({"LOST": 40}))
    # The broker loses the message: Redis restarted without AOF, or the filesystem folder wiped.
    if stack.settings.effective_broker_url.startswith("redis"):
        import redis

        client = redis.Redis.from_url(stack.settings.effective_broker_url)
        for key in client.scan_iter():  # everything but this session's claim on the DB
            if key != b"kronos-test-claim":
                client.delete(key)
    else:
        for message in broker_folders(stack.settings)["data"].glob("*.msg"):
            message.unlink()
    stack.start_worker()
    time.sleep(1.0)
    assert read(stack, job_id).state == "queued"  # nothing will ever deliver it on its own

    with session_scope(stack.settings) as session:
        assert requeue_stale_jobs(session, stack.settings, queued_older_than=0.5) == [job_id]
    job = wait_for(stack, job_id, finished)
    assert job.state == "succeeded" and job.attempts == 1
