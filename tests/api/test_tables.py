"""api/tables.py: the one encoding of row tables (job results, stored bars, latest forecasts)."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from api.tables import ResultFormat, csv_bytes, file_response, json_rows, parquet_bytes


@pytest.fixture
def rows() -> pd.DataFrame:
    return pd.DataFrame({
        "symbol": ["AAPL", "AAPL"],
        "timestamp": pd.to_datetime(["2026-11-26 14:30", "2026-11-26 14:35"]),  # naive: stored UTC
        "close": [1.5, 2.25],
        "q0.1_close": [np.nan, 2.0],
        "forecast_at": pd.to_datetime(["2026-11-26 10:00:00+01:00"] * 2),  # an offset: converted to UTC
    })


def test_json_rows_use_utc_iso_timestamps_and_null(rows):
    got = json_rows(rows)
    assert got[0] == {"symbol": "AAPL", "timestamp": "2026-11-26T14:30:00Z", "close": 1.5, "q0.1_close": None,
                      "forecast_at": "2026-11-26T09:00:00Z"}
    assert json_rows(rows.iloc[:0]) == []


def test_csv_matches_json_timestamps(rows):
    back = pd.read_csv(io.BytesIO(csv_bytes(rows)))
    assert list(back.columns) == list(rows.columns)
    assert back["timestamp"].tolist() == ["2026-11-26T14:30:00Z", "2026-11-26T14:35:00Z"]
    assert back["forecast_at"].tolist() == ["2026-11-26T09:00:00Z"] * 2
    assert back["q0.1_close"].isna().tolist() == [True, False]


def test_parquet_keeps_timezone_aware_utc(rows):
    back = pd.read_parquet(io.BytesIO(parquet_bytes(rows)))
    for column in ("timestamp", "forecast_at"):
        assert str(back[column].dt.tz) == "UTC"
    assert back["forecast_at"].iloc[0] == pd.Timestamp("2026-11-26 09:00", tz="UTC")
    assert rows["timestamp"].dt.tz is None  # the caller's frame is not modified


def test_file_response_names_the_attachment(rows):
    response = file_response(rows, ResultFormat.CSV, "job-1")
    assert response.media_type == "text/csv; charset=utf-8"
    assert response.headers["content-disposition"] == 'attachment; filename="job-1.csv"'
    assert file_response(rows, ResultFormat.PARQUET, "x").body[:4] == b"PAR1"
    with pytest.raises(ValueError, match="JSON"):
        file_response(rows, ResultFormat.JSON, "x")
