"""Schedules over HTTP: create/read/patch/delete, trigger a run (fan-out after the response),
runs with per-symbol errors, and a 4xx naming the field for every bad request."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from kronos_jobs.testing.factories import make_bars


def schedule_body(**overrides) -> dict:
    body = {"name": "nightly", "cron": "0 18 * * 1-5", "timezone": "America/New_York", "model": "random:mini",
            "device": "cpu", "lookback": 32, "pred_len": 4, "sampling": {"seed": 1, "sample_count": 2}, "quantiles": [0.1, 0.9]}
    body.update(overrides)
    return body


@pytest.fixture
def stored(client: TestClient) -> None:
    bars = make_bars({"AAA": 40, "BBB": 40, "TINY": 3})
    for symbol, frame in bars.groupby("symbol"):
        rows = [{"timestamp": t.isoformat(), **{c: float(frame[c].iloc[i]) for c in ("open", "high", "low", "close", "volume", "amount")}}
                for i, t in enumerate(frame.timestamp)]
        assert client.post(f"/v1/series/{symbol}/bars", json={"freq": "5min", "bars": rows}).status_code == 200


def test_schedule_lifecycle(client: TestClient) -> None:
    created = client.post("/v1/schedules", json=schedule_body())
    assert created.status_code == 201, created.text
    schedule = created.json()
    assert created.headers["Location"] == f"/v1/schedules/{schedule['id']}"
    assert schedule["symbols"] is None and schedule["enabled"] and schedule["next_run_at"].endswith(("22:00:00Z", "23:00:00Z"))
    assert client.get(f"/v1/schedules/{schedule['id']}").json() == schedule
    patched = client.patch(f"/v1/schedules/{schedule['id']}", json={"symbols": ["AAA"], "enabled": False, "pred_len": 8}).json()
    assert (patched["symbols"], patched["enabled"], patched["pred_len"], patched["cron"]) == (["AAA"], False, 8, "0 18 * * 1-5")
    assert [s["id"] for s in client.get("/v1/schedules", params={"enabled": False}).json()["data"]] == [schedule["id"]]
    assert client.post("/v1/schedules", json=schedule_body()).status_code == 409  # the name is taken
    assert client.delete(f"/v1/schedules/{schedule['id']}").status_code == 204
    assert client.get(f"/v1/schedules/{schedule['id']}").status_code == 404


def test_trigger_runs_fan_out_with_per_symbol_errors(client: TestClient, stored) -> None:
    schedule = client.post("/v1/schedules", json=schedule_body(symbols=["AAA", "BBB", "TINY", "GONE"])).json()
    body = {"scheduled_for": "2024-06-18T22:00:00Z"}
    run = client.post(f"/v1/schedules/{schedule['id']}/run", json=body)
    assert run.status_code == 202, run.text
    again = client.post(f"/v1/schedules/{schedule['id']}/run", json=body).json()
    assert again["id"] == run.json()["id"]  # one run per (schedule, time)
    run = client.get(f"/v1/schedules/{schedule['id']}/runs/{again['id']}").json()
    assert run["state"] == "running" and run["trigger"] == "manual" and len(run["job_ids"]) == 1
    assert run["progress"] == {"done": 2, "total": 4, "detail": {}}
    assert {e["symbol"]: e["code"] for e in run["symbol_errors"]} == {"TINY": "too_little_history", "GONE": "not_in_store"}
    job = client.get(f"/v1/jobs/{run['job_ids'][0]}").json()
    assert job["params"]["source"] == "store" and job["params"]["n_series"] == 2 and job["params"]["pred_len"] == 4
    assert [r["id"] for r in client.get(f"/v1/schedules/{schedule['id']}/runs").json()["data"]] == [run["id"]]
    now = client.post(f"/v1/schedules/{schedule['id']}/run")  # no body: now
    assert now.status_code == 202 and now.json()["id"] != run["id"]


@pytest.mark.parametrize("body, field", [
    (schedule_body(cron="0 18 * *"), "cron"),
    (schedule_body(cron="every night"), "cron"),
    (schedule_body(timezone="Mars/Olympus"), "timezone"),
    (schedule_body(model="no-such-model"), "model"),
    (schedule_body(symbols=[]), "symbols"),
    (schedule_body(symbols=["ok", "bad symbol"]), "symbols[1]"),
    (schedule_body(freq="fortnightly"), "freq"),
    (schedule_body(lookback=0), "lookback"),
    (schedule_body(pred_len=100_000), "pred_len"),
    (schedule_body(sampling={"top_p": 2}), "sampling.top_p"),
    (schedule_body(quantiles=[1.5]), "quantiles"),
    (schedule_body(device="tpu"), "device"),
    (schedule_body(min_history=1), "min_history"),
    (schedule_body(calendar={"open": "09:30"}), "calendar.close"),
    (schedule_body(calendar={"timezone": "Nowhere"}), "calendar.timezone"),
    (schedule_body(calendar={"symbols": {"AAA": {"weekdays": [9]}}}), "calendar.symbols.AAA.weekdays"),
    (schedule_body(enabled="sometimes"), "enabled"),
    (schedule_body(name=""), "name"),
    ({**schedule_body(), "colour": "red"}, "colour"),
    ({k: v for k, v in schedule_body().items() if k != "cron"}, "cron"),
])
def test_bad_schedules_are_422_naming_the_field(client: TestClient, body, field) -> None:
    r = client.post("/v1/schedules", json=body)
    assert r.status_code == 422, r.text
    assert field in [d["field"] for d in r.json()["error"]["details"]], r.json()
    assert client.get("/v1/schedules").json()["data"] == []


def test_bad_patches_and_unknown_ids(client: TestClient) -> None:
    schedule = client.post("/v1/schedules", json=schedule_body()).json()
    r = client.patch(f"/v1/schedules/{schedule['id']}", json={"timezone": "Atlantis"})
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "timezone"
    assert client.get(f"/v1/schedules/{schedule['id']}").json()["timezone"] == "America/New_York"
    r = client.post(f"/v1/schedules/{schedule['id']}/run", json={"scheduled_for": "tonight"})
    assert r.status_code == 422 and "scheduled_for" in r.json()["error"]["details"][0]["field"]
    for method, path in [("get", "/v1/schedules/nope"), ("patch", "/v1/schedules/nope"), ("delete", "/v1/schedules/nope"),
                         ("post", "/v1/schedules/nope/run"), ("get", "/v1/schedules/nope/runs"),
                         ("get", f"/v1/schedules/{schedule['id']}/runs/nope")]:
        kwargs = {"json": {}} if method == "patch" else {}
        r = getattr(client, method)(path, **kwargs)
        assert r.status_code == 404, (method, path, r.text)
