"""Retention on a migrated database (SQLite, and PostgreSQL when configured): what is due goes, in
bounded statements; what is not due, or still running, stays; what went answers Gone."""

from __future__ import annotations

import uuid
from datetime import timedelta

import pytest
from sqlalchemy import event, func, select

from kronos_jobs.core.errors import Gone, InvalidRequest, NotFound
from kronos_jobs.core.names import DEFAULT_TENANT, JobState
from kronos_jobs.crud import jobs as job_crud
from kronos_jobs.crud import models as model_crud
from kronos_jobs.crud import results as result_crud
from kronos_jobs.crud import schedules as schedule_crud
from kronos_jobs.db.models import ForecastRow, Job, JobInput, Schedule, ScheduleRun, ScheduleRunJob, utcnow
from kronos_jobs.db.session import get_engine, session_scope
from kronos_jobs.jobs.registry import resolve_model
from kronos_jobs.jobs.retention import prune
from kronos_jobs.testing.factories import make_bars, make_forecast_rows, make_job

NOW = utcnow()
SYMBOLS = ("AAA", "BBB")  # x 4 steps = 8 forecast rows per job


def finished_job(settings, days_ago: float | None, *, state: str = JobState.SUCCEEDED.value) -> str:
    """A forecast job with a stored input and 8 result rows, finished `days_ago` (None: still running)."""
    with session_scope(settings) as session:
        job = make_job(session, commit=False)
        result_crud.save_job_input(session, job_id=job.id, tenant_id=DEFAULT_TENANT,
                                   bars=make_bars({s: 10 for s in SYMBOLS}), future=None, source="inline")
        result_crud.write_forecasts(session, job_id=job.id, tenant_id=DEFAULT_TENANT,
                                    rows=make_forecast_rows(symbols=SYMBOLS, steps=4))
        job.execution_metadata = {"device_resolved": "cpu"}
        if days_ago is None:
            job.state = JobState.RUNNING.value
        else:
            job.state, job.finished_at = state, NOW - timedelta(days=days_ago)
        return job.id


def schedule_run(settings, days_ago: float, job_id: str) -> str:
    with session_scope(settings) as session:
        schedule = Schedule(id=uuid.uuid4().hex, tenant_id=DEFAULT_TENANT, name=f"s-{uuid.uuid4().hex[:6]}",
                            cron="0 18 * * 1-5", timezone="UTC", model="random:mini", device="cpu", params={}, calendar={})
        run = ScheduleRun(id=uuid.uuid4().hex, tenant_id=DEFAULT_TENANT, schedule_id=schedule.id,
                          scheduled_for=NOW - timedelta(days=days_ago), trigger="schedule", state="succeeded",
                          finished_at=NOW - timedelta(days=days_ago))
        session.add_all([schedule, run])
        session.flush()
        session.add(ScheduleRunJob(run_id=run.id, batch=0, job_id=job_id, schedule_id=schedule.id, tenant_id=DEFAULT_TENANT))
        return run.id


def counts(settings, job_id):
    with session_scope(settings) as session:
        return (session.scalar(select(func.count()).select_from(Job).where(Job.id == job_id)),
                session.scalar(select(func.count()).select_from(JobInput).where(JobInput.job_id == job_id)),
                session.scalar(select(func.count()).select_from(ForecastRow).where(ForecastRow.job_id == job_id)))


@pytest.fixture
def aged(db_settings):
    """Jobs finished 10, 40 and 400 days ago, one still running, and a run from 400 days ago."""
    jobs = {"recent": finished_job(db_settings, 10), "month_old": finished_job(db_settings, 40),
            "year_old": finished_job(db_settings, 400), "running": finished_job(db_settings, None),
            "old_failed": finished_job(db_settings, 500, state=JobState.FAILED.value)}
    jobs["run"] = schedule_run(db_settings, 400, jobs["year_old"])
    return jobs


def test_a_dry_run_counts_what_would_go_and_deletes_nothing(db_settings, aged):
    report = prune(db_settings, now=NOW, dry_run=True)
    assert (report.inputs, report.result_jobs, report.result_rows, report.jobs, report.schedule_runs) == (3, 2, 16, 2, 1)
    assert report.input_bytes > 0
    assert "would delete 16 forecast rows of 2 jobs" in "\n".join(report.lines())
    for job_id in (aged["recent"], aged["month_old"], aged["year_old"]):
        assert counts(db_settings, job_id) == (1, 1, 8)


def test_prune_deletes_in_bounded_statements_and_keeps_what_is_not_due(db_settings, aged):
    settings = db_settings.model_copy(update={"prune_batch_rows": 3})
    deletes: list[int] = []

    def record(conn, cursor, statement, parameters, context, executemany):
        if statement.lstrip().upper().startswith("DELETE FROM FORECASTS"):
            deletes.append(cursor.rowcount)

    engine = get_engine(settings)
    event.listen(engine, "after_cursor_execute", record)
    try:
        report = prune(settings, now=NOW)
    finally:
        event.remove(engine, "after_cursor_execute", record)
    assert (report.inputs, report.result_jobs, report.result_rows, report.jobs, report.schedule_runs) == (3, 2, 16, 2, 1)
    assert deletes and max(deletes) <= 3  # 16 rows went in statements of at most KRONOS_PRUNE_BATCH_ROWS

    assert counts(settings, aged["recent"]) == (1, 1, 8)  # not due: untouched
    assert counts(settings, aged["running"]) == (1, 1, 8)  # never pruned while unfinished
    assert counts(settings, aged["month_old"]) == (1, 0, 8)  # input gone; metadata and result stay
    with session_scope(settings) as session:
        job = job_crud.get_job(session, tenant_id=DEFAULT_TENANT, job_id=aged["month_old"])
        assert job.input_pruned_at is not None and job.result_pruned_at is None
        assert job.execution_metadata == {"device_resolved": "cpu"} and job.state == "succeeded"
        assert len(result_crud.read_forecasts(session, job_id=job.id)) == 8
        for job_id in (aged["year_old"], aged["old_failed"]):
            assert counts(settings, job_id) == (0, 0, 0)
            with pytest.raises(Gone, match="deleted by retention"):
                job_crud.get_job(session, tenant_id=DEFAULT_TENANT, job_id=job_id)
        with pytest.raises(Gone):
            schedule_crud.get_run(session, tenant_id=DEFAULT_TENANT, run_id=aged["run"])
        with pytest.raises(NotFound):  # a tombstone answers its own tenant only; others still see nothing
            job_crud.get_job(session, tenant_id="other-tenant", job_id=aged["year_old"])

    again = prune(settings, now=NOW)  # nothing left to do: a second prune is a no-op
    assert (again.inputs, again.result_rows, again.jobs, again.schedule_runs) == (0, 0, 0, 0)


def test_results_can_go_before_their_job_rows(db_settings, aged):
    settings = db_settings.model_copy(update={"retain_results_days": 30, "retain_jobs_days": 0})
    report = prune(settings, now=NOW)
    assert report.jobs == 0 and report.result_jobs == 3
    with session_scope(settings) as session:
        job = job_crud.get_job(session, tenant_id=DEFAULT_TENANT, job_id=aged["month_old"])
        assert job.result_pruned_at is not None and job.input_pruned_at is not None
    assert counts(settings, aged["month_old"]) == (1, 0, 0)


def test_zero_days_keeps_everything(db_settings, aged):
    settings = db_settings.model_copy(update={"retain_inputs_days": 0, "retain_results_days": 0, "retain_jobs_days": 0,
                                              "retain_schedule_runs_days": 0, "retain_retired_models_days": 0})
    report = prune(settings, now=NOW)
    assert (report.inputs, report.result_rows, report.jobs, report.schedule_runs) == (0, 0, 0, 0)
    assert counts(settings, aged["year_old"]) == (1, 1, 8)


def test_retired_models_lose_their_files_only_inside_the_artifact_store(db_settings, tmp_path):
    inside = db_settings.effective_artifacts_dir / "job-a" / "final"
    (inside / "model").mkdir(parents=True)
    (inside / "model" / "model.safetensors").write_bytes(b"w")
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    with session_scope(db_settings) as session:
        live = db_settings.effective_artifacts_dir / "job-b" / "final"
        for model_id, path in (("ft-inside", inside), ("ft-outside", outside), ("ft-live", live)):
            model_crud.register_model(session, model_id=model_id, tenant_id=DEFAULT_TENANT, kind="finetuned",
                                      max_context=64, artifact_path=str(path), checksum="c" * 64)
        for model_id in ("ft-inside", "ft-outside"):
            model_crud.retire_model(session, tenant_id=DEFAULT_TENANT, model_id=model_id).retired_at = NOW - timedelta(days=100)

    dry = prune(db_settings, now=NOW, dry_run=True)
    assert dry.model_artifacts == ["ft-inside"] and dry.skipped_artifacts == ["ft-outside"] and inside.exists()
    report = prune(db_settings, now=NOW)
    assert report.model_artifacts == ["ft-inside"] and not inside.exists() and outside.exists()
    with session_scope(db_settings) as session:
        assert model_crud.get_model(session, tenant_id=DEFAULT_TENANT, model_id="ft-inside").artifact_pruned_at is not None
        assert model_crud.get_model(session, tenant_id=DEFAULT_TENANT, model_id="ft-live").artifact_pruned_at is None
        with pytest.raises(InvalidRequest, match="retired"):
            resolve_model("ft-inside", session, tenant_id=DEFAULT_TENANT)
