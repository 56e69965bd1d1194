"""A catalogue of hostile inputs: each gets a clear 4xx naming the field, never a 500.

The reported ones are here (NUL bytes in path, query and body of every route kind, crons that never
fire on create and PATCH, bars mixing year 0002 and modern timestamps, `freq: "0min"`, a one-bar
series), with neighbours of each and the upload caps. Every case runs on SQLite and, when
KRONOS_TEST_DATABASE_URL is set, on PostgreSQL, which refuses NUL characters in text columns.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from kronos_jobs.core.settings import Settings
from kronos_jobs.inputs.parsing import MAX_FILE_COLUMNS, MAX_LINE_BYTES

LIMITS = {"max_upload_bytes": 256 * 1024, "max_upload_rows": 500, "max_series_per_job": 20,
          # about input, not keys: keyless on loopback, and TestClient's Host (testserver) trusted
          "auth": "off", "trusted_hosts": ["testserver"]}
MODEL = "random:mini"
CSV_HEADER = "symbol,timestamp,open,high,low,close\n"


def bars(n: int = 5, start: str = "2024-06-18T09:00:00Z", freq: str = "1h") -> list[dict[str, Any]]:
    stamps = pd.date_range(start, periods=n, freq=freq)
    return [{"timestamp": t.isoformat(), "open": 10.0, "high": 10.5, "low": 9.5, "close": 10.2} for t in stamps]


def forecast(**changes: Any) -> dict[str, Any]:
    body = {"model": MODEL, "pred_len": 3, "lookback": 16,
            "series": [{"symbol": "AAA", "freq": "1h", "bars": bars()}]}
    return {**body, **changes}


def series(**changes: Any) -> dict[str, Any]:
    return forecast(series=[{"symbol": "AAA", "freq": "1h", "bars": bars(), **changes}])


def csv_rows(n: int, symbols: int = 1) -> str:
    stamps = pd.date_range("2024-06-18T09:00:00Z", periods=n, freq="1h")
    return "".join(f"S{i % symbols},{t.isoformat()},10,10.5,9.5,10.2\n" for i, t in enumerate(stamps))


@dataclass
class Case:
    id: str
    method: str
    path: str
    status: int
    field: str | None  # a detail's field must start with this (None: no field, e.g. 415)
    json: Any = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    files: dict[str, Any] | None = None
    data: dict[str, str] | None = None


def upload(csv: str | bytes, request: dict[str, Any] | str | None = None, name: str = "bars.csv") -> dict[str, Any]:
    raw = csv.encode() if isinstance(csv, str) else csv
    params = request if isinstance(request, str) else json.dumps(request or {"model": MODEL, "pred_len": 3, "lookback": 16})
    return {"files": {"file": (name, raw, "text/csv")}, "data": {"request": params}}


def raw_json(text: bytes) -> dict[str, Any]:
    return {"content": text, "headers": {"content-type": "application/json"}}


SCHEDULE = {"name": "nightly", "cron": "0 18 * * 1-5", "model": MODEL, "symbols": ["AAA"]}
NEVER = "0 0 30 2 *"
F = "/v1/jobs/forecast"

CASES = [
    # --- NUL bytes: path, query, body, multipart field, on every route kind -------------------------
    Case("nul-path-job", "GET", "/v1/jobs/ab%00cd", 422, "path"),
    Case("nul-path-result", "GET", "/v1/jobs/ab%00cd/result", 422, "path"),
    Case("nul-path-cancel", "POST", "/v1/jobs/ab%00cd/cancel", 422, "path"),
    Case("nul-query-cursor", "GET", "/v1/jobs?cursor=ab%00cd", 422, "cursor"),
    Case("nul-query-state", "GET", "/v1/jobs?state=queued%00", 422, "state"),
    Case("nul-path-series-bars", "GET", "/v1/series/AA%00A/bars", 422, "path"),
    Case("nul-path-series-delete", "DELETE", "/v1/series/AA%00A", 422, "path"),
    Case("nul-query-series-freq", "GET", "/v1/series?freq=5min%00", 422, "freq"),
    Case("nul-query-forecasts-symbol", "GET", "/v1/forecasts?symbol=AA%00", 422, "symbol"),
    Case("nul-query-forecasts-schedule", "GET", "/v1/forecasts?schedule=s%00", 422, "schedule"),
    Case("nul-path-schedule", "GET", "/v1/schedules/s%00", 422, "path"),
    Case("nul-path-schedule-patch", "PATCH", "/v1/schedules/s%00", 422, "path", json={"name": "x"}),
    Case("nul-path-schedule-runs", "GET", "/v1/schedules/s%00/runs", 422, "path"),
    Case("nul-path-model", "GET", "/v1/models/m%00", 422, "path"),
    Case("nul-path-model-delete", "DELETE", "/v1/models/m%00", 422, "path"),
    Case("nul-query-workers", "GET", "/v1/workers?pool=cpu%00", 422, "pool"),
    Case("nul-body-symbol", "POST", F, 422, "series[0].symbol", json=series(symbol="AA\x00A")),
    Case("nul-body-model", "POST", F, 422, "model", json=forecast(model="random:mini\x00")),
    Case("nul-body-freq", "POST", F, 422, "series[0].freq", json=series(freq="1h\x00")),
    Case("nul-body-timestamp", "POST", F, 422, "series[0].bars[0].timestamp",
         json=series(bars=[{**bars()[0], "timestamp": "2024-06-18T09:00:00\x00Z"}, *bars()[1:]])),
    Case("nul-body-calendar", "POST", F, 422, "calendar.timezone", json=forecast(calendar={"timezone": "UTC\x00"})),
    Case("nul-body-key", "POST", F, 422, "mo\\u0000del", json={**forecast(), "mo\x00del": 1}),
    Case("nul-body-raw-byte", "POST", F, 422, "model",
         **raw_json(json.dumps(forecast(model="XNULX")).replace("XNULX", "a\x00b").encode())),
    Case("nul-body-schedule-name", "POST", "/v1/schedules", 422, "name", json={**SCHEDULE, "name": "n\x00"}),
    Case("nul-body-schedule-cron", "POST", "/v1/schedules", 422, "cron", json={**SCHEDULE, "cron": "0 18 * * 1\x00"}),
    Case("nul-body-schedule-patch", "PATCH", "/v1/schedules/{schedule}", 422, "timezone", json={"timezone": "UTC\x00"}),
    Case("nul-body-store-bars", "POST", "/v1/series/AAA/bars", 422, "freq", json={"freq": "1h\x00", "bars": bars()}),
    Case("nul-body-finetune", "POST", "/v1/jobs/finetune", 422, "model",
         json={"model": "m\x00", "data": {"symbols": ["AAA"]}}),
    Case("nul-multipart-request", "POST", F, 422, "request.model",
         **upload(CSV_HEADER + csv_rows(5), {"model": "m\x00", "pred_len": 3})),
    # --- crons that never fire, and other bad schedules ---------------------------------------------
    Case("cron-feb-30-create", "POST", "/v1/schedules", 422, "cron", json={**SCHEDULE, "cron": NEVER}),
    Case("cron-apr-31-create", "POST", "/v1/schedules", 422, "cron", json={**SCHEDULE, "cron": "0 0 31 4 *"}),
    Case("cron-feb-30-patch", "PATCH", "/v1/schedules/{schedule}", 422, "cron", json={"cron": NEVER}),
    Case("cron-nov-31-patch", "PATCH", "/v1/schedules/{schedule}", 422, "cron", json={"cron": "30 9 31 11 *"}),
    Case("cron-six-fields", "POST", "/v1/schedules", 422, "cron", json={**SCHEDULE, "cron": "0 0 * * * *"}),
    Case("cron-minute-99", "POST", "/v1/schedules", 422, "cron", json={**SCHEDULE, "cron": "99 * * * *"}),
    Case("cron-empty", "POST", "/v1/schedules", 422, "cron", json={**SCHEDULE, "cron": ""}),
    Case("schedule-zone", "POST", "/v1/schedules", 422, "timezone", json={**SCHEDULE, "timezone": "Mars/Olympus"}),
    Case("schedule-freq-0min", "POST", "/v1/schedules", 422, "freq", json={**SCHEDULE, "freq": "0min"}),
    # --- timestamps out of range --------------------------------------------------------------------
    Case("year-0002-mixed", "POST", F, 422, "series[0].bars[4].timestamp",
         json=series(bars=[*bars()[:4], {**bars()[4], "timestamp": "0002-01-01T00:00:00Z"}])),
    Case("year-1800", "POST", F, 422, "series[0].bars[0].timestamp",
         json=series(bars=[{**bars()[0], "timestamp": "1800-01-01T00:00:00Z"}, *bars()[1:]])),
    Case("year-9999", "POST", F, 422, "series[0].bars[4].timestamp",
         json=series(bars=[*bars()[:4], {**bars()[4], "timestamp": "9999-12-31T00:00:00Z"}])),
    Case("timestamp-garbage", "POST", F, 422, "series[0].bars[1].timestamp",
         json=series(bars=[bars()[0], {**bars()[1], "timestamp": "yesterday"}, *bars()[2:]])),
    Case("future-year-0002", "POST", F, 422, "series[0].future_timestamps[0]",
         json=series(future_timestamps=["0002-01-01T00:00:00Z", "2030-01-01T00:00:00Z", "2030-01-02T00:00:00Z"])),
    Case("csv-year-0002", "POST", F, 422, "file row 2: timestamp",
         **upload(CSV_HEADER + "AAA,2024-06-18T09:00:00Z,10,11,9,10\nAAA,0002-06-18T10:00:00Z,10,11,9,10\n"
                  "AAA,2024-06-18T11:00:00Z,10,11,9,10\n")),
    Case("store-year-0002", "POST", "/v1/series/AAA/bars", 422, "bars[1].timestamp",
         json={"freq": "1h", "bars": [bars()[0], {**bars()[1], "timestamp": "0002-01-01T00:00:00Z"}]}),
    # --- frequencies that do not step forward or overflow -------------------------------------------
    Case("freq-0min", "POST", F, 422, "series[0].freq", json=series(freq="0min")),
    Case("freq-negative", "POST", F, 422, "series[0].freq", json=series(freq="-5min")),
    Case("freq-0B", "POST", F, 422, "series[0].freq", json=series(freq="0B")),
    Case("freq-overflow", "POST", F, 422, "series[0].freq", json=series(freq="1" + "0" * 25 + "min")),
    Case("freq-past-2262", "POST", F, 422, "series[0]", json=series(freq="1000000W")),
    Case("freq-out-of-bounds", "POST", F, 422, "series[0]", json=series(freq="99999999999D")),
    Case("freq-not-an-alias", "POST", F, 422, "series[0].freq", json=series(freq="fortnightly")),
    Case("freq-upload-0min", "POST", F, 422, "freq",
         **upload(CSV_HEADER + csv_rows(5), {"model": MODEL, "pred_len": 3, "freq": "0min"})),
    Case("freq-store-0min", "POST", "/v1/series/AAA/bars", 422, "freq", json={"freq": "0min", "bars": bars()}),
    # --- what the worker would reject, rejected at submit -------------------------------------------
    Case("one-bar", "POST", F, 422, "series[0]", json=series(bars=bars(1))),
    Case("one-bar-second-series", "POST", F, 422, "series[1]",
         json=forecast(series=[{"symbol": "AAA", "freq": "1h", "bars": bars()},
                               {"symbol": "BBB", "freq": "1h", "bars": bars(1)}])),
    Case("one-bar-no-freq", "POST", F, 422, "series[0]", json=forecast(series=[{"symbol": "AAA", "bars": bars(1)}])),
    Case("one-bar-upload", "POST", F, 422, "file (symbol S0)", **upload(CSV_HEADER + csv_rows(1))),
    Case("future-wrong-length", "POST", F, 422, "series[0].future_timestamps",
         json=series(future_timestamps=["2030-01-01T00:00:00Z"])),
    Case("future-before-last-bar", "POST", F, 422, "series[0].future_timestamps[0]",
         json=series(future_timestamps=["2020-01-01T00:00:00Z", "2020-01-02T00:00:00Z", "2020-01-03T00:00:00Z"])),
    # --- plain bad values ---------------------------------------------------------------------------
    Case("high-below-low", "POST", F, 422, "series[0].bars[0]",
         json=series(bars=[{**bars()[0], "high": 1.0}, *bars()[1:]])),
    Case("duplicate-timestamp", "POST", F, 422, "series[0].bars[1].timestamp",
         json=series(bars=[bars()[0], bars()[0], *bars()[2:]])),
    Case("close-not-a-number", "POST", F, 422, "series[0].bars[0].close",
         json=series(bars=[{**bars()[0], "close": "NaN"}, *bars()[1:]])),
    Case("no-series", "POST", F, 422, "series", json=forecast(series=[])),
    Case("no-bars", "POST", F, 422, "series[0].bars", json=series(bars=[])),
    Case("pred-len-zero", "POST", F, 422, "pred_len", json=forecast(pred_len=0)),
    Case("pred-len-huge", "POST", F, 422, "pred_len", json=forecast(pred_len=10**12)),
    Case("lookback-negative", "POST", F, 422, "lookback", json=forecast(lookback=-1)),
    Case("top-p-zero", "POST", F, 422, "sampling.top_p", json=forecast(sampling={"top_p": 0})),
    Case("sample-count-huge", "POST", F, 422, "sampling.sample_count", json=forecast(sampling={"sample_count": 10**6})),
    Case("quantile-above-one", "POST", F, 422, "quantiles", json=forecast(quantiles=[1.5])),
    Case("device-tpu", "POST", F, 422, "device", json=forecast(device="tpu")),
    Case("model-unknown", "POST", F, 422, "model", json=forecast(model="no-such-model")),
    Case("model-path-escape", "POST", F, 422, "model", json=forecast(model="../../etc")),
    Case("calendar-bad-weekday", "POST", F, 422, "calendar", json=forecast(calendar={"weekdays": [9]})),
    Case("idempotency-key-long", "POST", F, 422, "Idempotency-Key", json=forecast(),
         headers={"Idempotency-Key": "k" * 300}),
    Case("too-many-series", "POST", F, 422, "series",
         json=forecast(series=[{"symbol": f"S{i}", "freq": "1h", "bars": bars()} for i in range(21)])),
    Case("malformed-json", "POST", F, 400, "body", **raw_json(b'{"model": ')),
    Case("wrong-content-type", "POST", F, 415, None, content=b"hello", headers={"content-type": "text/plain"}),
    Case("limit-zero", "GET", "/v1/jobs?limit=0", 422, "limit"),
    Case("limit-text", "GET", "/v1/jobs?limit=lots", 422, "limit"),
    Case("created-after-garbage", "GET", "/v1/jobs?created_after=soon", 422, "created_after"),
    Case("cursor-garbage", "GET", "/v1/jobs?cursor=%%%", 422, "cursor"),
    Case("symbol-bad-chars", "GET", "/v1/forecasts?symbol=%3Cscript%3E", 422, "symbol[0]"),
    # --- uploads: caps on the raw bytes, then the parsers -------------------------------------------
    Case("csv-million-columns", "POST", F, 422, "file", **upload("a," * 100_000 + "b\n1\n")),
    Case("csv-wide-header", "POST", F, 422, "file", **upload(",".join(["c"] * (MAX_FILE_COLUMNS + 1)) + "\n")),
    Case("csv-long-line", "POST", F, 422, "file", **upload(CSV_HEADER + "AAA," + "9" * (MAX_LINE_BYTES + 1) + "\n")),
    Case("csv-too-many-rows", "POST", F, 422, "file", **upload(CSV_HEADER + "\n".join(["x"] * 501) + "\n")),
    Case("csv-too-many-symbols", "POST", F, 422, "file", **upload(CSV_HEADER + csv_rows(42, symbols=21))),
    Case("csv-not-utf8", "POST", F, 422, "file", **upload(b"\xff\xfe" + CSV_HEADER.encode() + b"\xff\n")),
    Case("csv-empty", "POST", F, 422, "file", **upload(b"")),
    Case("csv-header-only", "POST", F, 422, "file", **upload(CSV_HEADER)),
    Case("csv-unknown-column", "POST", F, 422, "file column colour", **upload("symbol,timestamp,open,high,low,close,colour\n")),
    Case("csv-missing-column", "POST", F, 422, "file column close", **upload("symbol,timestamp,open,high,low\n")),
    Case("csv-duplicate-column", "POST", F, 422, "file", **upload("symbol,timestamp,open,high,low,close,close\n")),
    Case("csv-nul-cell", "POST", F, 422, "file row 1: symbol", **upload(CSV_HEADER + "A\x00A,2024-06-18T09:00:00Z,1,1,1,1\n")),
    Case("parquet-garbage", "POST", F, 422, "file", **upload(b"PAR1" + b"\x00" * 64 + b"PAR1", name="bars.parquet")),
    Case("upload-too-large", "POST", F, 413, "file", **upload(CSV_HEADER + "x" * (300 * 1024))),
    Case("upload-request-not-json", "POST", F, 400, "request", **upload(CSV_HEADER + csv_rows(5), "{not json")),
    Case("store-upload-other-symbol", "POST", "/v1/series/AAA/bars", 422, "file row 1: symbol",
         files={"file": ("b.csv", (CSV_HEADER + csv_rows(3)).encode(), "text/csv")}, data={"freq": "1h"}),
    Case("store-upload-wide", "POST", "/v1/series", 422, "file",
         content=("c," * 50_000 + "c\n").encode(), headers={"content-type": "text/csv"}),
]


@pytest.fixture(scope="module")
def hostile_client(tmp_path_factory, request) -> Iterator[tuple[TestClient, dict[str, str]]]:
    settings = Settings(data_dir=tmp_path_factory.mktemp("hostile"), database_url=None, broker_url=None, **LIMITS)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        created = client.post("/v1/schedules", json=SCHEDULE)
        assert created.status_code == 201, created.text
        yield client, {"schedule": created.json()["id"]}


def test_the_catalogue_is_large_and_named_uniquely():
    assert len(CASES) >= 60 and len({c.id for c in CASES}) == len(CASES)


def send(client: TestClient, case: Case, ids: dict[str, str]):
    kwargs: dict[str, Any] = {"headers": case.headers}
    for name in ("json", "content", "files", "data"):
        if getattr(case, name) is not None:
            kwargs[name] = getattr(case, name)
    return client.request(case.method, case.path.format(**ids), **kwargs)


def check(response, case: Case) -> None:
    assert response.status_code == case.status, f"{case.id}: {response.status_code} {response.text[:300]}"
    error = response.json()["error"]
    assert error["code"] and error["message"]
    if case.field is not None:
        fields = [d.get("field", "") for d in error["details"]]
        assert any(f.startswith(case.field) for f in fields), f"{case.id}: fields {fields}, expected {case.field}"


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_hostile_input_gets_a_clear_4xx(hostile_client, case):
    client, ids = hostile_client
    check(send(client, case, ids), case)


NUL_CASES = [c for c in CASES if c.id.startswith(("nul-", "cron-feb", "year-0002"))]


@pytest.mark.integration
@pytest.mark.parametrize("case", NUL_CASES, ids=lambda c: c.id)
def test_hostile_input_on_postgresql(pg_url, tmp_path, case):
    settings = Settings(data_dir=tmp_path, database_url=pg_url, broker_url=None, **LIMITS)
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        created = client.post("/v1/schedules", json=SCHEDULE)
        assert created.status_code == 201, created.text
        check(send(client, case, {"schedule": created.json()["id"]}), case)


def test_a_valid_request_still_passes(hostile_client):
    # The control: the same harness accepts what the catalogue's cases were derived from.
    client, _ = hostile_client
    assert client.post(F, json=forecast()).status_code == 202
    assert client.post(F, **upload(CSV_HEADER + csv_rows(5))).status_code == 202
