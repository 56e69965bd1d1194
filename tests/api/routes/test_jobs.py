"""POST /v1/jobs/forecast, listing, reading, results and cancel, through the ASGI test client.

No worker runs: submitted jobs stay queued on the embedded filesystem broker. Finished jobs are
made through the crud functions a worker uses (claim, write_forecasts, finish).
"""

from __future__ import annotations

import copy
import io
import json
from collections.abc import Callable
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from api.main import create_app
from kronos_jobs.core.names import RESULT_COLUMNS, JobState
from kronos_jobs.core.settings import Settings
from kronos_jobs.crud import jobs as job_crud
from kronos_jobs.crud import results as result_crud
from kronos_jobs.testing.factories import (
    bar_records,
    bars_frame,
    make_csv,
    make_forecast_request,
    make_forecast_rows,
    make_job,
    make_parquet,
)

FORECAST = "/v1/jobs/forecast"


def finish(db: Session, job_id: str, state: JobState = JobState.SUCCEEDED, **kwargs: Any) -> None:
    """Move a queued job to `state` the way a worker does."""
    job_crud.claim_job(db, job_id=job_id, owner="test-worker", lease_seconds=60)
    job_crud.finish_job(db, job_id=job_id, owner="test-worker", state=state, **kwargs)
    db.commit()


def upload(client: TestClient, content: bytes, name: str = "bars.csv", request: dict[str, Any] | None = None, **kwargs: Any):
    data = {"request": json.dumps(request if request is not None else {"model": "random:mini", "pred_len": 2})}
    return client.post(FORECAST, files={"file": (name, content, "application/octet-stream")}, data=data, **kwargs)


# --- submitting -------------------------------------------------------------------------------------


def test_a_posted_forecast_is_interactive_and_may_set_its_priority(client: TestClient) -> None:
    default = client.post(FORECAST, json=make_forecast_request()).json()
    assert (default["priority"], default["workload"]) == (6, "interactive")
    chosen = client.post(FORECAST, json=make_forecast_request(priority=9))
    assert chosen.status_code == 202 and chosen.json()["priority"] == 9
    assert client.get(f"/v1/jobs/{chosen.json()['id']}").json()["priority"] == 9
    assert "priority" not in chosen.json()["params"]  # a queue position, not a forecast parameter


def test_create_forecast_job_returns_202_with_location_queue_and_reason(client: TestClient) -> None:
    response = client.post(FORECAST, json=make_forecast_request(n_symbols=3))
    assert response.status_code == 202, response.text
    job = response.json()
    assert response.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert job["state"] == "queued" and job["kind"] == "forecast"
    assert job["queue"] == "forecast.cpu" and job["routing_reason"]
    assert job["progress"] == {"done": 0, "total": 3, "detail": {}}
    assert job["params"]["pred_len"] == 3 and job["params"]["quantiles"] == [0.1, 0.5, 0.9]
    assert job["params"]["freq"] == {"SYM0.SH": "5min", "SYM1.SH": "5min", "SYM2.SH": "5min"}
    assert client.get(f"/v1/jobs/{job['id']}").json()["id"] == job["id"]


def test_stored_input_is_utc_and_sorted(client: TestClient, db: Session) -> None:
    body = make_forecast_request(n_symbols=1)
    bars = body["series"][0]["bars"]
    bars[0]["timestamp"] = "2024-06-18T09:30:00+08:00"  # = 01:30Z, the first bar
    body["series"][0]["bars"] = bars[::-1]  # any order is accepted and sorted
    job_id = client.post(FORECAST, json=body).json()["id"]
    stored, future = result_crud.load_job_input(db, job_id=job_id)
    assert future is None
    assert str(stored["timestamp"].dt.tz) == "UTC"
    assert stored["timestamp"].is_monotonic_increasing
    assert stored["timestamp"].iloc[0] == pd.Timestamp("2024-06-18 01:30", tz="UTC")


def test_future_timestamps_are_stored(client: TestClient, db: Session) -> None:
    body = make_forecast_request(n_symbols=1, pred_len=2)
    body["series"][0]["future_timestamps"] = ["2024-06-18T03:00:00Z", "2024-06-18T03:05:00Z"]
    job_id = client.post(FORECAST, json=body).json()["id"]
    _, future = result_crud.load_job_input(db, job_id=job_id)
    assert list(future["timestamp"]) == list(pd.to_datetime(["2024-06-18T03:00:00Z", "2024-06-18T03:05:00Z"], utc=True))


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_create_forecast_job_from_upload(client: TestClient, db: Session, fmt: str) -> None:
    content = make_csv(n_symbols=3) if fmt == "csv" else make_parquet(n_symbols=3)
    response = upload(client, content, name=f"bars.{fmt}", request={"model": "random:mini", "pred_len": 2, "freq": "5min"})
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["params"]["source"] == fmt and job["progress"]["total"] == 3
    stored, _ = result_crud.load_job_input(db, job_id=job["id"])
    assert sorted(stored["symbol"].unique()) == ["SYM0.SH", "SYM1.SH", "SYM2.SH"]


def test_upload_without_request_field_uses_defaults(client: TestClient) -> None:
    response = client.post(FORECAST, files={"file": ("bars.csv", make_csv(), "text/csv")})
    assert response.status_code == 202, response.text
    assert response.json()["model"] == Settings().default_model
    assert response.json()["params"]["freq"] == {}  # the worker infers it from the bars


def test_idempotency_same_key_and_body_returns_the_same_job(client: TestClient) -> None:
    body = make_forecast_request()
    first = client.post(FORECAST, json=body, headers={"Idempotency-Key": "nightly-2024-06-18"})
    again = client.post(FORECAST, json=body, headers={"Idempotency-Key": "nightly-2024-06-18"})
    other = client.post(FORECAST, json=body, headers={"Idempotency-Key": "nightly-2024-06-19"})
    assert first.status_code == again.status_code == 202
    assert again.json()["id"] == first.json()["id"]
    assert other.json()["id"] != first.json()["id"]
    assert len(client.get("/v1/jobs").json()["data"]) == 2


# --- listing ------------------------------------------------------------------------------------------


def test_list_jobs_pages_with_cursor_newest_first(client: TestClient) -> None:
    ids = [client.post(FORECAST, json=make_forecast_request(n_symbols=1)).json()["id"] for _ in range(5)]
    seen, cursor, pages = [], None, 0
    while True:
        params = {"limit": 2, **({"cursor": cursor} if cursor else {})}
        page = client.get("/v1/jobs", params=params).json()
        seen += [job["id"] for job in page["data"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert pages == 3
    assert seen == ids[::-1]


def test_list_jobs_filters_state_kind_and_created_range(client: TestClient, db: Session) -> None:
    ids = [client.post(FORECAST, json=make_forecast_request(n_symbols=1)).json()["id"] for _ in range(3)]
    finish(db, ids[0])
    client.post(f"/v1/jobs/{ids[1]}/cancel")

    def listed(**params: Any) -> list[str]:
        response = client.get("/v1/jobs", params=params)
        assert response.status_code == 200, response.text
        return [job["id"] for job in response.json()["data"]]

    assert listed(state="succeeded") == [ids[0]]
    assert listed(state="cancelled") == [ids[1]]
    assert listed(state="queued") == [ids[2]]
    assert listed(kind="forecast") == ids[::-1]
    assert listed(kind="finetune") == []
    created = [client.get(f"/v1/jobs/{i}").json()["created_at"] for i in ids]
    assert listed(created_after=created[1]) == [ids[2], ids[1]]
    assert listed(created_before=created[1]) == [ids[0]]


# --- results ------------------------------------------------------------------------------------------


@pytest.fixture
def finished_job(client: TestClient, db: Session) -> str:
    """A partially succeeded job with rows for two symbols (quantiles 0.1 and 0.9) and one error."""
    job = make_job(db)
    rows = make_forecast_rows(symbols=("AAA", "BBB"), steps=3, quantiles=(0.1, 0.9))
    result_crud.write_forecasts(db, job_id=job.id, tenant_id=job.tenant_id, rows=rows)
    errors = [{"symbol": "CCC", "code": "too_short", "message": "CCC has 1 bar"}]
    finish(db, job.id, JobState.PARTIALLY_SUCCEEDED, symbol_errors=errors)
    return job.id


EXPECTED_COLUMNS = [*RESULT_COLUMNS, *(f"q{q}_{c}" for q in ("0.1", "0.9") for c in ("open", "high", "low", "close", "volume", "amount"))]


def test_result_json(client: TestClient, finished_job: str) -> None:
    response = client.get(f"/v1/jobs/{finished_job}/result")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["columns"][: len(RESULT_COLUMNS)] == list(RESULT_COLUMNS)
    assert sorted(body["columns"]) == sorted(EXPECTED_COLUMNS)
    assert len(body["rows"]) == 6 and set(body["rows"][0]) == set(body["columns"])
    assert body["rows"][0]["symbol"] == "AAA" and body["rows"][0]["timestamp"] == "2024-06-18T03:15:00Z"
    assert body["errors"] == [{"symbol": "CCC", "code": "too_short", "message": "CCC has 1 bar"}]
    assert body["state"] == "partially_succeeded"


def test_result_csv_and_parquet_match_json(client: TestClient, finished_job: str) -> None:
    rows = pd.DataFrame(client.get(f"/v1/jobs/{finished_job}/result?format=json").json()["rows"])
    csv = client.get(f"/v1/jobs/{finished_job}/result", params={"format": "csv"})
    assert csv.status_code == 200 and csv.headers["content-type"].startswith("text/csv")
    assert f'filename="{finished_job}.csv"' in csv.headers["content-disposition"]
    from_csv = pd.read_csv(io.StringIO(csv.text))
    parquet = client.get(f"/v1/jobs/{finished_job}/result", params={"format": "parquet"})
    assert parquet.status_code == 200 and parquet.headers["content-type"] == "application/vnd.apache.parquet"
    from_parquet = pd.read_parquet(io.BytesIO(parquet.content))
    for frame in (from_csv, from_parquet):
        assert list(frame.columns) == list(rows.columns)
        assert list(frame["symbol"]) == list(rows["symbol"])
        pd.testing.assert_series_equal(frame["close"], rows["close"], check_names=False)
    assert str(from_parquet["timestamp"].dt.tz) == "UTC"
    assert list(from_csv["timestamp"]) == list(rows["timestamp"])


@pytest.mark.parametrize("fmt", ["json", "csv", "parquet"])
def test_result_of_a_failed_job_without_rows(client: TestClient, db: Session, fmt: str) -> None:
    job = make_job(db)
    finish(db, job.id, JobState.FAILED, error={"code": "model_unavailable", "message": "hub unreachable"})
    response = client.get(f"/v1/jobs/{job.id}/result", params={"format": fmt})
    assert response.status_code == 200, response.text
    if fmt == "json":
        assert response.json()["rows"] == [] and response.json()["columns"] == list(RESULT_COLUMNS)
    elif fmt == "csv":
        assert response.text.strip() == ",".join(RESULT_COLUMNS)
    else:
        assert list(pd.read_parquet(io.BytesIO(response.content)).columns) == list(RESULT_COLUMNS)


def test_streamed_body_over_the_limit_is_413(strict_client: TestClient) -> None:
    def chunks():  # no Content-Length: the limit is enforced while the body streams in
        for _ in range(10):
            yield b" " * 40_000

    response = strict_client.post(FORECAST, content=chunks(), headers={"Content-Type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "payload_too_large"


def test_cancel_queued_job(client: TestClient) -> None:
    job_id = client.post(FORECAST, json=make_forecast_request()).json()["id"]
    response = client.post(f"/v1/jobs/{job_id}/cancel")
    assert response.status_code == 200, response.text
    assert response.json()["state"] == "cancelled"
    assert client.get(f"/v1/jobs/{job_id}").json()["state"] == "cancelled"


def test_cancel_running_job_sets_the_flag(client: TestClient, db: Session) -> None:
    job_id = client.post(FORECAST, json=make_forecast_request()).json()["id"]
    job_crud.claim_job(db, job_id=job_id, owner="test-worker", lease_seconds=60)
    db.commit()
    body = client.post(f"/v1/jobs/{job_id}/cancel").json()
    assert body["state"] == "running" and body["cancel_requested"] is True


# --- the catalogue of bad requests --------------------------------------------------------------------
# Each case: how to send it, then the status, the error code and the field the answer must name.


def with_bar(field: str, value: Any, bar: int = 3) -> dict[str, Any]:
    body = make_forecast_request()
    body["series"][0]["bars"][bar][field] = value
    return body


def without(key: str) -> dict[str, Any]:
    body = make_forecast_request()
    del body[key]
    return body


def with_sampling(**values: Any) -> dict[str, Any]:
    body = make_forecast_request()
    body["sampling"].update(values)
    return body


def with_series(**values: Any) -> dict[str, Any]:
    body = make_forecast_request()
    body["series"][0].update(values)
    return body


def duplicate_timestamp() -> dict[str, Any]:
    body = make_forecast_request()
    bars = body["series"][0]["bars"]
    bars[3]["timestamp"] = bars[2]["timestamp"]
    return body


def volume_on_some_bars() -> dict[str, Any]:
    body = make_forecast_request()
    del body["series"][0]["bars"][3]["volume"]
    return body


def csv_with(column: str, value: Any, row: int = 1) -> bytes:
    frame = bars_frame(n_symbols=1)
    frame[column] = frame[column].astype(object)
    frame.loc[row, column] = value
    return make_csv(frame=frame)


def post(body: dict[str, Any]) -> Callable[[TestClient, Session], Any]:
    return lambda client, db: client.post(FORECAST, json=body)


def finished_then(action: str) -> Callable[[TestClient, Session], Any]:
    """Submit a job; for "cancel" finish it and cancel it, for "result" read its (missing) result."""

    def send(client: TestClient, db: Session) -> Any:
        job_id = client.post(FORECAST, json=make_forecast_request()).json()["id"]
        if action == "cancel":
            finish(db, job_id)
            return client.post(f"/v1/jobs/{job_id}/cancel")
        return client.get(f"/v1/jobs/{job_id}/result")

    return send


def idempotency_conflict(client: TestClient, db: Session) -> Any:
    client.post(FORECAST, json=make_forecast_request(), headers={"Idempotency-Key": "k"})
    return client.post(FORECAST, json=make_forecast_request(pred_len=5), headers={"Idempotency-Key": "k"})


CATALOGUE = [
    # (id, send, status, code, field)
    ("missing-series", post(without("series")), 422, "invalid_request", "series"),
    ("empty-series", post(make_forecast_request(series=[])), 422, "invalid_request", "series"),
    ("empty-bars", post(with_series(bars=[])), 422, "invalid_request", "series[0].bars"),
    ("nan-string", post(with_bar("high", "NaN")), 422, "invalid_request", "series[0].bars[3].high"),
    ("infinite-close", post(with_bar("close", "inf")), 422, "invalid_request", "series[0].bars[3].close"),
    ("high-below-low", post(with_bar("high", 1.0)), 422, "invalid_request", "series[0].bars[3].high"),
    ("low-above-close", post(with_bar("low", 99.0)), 422, "invalid_request", "series[0].bars[3].low"),
    ("negative-volume", post(with_bar("volume", -1)), 422, "invalid_request", "series[0].bars[3].volume"),
    ("negative-amount", post(with_bar("amount", -5)), 422, "invalid_request", "series[0].bars[3].amount"),
    ("price-not-a-number", post(with_bar("open", "abc")), 422, "invalid_request", "series[0].bars[3].open"),
    ("bad-timestamp", post(with_bar("timestamp", "yesterday")), 422, "invalid_request", "series[0].bars[3].timestamp"),
    ("duplicate-timestamp", post(duplicate_timestamp()), 422, "invalid_request", "series[0].bars[3].timestamp"),
    ("volume-on-some-bars", post(volume_on_some_bars()), 422, "invalid_request", "series[0].bars[3].volume"),
    ("extra-bar-field", post(with_bar("vwap", 1.0)), 422, "invalid_request", "series[0].bars[3].vwap"),
    ("symbol-empty", post(with_series(symbol=" ")), 422, "invalid_request", "series[0].symbol"),
    ("symbol-charset", post(with_series(symbol="A B;drop")), 422, "invalid_request", "series[0].symbol"),
    ("symbol-too-long", post(with_series(symbol="A" * 65)), 422, "invalid_request", "series[0].symbol"),
    ("bad-freq", post(with_series(freq="fortnightly")), 422, "invalid_request", "series[0].freq"),
    ("future-wrong-length", post(with_series(future_timestamps=["2024-06-18T03:00:00Z"])), 422, "invalid_request", "series[0].future_timestamps"),
    ("pred-len-0", post(make_forecast_request(pred_len=0)), 422, "invalid_request", "pred_len"),
    ("pred-len-over-context", post(make_forecast_request(pred_len=5000)), 422, "invalid_request", "pred_len"),
    ("lookback-0", post(make_forecast_request(lookback=0)), 422, "invalid_request", "lookback"),
    ("temperature-0", post(with_sampling(temperature=0)), 422, "invalid_request", "sampling.temperature"),
    ("top-p-1.5", post(with_sampling(top_p=1.5)), 422, "invalid_request", "sampling.top_p"),
    ("top-k-negative", post(with_sampling(top_k=-1)), 422, "invalid_request", "sampling.top_k"),
    ("sample-count-0", post(with_sampling(sample_count=0)), 422, "invalid_request", "sampling.sample_count"),
    ("sample-count-huge", post(with_sampling(sample_count=100_000)), 422, "invalid_request", "sampling.sample_count"),
    ("sampling-typo", post(with_sampling(temprature=1.0)), 422, "invalid_request", "sampling.temprature"),
    ("quantile-1.0", post(make_forecast_request(quantiles=[0.5, 1.0])), 422, "invalid_request", "quantiles"),
    ("quantile-duplicate", post(make_forecast_request(quantiles=[0.5, 0.5])), 422, "invalid_request", "quantiles"),
    ("unknown-model", post(make_forecast_request(model="kronos-huge")), 422, "invalid_request", "model"),
    ("model-dir-outside-roots", post(make_forecast_request(model="/etc")), 422, "invalid_request", "model"),
    ("model-dir-traversal", post(make_forecast_request(model="../../../../etc")), 422, "invalid_request", "model"),
    ("bad-device", post(make_forecast_request(device="tpu")), 422, "invalid_request", "device"),
    ("priority-10", post(make_forecast_request(priority=10)), 422, "invalid_request", "priority"),
    ("priority-negative", post(make_forecast_request(priority=-1)), 422, "invalid_request", "priority"),
    ("priority-text", post(make_forecast_request(priority="urgent")), 422, "invalid_request", "priority"),
    ("malformed-json", lambda c, db: c.post(FORECAST, content=b'{"model": ', headers={"Content-Type": "application/json"}), 400, "malformed_json", "body"),
    ("wrong-content-type", lambda c, db: c.post(FORECAST, content=b"model=x", headers={"Content-Type": "text/plain"}), 415, "unsupported_media_type", None),
    ("oversized-json-body", lambda c, db: c.post(FORECAST, content=b" " * 400_000, headers={"Content-Type": "application/json"}), 413, "payload_too_large", "body"),
    ("oversized-upload", lambda c, db: upload(c, b"symbol,timestamp\n" + b"x" * 70_000), 413, "payload_too_large", "file"),
    ("upload-without-file", lambda c, db: c.post(FORECAST, data={"request": "{}"}, files={"other": ("a", b"b")}), 422, "invalid_request", "file"),
    ("upload-bad-request-field", lambda c, db: upload(c, make_csv(), request={"sampling": {"top_p": 2}}), 422, "invalid_request", "request.sampling.top_p"),
    ("upload-request-not-json", lambda c, db: c.post(FORECAST, files={"file": ("b.csv", make_csv())}, data={"request": "{oops"}), 400, "malformed_json", "request"),
    ("csv-missing-column", lambda c, db: upload(c, make_csv(frame=bars_frame().drop(columns="close"))), 422, "invalid_request", "file column close"),
    ("csv-unknown-column", lambda c, db: upload(c, make_csv(frame=bars_frame().assign(vwap=1.0))), 422, "invalid_request", "file column vwap"),
    ("csv-bad-number", lambda c, db: upload(c, csv_with("high", "n/a")), 422, "invalid_request", "file row 2: high"),
    ("csv-high-below-low", lambda c, db: upload(c, csv_with("high", 0.5)), 422, "invalid_request", "file row 2: high"),
    ("csv-bad-timestamp", lambda c, db: upload(c, csv_with("timestamp", "31/02/2024")), 422, "invalid_request", "file row 2: timestamp"),
    ("csv-not-utf8", lambda c, db: upload(c, b"\xff\xfe\x00s"), 422, "invalid_request", "file"),
    ("csv-empty", lambda c, db: upload(c, b""), 422, "invalid_request", "file"),
    ("corrupt-parquet", lambda c, db: upload(c, b"PAR1" + b"\x00" * 64 + b"PAR1", name="bars.parquet"), 422, "invalid_request", "file"),
    ("too-many-series", post(make_forecast_request(n_symbols=6)), 422, "invalid_request", "series"),
    ("too-many-bars", post(make_forecast_request(n_symbols=1, n_bars=51)), 422, "invalid_request", "series[0].bars"),
    ("result-of-unfinished-job", finished_then("result"), 409, "conflict", "state"),
    ("unknown-job", lambda c, db: c.get("/v1/jobs/0123456789abcdef"), 404, "not_found", "job_id"),
    ("unknown-job-result", lambda c, db: c.get("/v1/jobs/nope/result"), 404, "not_found", "job_id"),
    ("cancel-finished-job", finished_then("cancel"), 409, "invalid_transition", "state"),
    ("idempotency-conflict", idempotency_conflict, 409, "idempotency_conflict", "Idempotency-Key"),
    ("idempotency-key-too-long", lambda c, db: c.post(FORECAST, json=make_forecast_request(), headers={"Idempotency-Key": "k" * 300}), 422, "invalid_request", "Idempotency-Key"),
    ("result-format", lambda c, db: c.get("/v1/jobs/x/result?format=xlsx"), 422, "invalid_request", "format"),
    ("list-bad-cursor", lambda c, db: c.get("/v1/jobs?cursor=not-a-cursor"), 422, "invalid_request", "cursor"),
    ("list-bad-state", lambda c, db: c.get("/v1/jobs?state=done"), 422, "invalid_request", "state"),
    ("list-limit-0", lambda c, db: c.get("/v1/jobs?limit=0"), 422, "invalid_request", "limit"),
    ("list-bad-date", lambda c, db: c.get("/v1/jobs?created_after=tuesday"), 422, "invalid_request", "created_after"),
    ("unknown-route", lambda c, db: c.get("/v1/nothing"), 404, "not_found", None),
    ("wrong-method", lambda c, db: c.delete(FORECAST), 405, "method_not_allowed", None),
]


@pytest.fixture
def strict_client(settings: Settings) -> Any:
    """Small limits so that size cases stay cheap: 64 KiB uploads, 5 series, 50 bars."""
    limited = settings.model_copy(update={"max_upload_bytes": 65_536, "max_series_per_job": 5, "max_bars_per_series": 50})
    with TestClient(create_app(limited)) as test_client:
        yield test_client


@pytest.mark.parametrize("case", CATALOGUE, ids=[case[0] for case in CATALOGUE])
def test_bad_request_catalogue(strict_client: TestClient, settings: Settings, case: tuple) -> None:
    from kronos_jobs.db.session import get_sessionmaker

    _, send, status, code, field = case
    with get_sessionmaker(settings)() as db:
        response = send(strict_client, db)
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert error["message"]
    if field is not None:
        assert field in [detail["field"] for detail in error["details"]], error
        assert field in error["message"] or status >= 404


def test_model_paths_outside_the_roots_are_one_unknown_model(settings: Settings, tmp_path) -> None:
    """A client cannot tell an existing server directory from a missing one, nor load from either;
    a checkpoint inside KRONOS_MODEL_DIRS, named relative to the root, is accepted."""
    from kronos_jobs.testing.checkpoints import save_tiny_checkpoint

    root = tmp_path / "models"
    save_tiny_checkpoint(root / "tiny")
    save_tiny_checkpoint(tmp_path / "outside")
    (root / "escape").symlink_to(tmp_path / "outside")
    with TestClient(create_app(settings.model_copy(update={"model_dirs": [root]}))) as client:
        def error(model: str) -> str:
            response = client.post(FORECAST, json=make_forecast_request(model=model))
            assert response.status_code == 422, response.text
            body = response.json()["error"]
            assert [d["field"] for d in body["details"]] == ["model"] and "KRONOS_MODEL_DIRS" in body["message"]
            return json.dumps(body).replace(json.dumps(repr(model))[1:-1], "<name>")  # all but the echoed name

        outside = [error(name) for name in ("/etc", "/no/such/dir", str(tmp_path / "outside"), "../outside",
                                            "escape", str(root / "escape"))]
        assert all(e == outside[0] for e in outside), outside
        response = client.post(FORECAST, json=make_forecast_request(model="tiny"))
        assert response.status_code == 202, response.text
        assert response.json()["model"] == "tiny"


def test_catalogue_is_large_enough() -> None:
    assert len(CATALOGUE) >= 25
    assert len({case[0] for case in CATALOGUE}) == len(CATALOGUE)


def test_every_problem_is_listed(client: TestClient) -> None:
    body = make_forecast_request()
    body["sampling"].update(temperature=0, top_p=3)
    body["pred_len"] = 0
    fields = [d["field"] for d in client.post(FORECAST, json=body).json()["error"]["details"]]
    assert sorted(fields) == ["pred_len", "sampling.temperature", "sampling.top_p"]


def test_bar_problems_do_not_leak_other_bars(client: TestClient) -> None:
    body = copy.deepcopy(make_forecast_request())
    body["series"][1]["bars"] = bar_records(8)
    body["series"][1]["bars"][5]["low"] = 1000.0
    error = client.post(FORECAST, json=body).json()["error"]
    assert [d["field"] for d in error["details"]] == ["series[1].bars[5].low"]


def test_a_split_job_shows_its_parts_and_lists_alone(client: TestClient, db: Session, auth_settings: Settings) -> None:
    """A worker split the job into parts (jobs/parts.py): the job shows `parts` and its progress;
    the parts are not listed, and a cancel of the job reaches them."""
    from kronos_jobs.db.models import Job
    from kronos_jobs.jobs import parts

    job_id = client.post(FORECAST, json=make_forecast_request(n_symbols=3)).json()["id"]
    job = job_crud.claim_job(db, job_id=job_id, owner="test-worker", lease_seconds=60)
    params, stored_input = dict(job.params), result_crud.load_job_input(db, job_id=job_id)
    db.commit()
    ids = parts.split(auth_settings, job_id=job_id, owner="test-worker", job_input=stored_input, params=params,
                      seed=7, sizes=[2, 1])

    shown = client.get(f"/v1/jobs/{job_id}").json()
    assert (shown["state"], shown["parts"], shown["progress"]["total"]) == ("running", 2, 3)
    listed = client.get("/v1/jobs").json()
    assert [j["id"] for j in listed["data"]] == [job_id]
    cancelled = client.post(f"/v1/jobs/{job_id}/cancel")
    assert cancelled.status_code == 200 and cancelled.json()["cancel_requested"] is True
    db.expire_all()
    assert {db.get(Job, i).state for i in ids} == {"cancelled"}  # both parts were still queued
    assert parts.settle(auth_settings, job_id) is JobState.CANCELLED
    final = client.get(f"/v1/jobs/{job_id}").json()
    assert final["state"] == "cancelled" and final["progress"]["done"] == 0
