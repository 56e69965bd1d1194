"""The console's pages in process: each renders, reads the caller's rows, and cancels through the API's code."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from kronos_jobs.core.names import JobState
from kronos_jobs.crud import jobs as job_crud
from kronos_jobs.crud import results as result_crud
from kronos_jobs.testing.factories import make_forecast_request, make_forecast_rows


@pytest.mark.parametrize("page", ["jobs", "workers", "queues", "schedules", "models", "series"])
def test_every_page_renders(client: TestClient, page: str) -> None:
    response = client.get(f"/console/{page}")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/html")
    assert '<a href="/console/jobs"' in response.text and "</html>" in response.text
    # the page's forms must carry their Origin (no-referrer would send `Origin: null`, refused as cross-site)
    assert response.headers["referrer-policy"] == "same-origin"


def test_home_redirects_and_static_files_are_served(client: TestClient) -> None:
    assert client.get("/console", follow_redirects=False).headers["location"] == "/console/jobs"
    assert "data-refresh" in client.get("/console/static/console.js").text


def test_jobs_filter_fragment_and_cancel(client: TestClient) -> None:
    job_id = client.post("/v1/jobs/forecast", json=make_forecast_request()).json()["id"]
    page = client.get("/console/jobs").text
    assert job_id[:12] in page and "random weights" in page and "cancel" in page
    assert job_id[:12] not in client.get("/console/jobs", params={"state": "succeeded"}).text
    assert job_id[:12] in client.get("/console/jobs", params={"kind": "forecast", "state": "queued"}).text
    fragment = client.get("/console/jobs", params={"fragment": "true"}).text
    assert fragment.lstrip().startswith("<tr") and "<html" not in fragment
    assert job_id[:12] in client.get("/console/jobs", params={"kind": "", "state": ""}).text  # the form's "any"
    refused = client.get("/console/jobs", params={"state": "nonsense"})
    assert refused.status_code == 422 and refused.json()["error"]["details"][0]["field"] == "state"
    cancelled = client.post(f"/console/jobs/{job_id}/cancel", follow_redirects=False)
    assert cancelled.status_code == 303 and cancelled.headers["location"] == f"/console/jobs/{job_id}"
    assert client.get(f"/v1/jobs/{job_id}").json()["state"] == "cancelled"


def test_job_page_shows_metadata_errors_and_charts(client: TestClient, db: Session) -> None:
    job_id = client.post("/v1/jobs/forecast", json=make_forecast_request(n_bars=30)).json()["id"]
    job_crud.claim_job(db, job_id=job_id, owner="w", lease_seconds=60)
    result_crud.write_forecasts(db, job_id=job_id, tenant_id="default",
                                rows=make_forecast_rows(symbols=("SYM0.SH",), steps=3, quantiles=(0.1, 0.9)))
    meta = {"device_resolved": "cpu", "device_name": "AMD EPYC", "model": "random:mini", "model_source": "random",
            "timings": {"model_load_seconds": 0.5, "inference_seconds": 1.25},
            "decode": {"requested_rows_per_chunk": 64, "rows_per_chunk": 64, "oom_retries": 0}}
    errors = [{"symbol": "SYM1.SH", "code": "too_short", "message": "SYM1.SH has 3 bars"}]
    job_crud.finish_job(db, job_id=job_id, owner="w", state=JobState.PARTIALLY_SUCCEEDED, execution_metadata=meta,
                        symbol_errors=errors, error={"code": "some_series_failed", "message": "1 of 2 series failed"})
    db.commit()
    page = client.get(f"/console/jobs/{job_id}").text
    for text in ("partially_succeeded", "AMD EPYC", "inference 1.250 s", "64 rows per chunk", "SYM1.SH has 3 bars",
                 "random weights", f"/console/jobs/{job_id}/chart.svg?symbol=SYM0.SH"):
        assert text in page, text
    assert "data-refresh" not in page  # a finished job needs no polling
    chart = client.get(f"/console/jobs/{job_id}/chart.svg", params={"symbol": "SYM0.SH"})
    assert chart.status_code == 200 and chart.headers["content-type"].startswith("image/svg+xml")
    assert client.get("/console/jobs/nope").status_code == 404


def test_models_page_shows_a_finetunes_evaluation(client: TestClient, db: Session) -> None:
    from kronos_jobs.crud import models as model_crud

    evaluation = {"n_windows": 12, "horizon": 4, "symbols": ["A"],
                  "base": {"mse_close": 0.25, "direction_accuracy": 0.5},
                  "finetuned": {"mse_close": 0.125, "direction_accuracy": 0.75},
                  "last_value": {"mse_close": 0.3, "direction_accuracy": None}}
    model_crud.register_model(db, model_id="ft-eval", tenant_id="default", kind="finetuned", max_context=64,
                              base_model="random:mini", artifact_path="/tmp/ft-eval", checksum="0" * 64,
                              metrics={"evaluation": evaluation, "phases": {}})
    db.commit()
    page = " ".join(client.get("/console/models").text.split())
    assert "12 held-out windows of 4 bars" in page
    assert "finetuned mse 0.125, direction 75%" in page and "last_value mse 0.3 ·" not in page
    assert "ft-eval <span class=\"warn\">random weights</span>" in page


def test_console_login_keeps_the_key_in_a_cookie_for_console_pages_only(client: TestClient, make_key) -> None:
    from api.auth import CONSOLE_COOKIE

    client.headers.pop("Authorization")
    assert client.get("/console/jobs", follow_redirects=False).headers["location"] == "/console/login"
    assert "API key" in client.get("/console/login").text
    refused = client.post("/console/login", data={"key": "kj_not_a_key"}, follow_redirects=False)
    assert refused.status_code == 200 and "unknown or revoked API key" in refused.text
    logged_in = client.post("/console/login", data={"key": make_key(scopes=("read",))}, follow_redirects=False)
    assert logged_in.status_code == 303 and logged_in.headers["location"] == "/console/jobs"
    cookie = logged_in.headers["set-cookie"]
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie and "Path=/console" in cookie
    assert client.cookies.get(CONSOLE_COOKIE)
    assert client.get("/console/jobs").status_code == 200
    # the JSON API never takes the key from the cookie, and a read-only key cannot cancel
    assert client.get("/v1/jobs", cookies={CONSOLE_COOKIE: client.cookies.get(CONSOLE_COOKIE)}).status_code == 401
    assert client.post("/console/jobs/abc/cancel", follow_redirects=False).status_code == 403
    client.post("/console/logout")
    assert client.get("/console/jobs", follow_redirects=False).status_code == 303


def test_schedules_page_shows_live_scores_against_persistence(client: TestClient, db: Session) -> None:
    from datetime import datetime, timedelta, timezone

    from kronos_jobs.crud import scores as score_crud
    from kronos_jobs.testing.factories import make_job

    schedule = client.post("/v1/schedules", json={"name": "nightly", "cron": "0 18 * * 1-5", "timezone": "UTC",
                                                  "model": "random:mini", "symbols": ["AAA"]})
    assert schedule.status_code == 201, schedule.text
    schedule_id = schedule.json()["id"]
    assert "no scored forecasts yet" in client.get("/console/schedules").text
    job = make_job(db)
    now = datetime.now(timezone.utc).replace(microsecond=0, tzinfo=None)
    # forecast errors 1 and 3 (MAE 2) against persistence's 4 and 4 (MAE 4): skill 0.5, direction right both times
    score_crud.insert_scores(db, records=[
        {"job_id": job.id, "symbol": "AAA", "step": step, "tenant_id": "default", "schedule_id": schedule_id,
         "model": "random:mini", "timestamp": now - timedelta(hours=2 - step), "forecast": forecast,
         "actual": 14.0, "naive": 10.0}
        for step, forecast in ((0, 13.0), (1, 11.0))])
    db.commit()
    page = client.get("/console/schedules").text
    assert "Live scores, last 30 days" in page
    row = page.split("<table class=\"grid scores\">")[1].split("</table>")[0]
    for cell in ("<td>random:mini</td><td>2</td>", "<td>2</td><td>4</td>", "<td>0.500</td>", "<td>100.0%</td>"):
        assert cell in row, row
