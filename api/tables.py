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

from urllib.parse import quote

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
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


def parquet_bytes(rows: pd.DataFrame, metadata: dict[str, str] | None = None) -> bytes:
    """Parquet with `metadata` (string keys and values) added to the file's key-value metadata."""
    table = pa.Table.from_pandas(_utc_columns(rows), preserve_index=False)
    if metadata:
        table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                               **{k.encode(): v.encode() for k, v in metadata.items()}})
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


# Provenance keys (kronos_jobs.jobs.registry.provenance) as Parquet metadata keys and HTTP headers.
PROVENANCE_HEADERS = {"model": "X-Kronos-Model", "checkpoint": "X-Kronos-Checkpoint", "label": "X-Kronos-Label"}


def provenance_items(provenance: dict[str, str | None] | None) -> dict[str, str]:
    """`kronos.model`, `kronos.checkpoint`, `kronos.label` for the values that are set."""
    return {f"kronos.{key}": str(provenance[key]) for key in PROVENANCE_HEADERS if (provenance or {}).get(key)}


def file_response(rows: pd.DataFrame, format: ResultFormat, filename: str,  # noqa: A002
                  provenance: dict[str, str | None] | None = None) -> Response:
    """The rows as a CSV or Parquet attachment named `<filename>.<format>`; `provenance` (which model and
    checkpoint made them) goes into X-Kronos-* headers and, for Parquet, the file's metadata."""
    if format is ResultFormat.JSON:
        raise ValueError("JSON tables are returned as response models, not files")
    content = csv_bytes(rows) if format is ResultFormat.CSV else parquet_bytes(rows, provenance_items(provenance))
    headers = {"Content-Disposition": f'attachment; filename="{filename}.{format.value}"'}
    for key, header in PROVENANCE_HEADERS.items():
        if (provenance or {}).get(key):
            # Header values must be latin-1; a path or name outside it is percent-encoded.
            headers[header] = quote(str(provenance[key]), safe=" /:@.-_+=~")
    return Response(content, media_type=MEDIA_TYPES[format], headers=headers)
