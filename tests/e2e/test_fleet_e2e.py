"""Interactive before bulk, on a real worker (`--concurrency 2`): a one-symbol forecast posted
behind a queued nightly run finishes before any of the run's jobs, and the run still completes.
A large posted forecast runs in parts on both of the worker's processes.

The run is queued while the worker is stopped (a night's fan-out waiting on the broker), the
person's job is posted after it, then the worker starts. With KRONOS_QUEUE_POLICY=fifo the worker
would take two bulk jobs first and the person would wait for one of them to end.
"""

from __future__ import annotations

import pytest

from kronos_jobs.core.names import DEFAULT_TENANT
from kronos_jobs.crud import results as result_crud
from kronos_jobs.crud import schedules as schedule_crud
from kronos_jobs.crud import series as series_crud
from kronos_jobs.db.session import session_scope
from kronos_jobs.jobs import schedules
from kronos_jobs.testing.factories import make_bars
from tests.e2e.harness import finished, read, running_stack, submit, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

N_SYMBOLS = 40
FLEET_ENV = {  # chunks of a few series, so bulk jobs yield between chunks even on the tiny model
    "KRONOS_BULK_CHUNK_SECONDS": "0.05", "KRONOS_BULK_PROBE_SERIES": "2", "KRONOS_SCHEDULE_BATCH_SYMBOLS": "10",
    "KRONOS_MAX_BATCH_SIZE": "3", "KRONOS_SPLIT_MIN_SERIES": "3",  # a posted job of 24 series: parts of 9, 9, 6
}


@pytest.fixture(scope="module", params=["embedded", pytest.param("redis+postgresql", marks=pytest.mark.integration)])
def fleet_stack(request, tmp_path_factory):
    yield from running_stack(request.param, tmp_path_factory, FLEET_ENV)


def queue_a_nightly_run(stack) -> list[str]:
    settings = stack.settings
    symbols = {f"N{i:03d}": 60 for i in range(N_SYMBOLS)}
    with session_scope(settings) as session:
        series_crud.upsert_bars(session, tenant_id=DEFAULT_TENANT, bars=make_bars(symbols),
                                freqs={s: "5min" for s in symbols})
        schedule = schedules.create_schedule(session, tenant_id=DEFAULT_TENANT, fields=dict(
            name="nightly-fleet", cron="0 18 * * 1-5", timezone="UTC", symbols=None, freq=None,
            model=str(stack.checkpoint), device="cpu", lookback=48, pred_len=4, sampling={"seed": 5},
            quantiles=None, calendar={}, min_history=None, enabled=True), model_dirs=settings.effective_model_dirs)
    run, _ = schedules.trigger_run(settings, tenant_id=DEFAULT_TENANT, schedule_id=schedule.id)
    schedules.fan_out(settings, run.id)
    with session_scope(settings) as session:
        return [job.id for job in schedule_crud.run_jobs(session, run_id=run.id)]


def test_an_interactive_job_posted_behind_a_queued_bulk_run_finishes_first(fleet_stack):
    fleet_stack.stop_worker()
    bulk = queue_a_nightly_run(fleet_stack)
    assert len(bulk) == N_SYMBOLS // 10  # no live worker: the maximum batch decides
    person = submit(fleet_stack, make_bars({"PERSON": 60}))
    fleet_stack.start_worker(concurrency=2)

    mine = wait_for(fleet_stack, person, finished)
    assert mine.state == "succeeded" and mine.workload == "interactive"
    # When the person's forecast was done, no job of the run had ended: it waited one chunk at most.
    at_that_time = [read(fleet_stack, job_id) for job_id in bulk]
    assert all(j.finished_at is None or j.finished_at > mine.finished_at for j in at_that_time), \
        ([(j.state, j.progress_done, j.finished_at) for j in at_that_time], mine.started_at, mine.finished_at,
         fleet_stack.log.read_text()[-6000:])

    jobs = [wait_for(fleet_stack, job_id, finished, timeout=200) for job_id in bulk]
    assert {j.state for j in jobs} == {"succeeded"} and sum(j.progress_done for j in jobs) == N_SYMBOLS
    # A process's first chunk is a probe of KRONOS_BULK_PROBE_SERIES: at least that job yielded.
    assert max(j.execution_metadata["chunks"]["count"] for j in jobs) >= 2
    assert min(j.finished_at for j in jobs) > mine.finished_at


def test_a_large_posted_job_runs_in_parts_on_every_process(fleet_stack):
    fleet_stack.stop_worker()
    fleet_stack.start_worker(concurrency=2)
    bars = make_bars({f"P{i:02d}": 60 for i in range(24)})
    job = wait_for(fleet_stack, submit(fleet_stack, bars), finished, timeout=200)
    assert (job.state, job.parts, job.progress_done) == ("succeeded", 3, 24), job.error
    parts = job.execution_metadata["parts"]
    assert [(p["series"], p["offset"]) for p in parts] == [(9, 0), (9, 9), (6, 18)]
    # Both of the worker's processes took parts: the job did not wait on one of them.
    assert len({p["worker_pid"] for p in parts}) == 2, (parts, fleet_stack.log.read_text()[-4000:])
    with session_scope(fleet_stack.settings) as session:
        rows = result_crud.read_forecasts(session, job_id=job.id)
    assert rows.symbol.nunique() == 24 and len(rows) == 24 * 4
