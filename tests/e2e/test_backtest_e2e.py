"""A backtest job end to end through a real worker process (on each configured stack): routed to the
forecast queue, claimed, forecast in batches a chunk per delivery, scored, rows and metrics stored;
and cancelled while running."""

from __future__ import annotations

import os

import pytest

from kronos_jobs.core.names import DEFAULT_TENANT
from kronos_jobs.crud import backtests as backtest_crud
from kronos_jobs.crud import jobs as job_crud
from kronos_jobs.db.session import session_scope
from kronos_jobs.jobs.backtest_submit import submit_backtest
from kronos_jobs.testing.factories import make_bars
from tests.e2e.harness import finished, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


def submit(stack, bars, **overrides) -> str:
    request = {"models": [str(stack.checkpoint)], "device": "cpu", "lookbacks": [24, 32], "horizon": 4,
               "horizons": [2], "n_windows": 5, "step_size": 4, "sampling": {"sample_count": 2, "seed": 3},
               "quantiles": [0.1, 0.9], **overrides}
    with session_scope(stack.settings) as session:
        return submit_backtest(session, stack.settings, tenant_id=DEFAULT_TENANT, request=request, bars=bars,
                               source="inline").id


def test_backtest_through_a_worker(stack):
    job_id = submit(stack, make_bars({"AAA": 60, "BBB": 70}, freq="1h"))
    job = wait_for(stack, job_id, finished, timeout=180)
    assert job.state == "succeeded", job.error
    assert job.kind == "backtest" and job.queue == "forecast.cpu" and job.attempts == 1
    assert job.progress_done == job.progress_total == 2 * 2 * 5
    meta = job.execution_metadata
    assert meta["worker_pid"] != os.getpid() and meta["device_resolved"] == "cpu" and meta["seed"] == 3
    assert meta["models"][str(stack.checkpoint)]["model_source"] == "local"
    # Bulk work: the worker ran it a chunk at a time (one per lookback at least), following each
    # chunk's message to the next.
    assert meta["workload"] == "bulk" and meta["chunks"]["count"] >= 2 and sum(meta["chunks"]["forecasts"]) == 2 * 2 * 5
    with session_scope(stack.settings) as session:
        rows = backtest_crud.read_rows(session, job_id=job_id)
        metrics = backtest_crud.read_metrics(session, job_id=job_id)
    assert len(rows[rows.kind == "model"]) == 2 * 2 * 5 * 4
    mine = metrics[metrics.model == str(stack.checkpoint)]
    assert len(mine) == 2 * (4 + 2) and mine["crps"].notna().all() and mine["dm_pvalue"].notna().all()


def test_cancel_a_running_backtest(stack):
    job_id = submit(stack, make_bars({f"S{i:02d}": 200 for i in range(12)}, freq="1h"), n_windows=60, step_size=2,
                    sampling={"sample_count": 4, "seed": 1})
    wait_for(stack, job_id, lambda j: j.progress_done >= 1, timeout=180)
    with session_scope(stack.settings) as session:
        job_crud.request_cancel(session, tenant_id=DEFAULT_TENANT, job_id=job_id)
    job = wait_for(stack, job_id, finished, timeout=180)
    assert job.state == "cancelled" and job.progress_done < job.progress_total
    with session_scope(stack.settings) as session:
        assert backtest_crud.read_rows(session, job_id=job_id) is None
