"""What retention removed answers 410 Gone; what it kept (a job whose input went) reads as before."""

from __future__ import annotations

from datetime import timedelta

from kronos_jobs.core.names import DEFAULT_TENANT, JobState
from kronos_jobs.crud import results as result_crud
from kronos_jobs.db.models import utcnow
from kronos_jobs.jobs.retention import prune
from kronos_jobs.testing.factories import make_bars, make_forecast_rows, make_job


def finished(db, days_ago: int) -> str:
    job = make_job(db, commit=False)
    result_crud.save_job_input(db, job_id=job.id, tenant_id=DEFAULT_TENANT, bars=make_bars({"AAA": 10}), future=None,
                               source="inline")
    result_crud.write_forecasts(db, job_id=job.id, tenant_id=DEFAULT_TENANT, rows=make_forecast_rows(symbols=("AAA",)))
    job.state, job.finished_at = JobState.SUCCEEDED.value, utcnow() - timedelta(days=days_ago)
    db.commit()
    return job.id


def test_pruned_input_keeps_the_job_and_result_and_pruned_records_answer_410(client, db, settings):
    month_old, two_years_old = finished(db, 40), finished(db, 800)
    results_only = settings.model_copy(update={"retain_results_days": 365, "retain_jobs_days": 1000})
    prune(results_only)

    job = client.get(f"/v1/jobs/{month_old}").json()  # input pruned: metadata and result still there
    assert job["input_pruned_at"] is not None and job["result_pruned_at"] is None and job["state"] == "succeeded"
    assert len(client.get(f"/v1/jobs/{month_old}/result").json()["rows"]) == 4

    job = client.get(f"/v1/jobs/{two_years_old}").json()  # result pruned, job row kept
    assert job["result_pruned_at"] is not None
    gone = client.get(f"/v1/jobs/{two_years_old}/result")
    assert gone.status_code == 410
    assert gone.json()["error"]["code"] == "gone" and "KRONOS_RETAIN_RESULTS_DAYS" in gone.json()["error"]["message"]

    prune(settings)  # defaults: job rows go after a year
    for path in (f"/v1/jobs/{two_years_old}", f"/v1/jobs/{two_years_old}/result"):
        response = client.get(path)
        assert response.status_code == 410, path
        assert response.json()["error"]["details"] == [{"field": "job_id", "message": "job deleted by retention"}]
    assert client.get("/v1/jobs/" + "0" * 32).status_code == 404  # never existed: still 404
