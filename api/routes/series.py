"""The series store: import bars (JSON, CSV, Parquet), read a range back, list, delete.

Every import is one transaction: a single bad row rejects the whole request (422, naming the row),
and nothing is written. Re-importing a bar at a stored (symbol, freq, timestamp) replaces it.
Timestamps follow `kronos_jobs.inputs.parsing`: an offset is converted to UTC, no offset means UTC; bars
are stored and returned in UTC.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import UploadFile

from api.deps import CallerDep, SessionDep, SettingsDep
from api.schemas import (
    BarsPublic,
    ErrorResponse,
    SeriesBarsCreate,
    SeriesDeletedPublic,
    SeriesImportPublic,
    SeriesListPublic,
    SeriesPublic,
)
from api.tables import FILE_RESPONSES, ResultFormat, file_response, json_rows
from api.parsing_pool import pool_of
from api.uploads import Upload, validate_json
from kronos_jobs.core.errors import InvalidRequest, PayloadTooLarge
from kronos_jobs.core.settings import Settings
from kronos_jobs.crud import series as series_crud
from kronos_jobs.inputs.checks import check_symbol
from kronos_jobs.inputs.parsing import BarsInput, parse_symbol_bars
from kronos_jobs.inputs.store import store_freqs
from kronos_jobs.inputs.wall_clock import utc_instant

router = APIRouter(prefix="/v1/series", tags=["series"])

ERRORS = {status: {"model": ErrorResponse} for status in (400, 404, 409, 413, 415, 422, 503)}
Symbol = Annotated[str, Path(max_length=128, description="The symbol, e.g. 600519.SH or EUR/USD.")]
Freq = Annotated[str | None, Query(max_length=32, description="pandas offset alias: 5min, 1h, 1D.")]
FILE_TYPES = ("text/csv", "application/csv", "application/octet-stream", "application/vnd.apache.parquet",
              "application/x-parquet", "application/parquet")

IMPORT_BODY_DOC = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": {"$ref": "#/components/schemas/SeriesBarsCreate"}},
            "text/csv": {"schema": {"type": "string"}},
            "application/vnd.apache.parquet": {"schema": {"type": "string", "format": "binary"}},
            "multipart/form-data": {"schema": {"type": "object", "required": ["file"], "properties": {
                "file": {"type": "string", "format": "binary",
                         "description": "CSV or Parquet: [symbol,] timestamp, open, high, low, close[, volume, amount, freq]."},
                "freq": {"type": "string"}}}},
        },
    }
}


@dataclass
class StoreUpload(Upload):
    freq: str | None = None  # the multipart `freq` field
    parsed: BarsInput | None = None  # parsed off the request threads (api/parsing_pool.py)


async def read_import(request: Request) -> SeriesBarsCreate | StoreUpload:
    """JSON bars, a multipart `file` (+ optional `freq` field), or a raw CSV/Parquet body."""
    media = request.headers.get("content-type", "").split(";")[0].strip().lower()
    limit = request.app.state.settings.max_upload_bytes
    if media == "application/json" or media.endswith("+json"):
        return await run_in_threadpool(validate_json, SeriesBarsCreate, await request.body(), ("body",))
    if media == "multipart/form-data":
        async with request.form(max_files=1, max_fields=4, max_part_size=1024 * 1024) as form:
            file = form.get("file")
            if not isinstance(file, UploadFile):
                raise InvalidRequest("file: attach the CSV or Parquet file as the multipart field `file`", field="file")
            data = await file.read(limit + 1)
            freq = form.get("freq")
            upload = StoreUpload(data, file.filename, file.content_type,
                                 freq if isinstance(freq, str) and freq.strip() else None)
    elif media in FILE_TYPES:
        upload = StoreUpload(await request.body(), None, media)
    else:
        raise HTTPException(415, f"Content-Type {media or '(none)'!r} is not accepted; send application/json, "
                                 "text/csv, application/vnd.apache.parquet or multipart/form-data with a file")
    if len(upload.data) > limit:
        raise PayloadTooLarge(f"file: more than {limit} bytes (KRONOS_MAX_UPLOAD_BYTES)", field="file")
    symbol = request.path_params.get("symbol")  # /v1/series/{symbol}/bars: the file is that symbol's
    upload.parsed = await pool_of(request.app).parse_upload(
        upload.data, filename=upload.filename, content_type=upload.content_type,
        freq=upload.freq or request.query_params.get("freq"),
        symbol=None if symbol is None else check_symbol(symbol, "symbol"))
    return upload


ImportDep = Annotated[SeriesBarsCreate | StoreUpload, Depends(read_import)]


def _import(session, settings: Settings, tenant_id: str, body: SeriesBarsCreate | StoreUpload, freq: str | None,
            symbol: str | None) -> SeriesImportPublic:
    if isinstance(body, SeriesBarsCreate):
        parsed = parse_symbol_bars(symbol, freq=body.freq or freq, settings=settings,
                                             bars=[b.model_dump(exclude_none=True) for b in body.bars])
    else:
        parsed = body.parsed
    freqs = store_freqs(parsed)
    written = series_crud.upsert_bars(session, tenant_id=tenant_id, bars=parsed.bars, freqs=freqs)
    stored = series_crud.list_symbols(session, tenant_id=tenant_id, symbols=list(freqs))
    return SeriesImportPublic(rows_written=written, series=[SeriesPublic(**s) for s in stored if freqs[s["symbol"]] == s["freq"]])


@router.post("/{symbol:path}/bars", response_model=SeriesImportPublic, responses=ERRORS, openapi_extra=IMPORT_BODY_DOC)
def import_symbol_bars(symbol: Symbol, body: ImportDep, session: SessionDep, settings: SettingsDep, caller: CallerDep,
                       freq: Freq = None) -> SeriesImportPublic:
    """Import one symbol's bars (JSON, CSV or Parquet); all or nothing."""
    symbol = check_symbol(symbol, "symbol")
    return _import(session, settings, caller.tenant_id, body, freq, symbol)


@router.post("", response_model=SeriesImportPublic, responses=ERRORS, openapi_extra=IMPORT_BODY_DOC)
def import_series(body: ImportDep, session: SessionDep, settings: SettingsDep, caller: CallerDep,
                  freq: Freq = None) -> SeriesImportPublic:
    """Import a long-format CSV or Parquet file with a `symbol` column; all or nothing."""
    if isinstance(body, SeriesBarsCreate):
        raise InvalidRequest("body: send a CSV or Parquet file with a symbol column here; JSON bars go to "
                             "POST /v1/series/{symbol}/bars", field="body")
    return _import(session, settings, caller.tenant_id, body, freq, None)


@router.get("", response_model=SeriesListPublic, responses=ERRORS)
def list_series(session: SessionDep, caller: CallerDep, freq: Freq = None) -> SeriesListPublic:
    """List stored symbols with their first and last timestamp and row count."""
    return SeriesListPublic(data=[SeriesPublic(**s) for s in series_crud.list_symbols(session, tenant_id=caller.tenant_id, freq=freq)])


@router.get("/{symbol:path}/bars", response_model=BarsPublic,
            responses={**ERRORS, **FILE_RESPONSES})
def read_symbol_bars(
    symbol: Symbol,
    session: SessionDep,
    caller: CallerDep,
    freq: Freq = None,
    start: datetime | None = Query(None, description="Inclusive; an offset is converted to UTC, none means UTC."),
    end: datetime | None = Query(None, description="Inclusive."),
    limit: Annotated[int | None, Query(ge=1, le=1_000_000, description="Only the latest `limit` bars in the range.")] = None,
    format: ResultFormat = ResultFormat.JSON,  # noqa: A002 - the query parameter's public name
) -> Any:
    """Read a symbol's bars in a time range, as JSON, CSV or Parquet."""
    if start is not None and end is not None and utc_instant(start) > utc_instant(end):
        raise InvalidRequest(f"start: {start.isoformat()} is after end {end.isoformat()}", field="start")
    freq = series_crud.resolve_freq(session, tenant_id=caller.tenant_id, symbol=symbol, freq=freq)
    rows = series_crud.read_bars(session, tenant_id=caller.tenant_id, symbol=symbol, freq=freq,
                                 start=utc_instant(start), end=utc_instant(end), limit=limit)
    if format is ResultFormat.JSON:
        return BarsPublic(symbol=symbol, freq=freq, columns=list(rows.columns), rows=json_rows(rows))
    return file_response(rows, format, symbol.replace("/", "_"))


@router.delete("/{symbol:path}", response_model=SeriesDeletedPublic, responses=ERRORS)
def delete_symbol(symbol: Symbol, session: SessionDep, caller: CallerDep, freq: Freq = None) -> SeriesDeletedPublic:
    """Delete a symbol's bars (at one frequency, or all)."""
    deleted = series_crud.delete_symbol(session, tenant_id=caller.tenant_id, symbol=symbol, freq=freq)
    return SeriesDeletedPublic(symbol=symbol, freq=freq, deleted_rows=deleted)
