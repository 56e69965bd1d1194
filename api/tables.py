"""Row tables in responses, encoded one way for every endpoint that returns rows.

Job results, stored bars and latest forecasts are pandas frames; each can be read as JSON (a
column list plus one object per row), CSV or Parquet (`?format=`). Every timestamp column is UTC:
ISO 8601 with a `Z` in JSON and CSV, timezone-aware in Parquet. Missing values (a quantile that was
not asked for) are `null` in JSON and empty in CSV.
"""

from __future__ import annotations

import io
import json
from enum import Enum
from typing import Any

import pandas as pd
from fastapi import Response


class ResultFormat(str, Enum):
    JSON = "json"
    CSV = "csv"
    PARQUET = "parquet"


MEDIA_TYPES = {ResultFormat.CSV: "text/csv; charset=utf-8", ResultFormat.PARQUET: "application/vnd.apache.parquet"}

# For a route decorator's `responses`: the 200 answer may also be a CSV or Parquet file.
FILE_RESPONSES = {200: {"content": {"text/csv": {}, "application/vnd.apache.parquet": {}}}}


def _utc_columns(rows: pd.DataFrame) -> pd.DataFrame:
    out = rows.copy()
    for column in out.columns:
        if pd.api.types.is_datetime64_any_dtype(out[column]) or column == "timestamp":
            out[column] = pd.to_datetime(out[column], utc=True)
    return out


def _iso(rows: pd.DataFrame) -> pd.DataFrame:
    out = _utc_columns(rows)
    for column in out.columns:
        if isinstance(out[column].dtype, pd.DatetimeTZDtype):
            out[column] = out[column].map(lambda t: t.isoformat().replace("+00:00", "Z"))
    return out


def json_rows(rows: pd.DataFrame) -> list[dict[str, Any]]:
    """One dict per row; NaN becomes null, which JSON can carry."""
    return json.loads(_iso(rows).to_json(orient="records", double_precision=15)) if len(rows) else []


def csv_bytes(rows: pd.DataFrame) -> bytes:
    return _iso(rows).to_csv(index=False).encode("utf-8")


def parquet_bytes(rows: pd.DataFrame) -> bytes:
    buffer = io.BytesIO()
    _utc_columns(rows).to_parquet(buffer, index=False)
    return buffer.getvalue()


def file_response(rows: pd.DataFrame, format: ResultFormat, filename: str) -> Response:  # noqa: A002
    """The rows as a CSV or Parquet attachment named `<filename>.<format>`."""
    if format is ResultFormat.JSON:
        raise ValueError("JSON tables are returned as response models, not files")
    content = csv_bytes(rows) if format is ResultFormat.CSV else parquet_bytes(rows)
    return Response(content, media_type=MEDIA_TYPES[format],
                    headers={"Content-Disposition": f'attachment; filename="{filename}.{format.value}"'})
