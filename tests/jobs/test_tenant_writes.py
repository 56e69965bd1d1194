"""Workers and beat write every row under the tenant of the job or schedule they work for: job
inputs and forecast rows, schedule runs, their jobs and links, and fine-tuned models."""

from __future__ import annotations

from sqlalchemy import select

from kronos_jobs.core.names import JobState
from kronos_jobs.crud import series as series_crud
from kronos_jobs.db.models import ForecastRow, Job, JobInput, ModelVersion, ScheduleRun, ScheduleRunJob
from kronos_jobs.db.session import session_scope
from kronos_jobs.jobs import schedules
from kronos_jobs.jobs.finetune import run_finetune_job
from kronos_jobs.jobs.finetune_submit import submit_finetune
from kronos_jobs.jobs.forecast import run_forecast_job
from kronos_jobs.testing.factories import TINY_FINETUNE, make_bars, worker_identity

TENANT = "acme"


def tenants_of(settings, model) -> set[str]:
    with session_scope(settings) as session:
        return set(session.scalars(select(model.tenant_id)))


def test_a_schedule_run_and_its_forecasts_keep_the_schedule_tenant(job_settings, tiny_checkpoint):
    bars = make_bars({"AAA": 60, "BBB": 60})
    with session_scope(job_settings) as session:
        series_crud.upsert_bars(session, tenant_id=TENANT, bars=bars, freqs={"AAA": "5min", "BBB": "5min"})
        schedule = schedules.create_schedule(session, tenant_id=TENANT, fields=dict(
            name="nightly", cron="0 18 * * 1-5", timezone="UTC", symbols=None, freq=None, model=str(tiny_checkpoint),
            device="cpu", lookback=32, pred_len=2, sampling={"seed": 1}, quantiles=None, calendar={},
            min_history=None, enabled=True), model_dirs=job_settings.effective_model_dirs)
        schedule_id = schedule.id
    run, _ = schedules.trigger_run(job_settings, tenant_id=TENANT, schedule_id=schedule_id)
    schedules.fan_out(job_settings, run.id)
    with session_scope(job_settings) as session:
        job_ids = list(session.scalars(select(Job.id)))
    assert job_ids
    for job_id in job_ids:
        assert run_forecast_job(job_id, settings=job_settings, identity=worker_identity(job_settings)) is JobState.SUCCEEDED
    for model in (Job, JobInput, ForecastRow, ScheduleRun, ScheduleRunJob):
        assert tenants_of(job_settings, model) == {TENANT}, model.__name__


def test_a_fine_tune_registers_its_model_under_the_job_tenant(job_settings, tiny_checkpoint):
    with session_scope(job_settings) as session:
        job, _ = submit_finetune(session, job_settings, tenant_id=TENANT, bars=make_bars({"AAA": 200, "BBB": 200}),
                                 request={"model": str(tiny_checkpoint), **TINY_FINETUNE, "train": "predictor"},
                                 source="csv")
        job_id = job.id
    assert run_finetune_job(job_id, settings=job_settings, identity=worker_identity(job_settings)) is JobState.SUCCEEDED
    assert tenants_of(job_settings, ModelVersion) == {TENANT}
    assert tenants_of(job_settings, Job) == {TENANT}
