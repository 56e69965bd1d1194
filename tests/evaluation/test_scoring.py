"""Live scoring of a schedule's run: nothing before the bars arrive, each bar once it does (partial
horizons as far as bars exist), nothing twice; and `GET /v1/scores` over the scored bars."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pandas as pd
import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from kronos_jobs.core.names import DEFAULT_TENANT
from kronos_jobs.crud import results as result_crud
from kronos_jobs.crud import schedules as schedule_crud
from kronos_jobs.crud import scores as score_crud
from kronos_jobs.crud import series as series_crud
from kronos_jobs.db.session import session_scope
from kronos_jobs.evaluation.scoring import rolling_scores, score_new_forecasts
from kronos_jobs.jobs import schedules
from kronos_jobs.jobs.forecast import run_forecast_job
from kronos_jobs.testing.factories import make_bars, submit_forecast_job, worker_identity


def score(settings) -> int:
    with session_scope(settings) as session:
        return score_new_forecasts(session)


def arrive(settings, bars: pd.DataFrame) -> None:
    with session_scope(settings) as session:
        series_crud.upsert_bars(session, tenant_id=DEFAULT_TENANT, bars=bars, freqs={"AAA": "5min"})


@pytest.fixture
def scheduled(job_settings, tiny_checkpoint):
    """A schedule's run over AAA (40 stored bars, 4 steps forecast), its job finished by a worker;
    the 4 realized bars that come later are returned, not stored."""
    history = make_bars({"AAA": 44})
    arrive(job_settings, history.iloc[:40])
    fields = dict(name="nightly", cron="0 18 * * 1-5", timezone="UTC", symbols=["AAA"], freq=None,
                  model=str(tiny_checkpoint), device="cpu", lookback=32, pred_len=4, sampling={"seed": 1},
                  quantiles=None, calendar={}, min_history=None, enabled=True)
    with session_scope(job_settings) as session:
        schedule_id = schedules.create_schedule(session, tenant_id=DEFAULT_TENANT, fields=fields,
                                               model_dirs=job_settings.effective_model_dirs).id
    run, _ = schedules.trigger_run(job_settings, tenant_id=DEFAULT_TENANT, schedule_id=schedule_id,
                                scheduled_for=datetime(2024, 6, 18, 18, tzinfo=timezone.utc))
    schedules.fan_out(job_settings, run.id)
    with session_scope(job_settings) as session:
        job_id = schedule_crud.run_jobs(session, run_id=run.id)[0].id
    run_forecast_job(job_id, settings=job_settings, identity=worker_identity(job_settings))
    with session_scope(job_settings) as session:
        forecast = result_crud.read_forecasts(session, job_id=job_id)
    realized = history.iloc[40:].reset_index(drop=True)
    assert list(forecast["timestamp"]) == list(realized["timestamp"])
    return schedule_id, job_id, forecast, realized, history.iloc[39]["close"]


def test_scored_once_the_bars_arrive_and_not_before(job_settings, scheduled):
    schedule_id, job_id, forecast, realized, last_close = scheduled
    assert score(job_settings) == 0  # no realized bar yet

    arrive(job_settings, realized.iloc[:2])
    assert score(job_settings) == 2  # a partial horizon: the two bars that exist
    assert score(job_settings) == 0  # idempotent
    arrive(job_settings, realized.iloc[2:])
    assert score(job_settings) == 2

    with session_scope(job_settings) as session:
        scored = score_crud.read_scores(session, tenant_id=DEFAULT_TENANT, schedule_id=schedule_id)
    assert list(scored["step"]) == [0, 1, 2, 3] and set(scored["job_id"]) == {job_id}
    np.testing.assert_allclose(scored["forecast"], forecast["close"])
    np.testing.assert_allclose(scored["actual"], realized["close"])
    assert (scored["naive"] == last_close).all()

    table = rolling_scores(scored)
    row = table.iloc[0]
    assert row["n"] == 4 and row["schedule_id"] == schedule_id
    assert row["mae"] == pytest.approx(np.mean(np.abs(realized["close"] - forecast["close"])))
    assert row["mae_naive"] == pytest.approx(np.mean(np.abs(realized["close"] - last_close)))
    assert row["skill"] == pytest.approx(1 - row["mae"] / row["mae_naive"])

    # Keys are the auth tests' business: this API runs keyless on loopback.
    api_settings = job_settings.model_copy(update={"auth": "off"})
    with TestClient(create_app(api_settings), base_url="http://127.0.0.1") as client:
        body = client.get("/v1/scores", params={"schedule": schedule_id, "since": "2024-06-18T00:00:00Z"}).json()
        assert body["rows"][0]["n"] == 4 and body["rows"][0]["mae"] == pytest.approx(row["mae"])
        assert client.get("/v1/scores", params={"since": "2030-01-01T00:00:00Z"}).json()["rows"] == []
        assert client.get("/v1/scores", params={"symbol": "AAA", "by": "symbol"}).json()["rows"][0]["symbol"] == "AAA"
        assert client.get("/v1/scores", params={"schedule": "nope"}).status_code == 404


def test_only_opted_in_forecast_jobs_are_scored(job_settings, tiny_checkpoint):
    bars = make_bars({"AAA": 44})
    arrive(job_settings, bars.iloc[:40])
    plain = submit_forecast_job(job_settings, tiny_checkpoint, bars.iloc[:40], quantiles=None)
    opted = submit_forecast_job(job_settings, tiny_checkpoint, bars.iloc[:40], quantiles=None, score=True)
    for job_id in (plain, opted):
        run_forecast_job(job_id, settings=job_settings, identity=worker_identity(job_settings))
    arrive(job_settings, bars.iloc[40:])
    assert score(job_settings) == 4
    with session_scope(job_settings) as session:
        assert set(score_crud.read_scores(session, tenant_id=DEFAULT_TENANT)["job_id"]) == {opted}
