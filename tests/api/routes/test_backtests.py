"""`POST /v1/jobs/backtest`, a backtest's `/result` and `/metrics`: inputs, every bad input (a 422 naming
the field, nothing queued) and the tables a finished backtest serves."""

from __future__ import annotations

import io
import json

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from kronos_jobs.core.settings import Settings
from kronos_jobs.testing.checkpoints import save_tiny_checkpoint
from kronos_jobs.testing.factories import bar_records, bars_frame, run_backtest_to_end

BACKTEST = "/v1/jobs/backtest"


def body(n_bars: int = 60, **overrides) -> dict:
    request = {"models": ["random:mini"], "device": "cpu", "lookbacks": [24], "horizon": 4, "n_windows": 3,
               "step_size": 4, "sampling": {"top_k": 1, "sample_count": 1, "seed": 1},
               "series": [{"symbol": f"S{i}", "freq": "5min", "bars": bar_records(n_bars, price=10.0 + i)} for i in range(2)]}
    request.update(overrides)
    return request


def assert_422(client: TestClient, request: dict, field: str, *words: str) -> None:
    response = client.post(BACKTEST, json=request)
    assert response.status_code == 422, response.text
    error = response.json()["error"]
    assert field in [d["field"] for d in error["details"]], error
    for word in words:
        assert word in error["message"], error
    assert client.get("/v1/jobs").json()["data"] == []  # nothing queued


def test_accepted_on_the_forecast_queue(client: TestClient) -> None:
    response = client.post(BACKTEST, json=body())
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["kind"] == "backtest" and job["state"] == "queued" and job["queue"] == "forecast.cpu"
    assert job["progress"]["total"] == 2 * 3 and job["params"]["baselines"] == ["naive", "seasonal_naive", "drift"]
    assert client.get(f"/v1/jobs/{job['id']}/metrics").status_code == 409  # not finished


def test_upload_and_series_store(client: TestClient) -> None:
    csv = bars_frame(2, 60).to_csv(index=False).encode()
    params = {k: v for k, v in body().items() if k != "series"}
    upload = client.post(BACKTEST, files={"file": ("bars.csv", csv, "text/csv")},
                         data={"request": json.dumps({**params, "freq": "5min"})})
    assert upload.status_code == 202, upload.text
    stored = client.post("/v1/series/S0/bars", json={"freq": "5min", "bars": bar_records(80)})
    assert stored.status_code in (200, 201), stored.text
    ranged = client.post(BACKTEST, json={**params, "series_store": {"symbols": ["S0"], "start": bar_records(80)[10]["timestamp"]}})
    assert ranged.status_code == 202, ranged.text
    assert client.get(f"/v1/jobs/{ranged.json()['id']}").json()["params"]["source"] == "store"
    assert_422_store = client.post(BACKTEST, json={**params, "series_store": {"symbols": ["NOPE"]}})
    assert assert_422_store.status_code == 422
    assert [d["field"] for d in assert_422_store.json()["error"]["details"]] == ["series_store.symbols[0]"]


def test_exactly_enough_history_is_accepted(client: TestClient) -> None:
    # lookback 40 + horizon 4 + (5 - 1) windows x step 4 = 60 bars, all there are.
    assert client.post(BACKTEST, json=body(lookbacks=[40], n_windows=5)).status_code == 202


@pytest.mark.parametrize(("overrides", "field", "words"), [
    ({"lookbacks": [41], "n_windows": 5}, "n_windows", ("needs 61", "60 bars")),
    ({"lookbacks": [24, 50]}, "n_windows", ("needs 62",)),
    ({"horizon": 5000}, "horizon", ("context length 2048",)),
    ({"n_windows": None, "step_size": None, "origins": ["2024-06-18T03:30:00Z", "2024-06-18T03:30:00+00:00"]},
     "origins[1]", ("duplicate",)),
    ({"n_windows": None, "origins": ["2024-06-18T01:35:00Z"]}, "origins[0]", ("lookback 24 needs 24",)),
    ({"n_windows": None, "origins": ["2024-06-18T06:20:00Z"]}, "origins[0]", ("horizon 4 needs 4",)),
    ({"baselines": ["naive", "arima"]}, "baselines[1]", ("unknown baseline 'arima'",)),
    ({"quantiles": [0.1, 0.9]}, "quantiles", ("sample_count >= 2",)),
    ({"models": ["no-such-model"]}, "models[0]", ()),
    ({"n_windows": None}, "n_windows", ()),
    ({"horizons": [2, 9]}, "horizons[1]", ("between 1 and horizon 4",)),
    ({"lookbacks": [1]}, "lookbacks[0]", (">= 2",)),
    ({"repeats": 0}, "repeats", ()),
    ({"sampling": {"top_p": 2}}, "sampling.top_p", ()),
    ({"series": []}, "series", ()),
], ids=["too-little-history", "longest-lookback-counts", "horizon-beyond-context", "duplicate-origins",
        "origin-without-context", "origin-without-truth", "unknown-baseline", "quantiles-without-samples",
        "unknown-model", "no-origins", "sub-horizon-too-long", "lookback-too-short", "repeats", "sampling", "no-series"])
def test_bad_input_is_a_422_naming_the_field(client: TestClient, overrides, field, words) -> None:
    assert_422(client, body(**overrides), field, *words)


def test_a_finished_backtest_serves_rows_and_metrics(settings: Settings, tmp_path) -> None:
    root = tmp_path / "models"
    save_tiny_checkpoint(root / "tiny")
    settings = settings.model_copy(update={"model_dirs": [root]})
    with TestClient(create_app(settings)) as client:
        request = body(models=["tiny"], horizons=[2], quantiles=[0.1, 0.9],
                       sampling={"sample_count": 4, "seed": 3}, repeats=2)
        job_id = client.post(BACKTEST, json=request).json()["id"]
        assert run_backtest_to_end(settings, job_id) == "succeeded"

        result = client.get(f"/v1/jobs/{job_id}/result").json()
        columns = result["columns"]
        assert columns[:14] == ["model", "kind", "lookback", "symbol", "origin", "repeat", "step", "timestamp",
                                "open", "high", "low", "close", "volume", "amount"]
        assert {"q0.1_close", "q0.9_close", "actual_close", "actual_volume", "last_close", "crps"} <= set(columns)
        model_rows = [r for r in result["rows"] if r["model"] == "tiny"]
        assert len(model_rows) == 2 * 3 * 2 * 4 and {r["repeat"] for r in model_rows} == {0, 1}
        assert {r["step"] for r in model_rows} == {1, 2, 3, 4} and model_rows[0]["origin"].endswith("Z")
        parquet = pd.read_parquet(io.BytesIO(client.get(f"/v1/jobs/{job_id}/result", params={"format": "parquet"}).content))
        assert len(parquet) == len(result["rows"])
        assert client.get(f"/v1/jobs/{job_id}/result", params={"format": "csv"}).text.startswith("model,kind,lookback")

        metrics = client.get(f"/v1/jobs/{job_id}/metrics").json()
        assert metrics["by"] == "all" and metrics["columns"][:6] == ["model", "kind", "lookback", "step", "horizon", "n"]
        assert {"crps", "skill", "dm_pvalue", "pinball_q0.1", "coverage_0.1_0.9"} <= set(metrics["columns"])
        tiny = [r for r in metrics["rows"] if r["model"] == "tiny"]
        assert [(r["step"], r["horizon"]) for r in tiny] == [(1, None), (2, None), (3, None), (4, None), (None, 2), (None, 4)]
        assert all(r["crps"] is not None and 0 <= r["coverage_0.1_0.9"] <= 1 for r in tiny)
        assert {r["model"] for r in metrics["rows"]} == {"tiny", "naive", "seasonal_naive", "drift"}
        by_symbol = client.get(f"/v1/jobs/{job_id}/metrics", params={"by": "symbol"}).json()
        assert {r["symbol"] for r in by_symbol["rows"]} == {"S0", "S1"}
        assert client.get(f"/v1/jobs/{job_id}/metrics", params={"by": "model"}).status_code == 422

        # its chart: skill by step, coverage vs nominal, forecast vs truth for one origin
        svg = client.get(f"/v1/jobs/{job_id}/chart", params={"format": "svg", "symbol": "S1"})
        assert svg.status_code == 200 and svg.headers["content-type"].startswith("image/svg+xml")
        for text in ("skill vs naive by horizon step", "interval coverage vs nominal", "q0.1-q0.9",
                     "S1: forecast vs truth from origin", "UTC", "horizon step"):
            assert text in svg.text, text
        png = client.get(f"/v1/jobs/{job_id}/chart")
        assert png.status_code == 200 and png.content[:4] == b"\x89PNG"
        (tmp_path / "backtest-chart.png").write_bytes(png.content)
        assert client.get(f"/v1/jobs/{job_id}/chart", params={"symbol": "S9"}).status_code == 404


def test_idempotency_key(client: TestClient) -> None:
    first = client.post(BACKTEST, json=body(), headers={"Idempotency-Key": "bt-1"})
    again = client.post(BACKTEST, json=body(), headers={"Idempotency-Key": "bt-1"})
    assert first.status_code == again.status_code == 202 and first.json()["id"] == again.json()["id"]
    other = client.post(BACKTEST, json=body(horizon=3), headers={"Idempotency-Key": "bt-1"})
    assert other.status_code == 409
    assert len(client.get("/v1/jobs").json()["data"]) == 1


def test_a_backtest_is_bulk_work_and_may_set_its_priority(client: TestClient) -> None:
    default = client.post(BACKTEST, json=body()).json()
    assert (default["priority"], default["workload"]) == (3, "bulk")
    chosen = client.post(BACKTEST, json=body(priority=7))
    assert chosen.status_code == 202 and chosen.json()["priority"] == 7
    assert client.get(f"/v1/jobs/{chosen.json()['id']}").json()["priority"] == 7
    assert "priority" not in chosen.json()["params"]  # a queue position, not a backtest parameter


@pytest.mark.parametrize("priority", [-1, 10, "high"])
def test_a_priority_outside_0_to_9_is_a_422_naming_it(client: TestClient, priority) -> None:
    assert_422(client, body(priority=priority), "priority")
