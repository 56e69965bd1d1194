"""`GET /v1/forecasts`: the latest forecast per symbol, as of a time, of one schedule; Parquet."""

from __future__ import annotations

import io
from datetime import datetime, timezone

import pandas as pd
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from kronos_jobs.core.names import DEFAULT_TENANT
from kronos_jobs.crud import jobs as job_crud
from kronos_jobs.crud import results as result_crud
from kronos_jobs.crud import schedules as schedule_crud
from kronos_jobs.testing.factories import make_forecast_rows, make_job


def finished_job(db: Session, symbols, when: datetime, seed: int, state="succeeded") -> str:
    job = make_job(db)
    job_crud.claim_job(db, job_id=job.id, owner="t", lease_seconds=60)
    result_crud.write_forecasts(db, job_id=job.id, tenant_id=DEFAULT_TENANT,
                                rows=make_forecast_rows(symbols, quantiles=(0.5,), seed=seed))
    job_crud.finish_job(db, job_id=job.id, owner="t", state=state)
    db.get(type(job), job.id).finished_at = when
    db.commit()
    return job.id


def test_latest_as_of_and_schedule(client: TestClient, db: Session) -> None:
    old = finished_job(db, ["AAA", "BBB"], datetime(2024, 6, 17, 23, tzinfo=timezone.utc), seed=1)
    new = finished_job(db, ["AAA"], datetime(2024, 6, 18, 23, tzinfo=timezone.utc), seed=2)
    finished_job(db, ["AAA"], datetime(2024, 6, 19, 23, tzinfo=timezone.utc), seed=3, state="failed")

    latest = client.get("/v1/forecasts").json()
    by_symbol = {r["symbol"]: r["job_id"] for r in latest["rows"]}
    assert by_symbol == {"AAA": new, "BBB": old}
    assert latest["columns"][:8] == ["symbol", "timestamp", "open", "high", "low", "close", "volume", "amount"]
    assert "q0.5_close" in latest["columns"] and latest["columns"][-2:] == ["job_id", "forecast_at"]
    assert len([r for r in latest["rows"] if r["symbol"] == "AAA"]) == 4

    as_of = client.get("/v1/forecasts", params={"as_of": "2024-06-18T12:00:00Z", "symbol": "AAA"}).json()
    assert {r["job_id"] for r in as_of["rows"]} == {old} and {r["symbol"] for r in as_of["rows"]} == {"AAA"}

    schedule = client.post("/v1/schedules", json={"name": "n", "cron": "0 18 * * *", "model": "random:mini"}).json()
    run, _ = schedule_crud.create_run(db, schedule=schedule_crud.get_schedule(db, tenant_id=DEFAULT_TENANT, schedule_id=schedule["id"]),
                                      scheduled_for=datetime(2024, 6, 17, 22, tzinfo=timezone.utc), trigger="schedule")
    schedule_crud.link_job(db, run=run, batch=0, job_id=old)
    db.commit()
    of_schedule = client.get("/v1/forecasts", params={"schedule": schedule["id"]}).json()
    assert {r["job_id"] for r in of_schedule["rows"]} == {old}

    export = client.get("/v1/forecasts", params={"format": "parquet"})
    frame = pd.read_parquet(io.BytesIO(export.content))
    assert export.headers["content-type"] == "application/vnd.apache.parquet" and len(frame) == 8
    assert str(frame["timestamp"].dtype).endswith("UTC]")


def test_empty_and_bad_queries(client: TestClient) -> None:
    assert client.get("/v1/forecasts").json()["rows"] == []
    for params, status, field in [({"as_of": "later"}, 422, "as_of"), ({"symbol": "bad symbol"}, 422, "symbol[0]"),
                                  ({"schedule": "nope"}, 404, "schedule_id"), ({"format": "xlsx"}, 422, "format")]:
        r = client.get("/v1/forecasts", params=params)
        assert r.status_code == status, r.text
        assert field in [d["field"] for d in r.json()["error"]["details"]]
