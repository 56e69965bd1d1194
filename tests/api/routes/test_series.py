"""The series store over HTTP: JSON, CSV and Parquet imports, idempotent upsert, range reads,
listing, deletion, and bad rows rejected whole with their row numbers."""

from __future__ import annotations

import io
import json
import re

import pandas as pd
import pytest
from fastapi.testclient import TestClient

from kronos_jobs.testing.factories import make_bars


def bar(ts: str, o=10.0, h=10.5, l=9.5, c=10.2, **extra) -> dict:  # noqa: E741
    return {"timestamp": ts, "open": o, "high": h, "low": l, "close": c, **extra}


def csv_bytes(frame: pd.DataFrame) -> bytes:
    out = frame.copy()
    out["timestamp"] = out["timestamp"].map(lambda t: t.isoformat())
    return out.to_csv(index=False).encode()


def parquet_bytes(frame: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()


def listing(client: TestClient) -> dict:
    return {s["symbol"]: s for s in client.get("/v1/series").json()["data"]}


def test_json_import_is_idempotent_and_reads_back(client: TestClient) -> None:
    body = {"freq": "5min", "bars": [bar("2024-06-18T09:35:00+08:00", volume=5.0, amount=50.0),
                                     bar("2024-06-18T01:30:00Z", volume=1.0, amount=10.0)]}
    first = client.post("/v1/series/600519.SH/bars", json=body)
    assert first.status_code == 200, first.text
    assert first.json()["rows_written"] == 2
    body["bars"][0]["close"] = 10.4  # the same timestamps again: replaced, not duplicated
    again = client.post("/v1/series/600519.SH/bars", json=body).json()
    assert again["series"] == [{"symbol": "600519.SH", "freq": "5min", "first_timestamp": "2024-06-18T01:30:00Z",
                                "last_timestamp": "2024-06-18T01:35:00Z", "rows": 2}]
    rows = client.get("/v1/series/600519.SH/bars").json()
    assert rows["freq"] == "5min" and [r["timestamp"] for r in rows["rows"]] == ["2024-06-18T01:30:00Z", "2024-06-18T01:35:00Z"]
    assert rows["rows"][1]["close"] == 10.4  # +08:00 converted to UTC


def test_csv_parquet_and_bulk_imports(client: TestClient) -> None:
    bars = make_bars({"AAA": 20, "BBB": 10})
    one = bars[bars.symbol == "AAA"].drop(columns="symbol")
    r = client.post("/v1/series/AAA/bars?freq=5min", content=csv_bytes(one), headers={"Content-Type": "text/csv"})
    assert r.status_code == 200, r.text and r.json()["rows_written"] == 20
    r = client.post("/v1/series", files={"file": ("all.parquet", parquet_bytes(bars), "application/vnd.apache.parquet")})
    assert r.status_code == 200, r.text
    assert r.json()["rows_written"] == 30
    stored = listing(client)
    assert {s: (v["rows"], v["freq"]) for s, v in stored.items()} == {"AAA": (20, "5min"), "BBB": (10, "5min")}

    window = client.get("/v1/series/AAA/bars", params={"start": "2024-06-18T01:40:00Z", "end": "2024-06-18T01:50:00Z"}).json()
    assert [r["timestamp"] for r in window["rows"]] == ["2024-06-18T01:40:00Z", "2024-06-18T01:45:00Z", "2024-06-18T01:50:00Z"]
    export = client.get("/v1/series/BBB/bars", params={"format": "parquet", "limit": 3})
    frame = pd.read_parquet(io.BytesIO(export.content))
    assert len(frame) == 3 and frame.timestamp.max() == bars[bars.symbol == "BBB"].timestamp.max()

    assert client.delete("/v1/series/AAA").json() == {"symbol": "AAA", "freq": None, "deleted_rows": 20}
    assert set(listing(client)) == {"BBB"}
    assert client.delete("/v1/series/AAA").status_code == 404


def test_symbol_with_a_slash(client: TestClient) -> None:
    assert client.post("/v1/series/EUR/USD/bars", json={"freq": "1h", "bars": [bar("2024-01-01T00:00:00Z")]}).status_code == 200
    assert client.get("/v1/series/EUR/USD/bars").json()["symbol"] == "EUR/USD"


def test_bad_rows_reject_the_whole_file(client: TestClient) -> None:
    bars = make_bars({"AAA": 5, "BBB": 5})
    bars.loc[7, "high"] = bars.loc[7, "low"] - 1  # file row 8
    bars.loc[3, "volume"] = -1.0  # file row 4
    r = client.post("/v1/series?freq=5min", files={"file": ("bars.csv", csv_bytes(bars), "text/csv")})
    assert r.status_code == 422
    fields = [d["field"] for d in r.json()["error"]["details"]]
    assert "file row 8: high" in fields and "file row 4: volume" in fields
    assert client.get("/v1/series").json()["data"] == []  # nothing half-imported


@pytest.mark.parametrize("path, kwargs, status, field", [
    ("/v1/series/AAA/bars", {"json": {"freq": "5min", "bars": [bar("2024-01-01T00:00Z", h=9.0)]}}, 422, "bars[0].high"),
    ("/v1/series/AAA/bars", {"json": {"freq": "5min", "bars": [bar("yesterday")]}}, 422, "bars[0].timestamp"),
    ("/v1/series/AAA/bars", {"json": {"freq": "5min", "bars": [bar("2024-01-01T00:00Z", volume=-1.0)]}}, 422, "bars[0].volume"),
    ("/v1/series/AAA/bars", {"json": {"freq": "5min", "bars": [bar("2024-01-01T00:00Z"), bar("2024-01-01T00:00Z")]}}, 422, "bars[1].timestamp"),
    ("/v1/series/AAA/bars", {"json": {"freq": "fortnightly", "bars": [bar("2024-01-01T00:00Z")]}}, 422, "freq"),
    ("/v1/series/AAA/bars", {"json": {"bars": [bar("2024-01-01T00:00Z")]}}, 422, "freq"),
    ("/v1/series/AAA/bars", {"json": {"freq": "5min", "bars": []}}, 422, "bars"),
    ("/v1/series/AAA/bars", {"json": {"freq": "5min", "bars": [bar("2024-01-01T00:00Z")], "extra": 1}}, 422, "extra"),
    ("/v1/series/bad%20symbol/bars", {"json": {"freq": "5min", "bars": [bar("2024-01-01T00:00Z")]}}, 422, "symbol"),
    ("/v1/series/AAA/bars", {"content": b"x", "headers": {"Content-Type": "image/png"}}, 415, None),
    ("/v1/series/AAA/bars?freq=5min", {"content": b"symbol,timestamp,open,high,low,close\nBBB,2024-01-01,1,2,0.5,1\n",
                                       "headers": {"Content-Type": "text/csv"}}, 422, "file row 1: symbol"),
    ("/v1/series", {"json": {"freq": "5min", "bars": [bar("2024-01-01T00:00Z")]}}, 422, "body"),
    ("/v1/series", {"files": {"file": ("a.csv", b"timestamp,open,high,low,close\n2024-01-01,1,2,0.5,1\n", "text/csv")}}, 422, "file column symbol"),
])
def test_bad_imports_are_4xx_naming_the_field(client: TestClient, path, kwargs, status, field) -> None:
    r = client.post(path, **kwargs)
    assert r.status_code == status, r.text
    if field is not None:
        assert field in [d["field"] for d in r.json()["error"]["details"]], r.json()
    assert client.get("/v1/series").json()["data"] == []


@pytest.mark.parametrize("query, status, field", [
    ({"start": "2024-02-01T00:00:00Z", "end": "2024-01-01T00:00:00Z"}, 422, "start"),
    ({"start": "soon"}, 422, "start"),
    ({"limit": 0}, 422, "limit"),
    ({"format": "xml"}, 422, "format"),
    ({"freq": "1h"}, 404, "symbol"),
])
def test_bad_reads_name_the_field(client: TestClient, query, status, field) -> None:
    client.post("/v1/series/AAA/bars", json={"freq": "5min", "bars": [bar("2024-01-01T00:00Z")]})
    r = client.get("/v1/series/AAA/bars", params=query)
    assert r.status_code == status, r.text
    assert field in [d["field"] for d in r.json()["error"]["details"]]


def test_two_frequencies_need_a_choice(client: TestClient) -> None:
    client.post("/v1/series/AAA/bars", json={"freq": "5min", "bars": [bar("2024-01-01T00:00Z")]})
    client.post("/v1/series/AAA/bars", json={"freq": "1D", "bars": [bar("2024-01-01T00:00Z")]})
    r = client.get("/v1/series/AAA/bars")
    assert r.status_code == 422 and r.json()["error"]["details"][0]["field"] == "freq"
    assert client.get("/v1/series/AAA/bars", params={"freq": "1D"}).json()["freq"] == "1D"


def test_forecast_job_reads_series_store_symbols(client: TestClient) -> None:
    bars = make_bars({"AAA": 30, "BBB": 30})
    client.post("/v1/series?freq=5min", files={"file": ("b.csv", csv_bytes(bars), "text/csv")})
    body = {"model": "random:mini", "lookback": 16, "pred_len": 2, "series_store": {"symbols": ["AAA", "BBB"]},
            "calendar": {"timezone": "America/New_York", "open": "09:30", "close": "16:00"}}
    job = client.post("/v1/jobs/forecast", json=body)
    assert job.status_code == 202, job.text
    params = job.json()["params"]
    assert params["source"] == "store" and params["n_series"] == 2 and params["freq"] == {"AAA": "5min", "BBB": "5min"}
    assert params["calendar"]["open"] == "09:30"
    for change, field in [({"series_store": {"symbols": ["ZZZ"]}}, "series_store.symbols[0]"),
                          ({"series_store": {"symbols": ["AAA"], "freq": "1h"}}, "series_store.symbols[0]"),
                          ({"series_store": {"symbols": []}}, "series_store.symbols"),
                          ({"series": [{"symbol": "AAA", "bars": [bar("2024-01-01T00:00Z")]}]}, "series"),
                          ({"calendar": {"weekdays": []}}, "calendar.weekdays")]:
        r = client.post("/v1/jobs/forecast", json={**body, **change})
        assert r.status_code == 422, r.text
        assert field in [d["field"] for d in r.json()["error"]["details"]], r.json()


def test_openapi_documents_the_import_bodies(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    refs = set(re.findall(r'"#/components/schemas/([^"]+)"', json.dumps(schema)))
    assert refs <= set(schema["components"]["schemas"]), refs - set(schema["components"]["schemas"])
    body = schema["paths"]["/v1/series/{symbol}/bars"]["post"]["requestBody"]["content"]
    assert {"application/json", "text/csv", "multipart/form-data"} <= set(body)
