"""A large POSTed forecast split over the live worker slots, run in-process on a migrated test
database: the parts are ordinary jobs, the parent ends in one transaction with exactly the forecast
the unsplit job makes, and cancels, duplicates and parts that die are settled."""

from __future__ import annotations

import pandas as pd
import pytest
from sqlalchemy import func, select

from kronos_jobs.core.errors import LeaseLost
from kronos_jobs.core.names import DEFAULT_TENANT, JobState
from kronos_jobs.crud import jobs as job_crud
from kronos_jobs.crud import workers as worker_crud
from kronos_jobs.db.models import ForecastRow, Job
from kronos_jobs.db.session import session_scope
from kronos_jobs.jobs import parts, recovery
from kronos_jobs.jobs.forecast import run_forecast_job
from kronos_jobs.testing.factories import load_forecast_job as load
from kronos_jobs.testing.factories import make_bars, worker_identity
from kronos_jobs.testing.factories import submit_forecast_job as submit

SYMBOLS = {s: 30 for s in "ABCDEFG"}  # batches of 2: [A B] [C D] [E F] [G]


@pytest.fixture
def split_settings(job_settings):
    """Two live slots on forecast.cpu; parts may be as small as one batch."""
    settings = job_settings.model_copy(update={"split_min_series": 1})
    with session_scope(settings) as session:
        worker_crud.register_worker(session, worker_id="cpu0@h", hostname="h", pid=1, pool="cpu",
                                    queues=["forecast.cpu"], concurrency=2, torch_threads=1, device_requested="cpu",
                                    device_resolved="cpu", device_name="cpu", device_warning=None, device_info={})
    return settings


def deliver(settings, job_id):
    return run_forecast_job(job_id, settings=settings, identity=worker_identity(settings))


def part_jobs(settings, parent_id) -> list[Job]:
    with session_scope(settings) as session:
        found = list(session.scalars(select(Job).where(Job.parent_id == parent_id)))
        session.expunge_all()
    return sorted(found, key=lambda job: job.params["part_offset"])


def test_a_large_job_runs_in_parts_on_the_live_slots_and_equals_the_unsplit_job(split_settings):
    bars = make_bars(SYMBOLS)
    parent = submit(split_settings, split_settings.model_dirs[0] / "tiny", bars)
    fifo = split_settings.model_copy(update={"queue_policy": "fifo"})
    whole = submit(fifo, split_settings.model_dirs[0] / "tiny", bars)

    assert deliver(split_settings, parent) is JobState.RUNNING
    job, rows = load(split_settings, parent)
    assert (job.state, job.parts, job.lease_owner, job.lease_expires_at) == ("running", 2, None, None) and rows.empty
    found = part_jobs(split_settings, parent)
    # Whole batches of two, as evenly as the two slots allow; the parent's priority, queue and seed.
    assert [(p.progress_total, p.params["part_offset"]) for p in found] == [(4, 0), (3, 4)]
    assert {(p.state, p.priority, p.workload, p.queue) for p in found} == {("queued", job.priority, "interactive", job.queue)}
    assert {p.params["sampling"]["seed"] for p in found} == {7} and not any(p.params["score"] for p in found)
    with session_scope(split_settings) as session:
        listed, _ = job_crud.list_jobs(session, tenant_id=DEFAULT_TENANT)
        assert {j.id for j in listed} == {parent, whole}  # parts live inside their job
        assert job_crud.count_in_flight(session, tenant_id=DEFAULT_TENANT) == 2

    with pytest.raises(LeaseLost):  # a duplicate of the parent's message: nothing claims it again
        deliver(split_settings, parent)

    assert deliver(split_settings, found[1].id) is JobState.SUCCEEDED
    job, rows = load(split_settings, parent)
    assert job.state == "running" and job.progress_done == 3 and rows.empty  # progress follows the parts
    assert deliver(split_settings, found[0].id) is JobState.SUCCEEDED
    assert deliver(fifo, whole) is JobState.SUCCEEDED

    job, rows = load(split_settings, parent)
    assert (job.state, job.progress_done, job.progress_total, job.error) == ("succeeded", 7, 7, None)
    assert part_jobs(split_settings, parent) == []  # deleted with the parent's finish
    meta = job.execution_metadata
    assert [(p["series"], p["offset"], p["state"]) for p in meta["parts"]] == [(4, 0, "succeeded"), (3, 4, "succeeded")]
    assert meta["seed"] == 7 and meta["device_resolved"] == "cpu" and meta["priority"] == job.priority
    # Sampled forecasts equal the unsplit job's: the same batches drew the same seeds.
    expected = load(fifo, whole)[1]
    pd.testing.assert_frame_equal(rows.reset_index(drop=True), expected.reset_index(drop=True))


def test_small_jobs_and_fifo_run_whole(split_settings):
    checkpoint = split_settings.model_dirs[0] / "tiny"
    settings = split_settings.model_copy(update={"split_min_series": 4})
    small = submit(settings, checkpoint, make_bars({"A": 30, "B": 30, "C": 30, "D": 30, "E": 30}))
    assert deliver(settings, small) is JobState.SUCCEEDED  # [A-D] [E]: the short part joins the first
    fifo = split_settings.model_copy(update={"queue_policy": "fifo"})
    job_id = submit(fifo, checkpoint, make_bars(SYMBOLS))
    assert deliver(fifo, job_id) is JobState.SUCCEEDED


def test_without_live_workers_a_job_runs_whole(job_settings, tiny_checkpoint):
    settings = job_settings.model_copy(update={"split_min_series": 1})
    job_id = submit(settings, tiny_checkpoint, make_bars(SYMBOLS))
    assert deliver(settings, job_id) is JobState.SUCCEEDED and load(settings, job_id)[0].parts is None


def test_a_cancel_reaches_the_parts_and_keeps_what_finished(split_settings):
    parent = submit(split_settings, split_settings.model_dirs[0] / "tiny", make_bars(SYMBOLS))
    assert deliver(split_settings, parent) is JobState.RUNNING
    first, second = part_jobs(split_settings, parent)
    assert deliver(split_settings, first.id) is JobState.SUCCEEDED
    with session_scope(split_settings) as session:
        job = job_crud.request_cancel(session, tenant_id=DEFAULT_TENANT, job_id=parent)
        assert job.state == "running" and job.cancel_requested
        assert session.get(Job, second.id).state == "cancelled"  # it was still queued
    with pytest.raises(LeaseLost):  # its message arrives after the cancel
        deliver(split_settings, second.id)
    assert recovery.sweep(split_settings)["settled"] == [parent]
    job, rows = load(split_settings, parent)
    assert job.state == "cancelled" and job.error["code"] == "cancelled" and set(rows.symbol) == set("ABCD")
    assert part_jobs(split_settings, parent) == []


def test_a_part_killed_at_the_hard_limit_leaves_its_series_as_errors(split_settings):
    parent = submit(split_settings, split_settings.model_dirs[0] / "tiny", make_bars(SYMBOLS))
    assert deliver(split_settings, parent) is JobState.RUNNING
    first, second = part_jobs(split_settings, parent)
    assert deliver(split_settings, first.id) is JobState.SUCCEEDED
    with session_scope(split_settings) as session:  # the second part's worker claims it and is killed
        job_crud.claim_job(session, job_id=second.id, owner="doomed", lease_seconds=60)
    assert recovery.fail_after_hard_time_limit(second.id, settings=split_settings, limit=10)
    assert parts.settle_finished_parents(split_settings) == [parent]
    job, rows = load(split_settings, parent)
    assert job.state == "partially_succeeded" and job.error["code"] == "some_series_failed"
    assert sorted((e["symbol"], e["code"]) for e in job.symbol_errors) == [(s, "hard_time_limit") for s in "EFG"]
    assert set(rows.symbol) == set("ABCD")
    with session_scope(split_settings) as session:
        assert session.scalar(select(func.count()).select_from(ForecastRow).where(ForecastRow.job_id == parent)) == 16
