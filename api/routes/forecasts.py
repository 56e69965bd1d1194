"""The latest forecast of each symbol across jobs (nightly schedules or posted jobs)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response

from api.deps import CallerDep, SessionDep
from api.routes.jobs import RESULT_MEDIA_TYPES, ResultFormat, _csv_bytes, _json_rows, _parquet_bytes
from api.schemas import ErrorResponse, ForecastsPublic, as_utc
from kronos_jobs import bars as bar_input
from kronos_jobs.crud import forecasts as forecast_crud
from kronos_jobs.crud import schedules as schedule_crud

router = APIRouter(prefix="/v1/forecasts", tags=["forecasts"])

ERRORS = {status: {"model": ErrorResponse} for status in (400, 404, 422, 503)}


@router.get("", response_model=ForecastsPublic,
            responses={**ERRORS, 200: {"content": {"text/csv": {}, "application/vnd.apache.parquet": {}}}})
def read_latest_forecasts(
    session: SessionDep,
    caller: CallerDep,
    symbol: Annotated[list[str] | None, Query(description="Repeat for several; default every symbol.")] = None,
    as_of: Annotated[datetime | None, Query(description="The latest forecast finished at or before this time.")] = None,
    schedule: Annotated[str | None, Query(max_length=64, description="Only forecasts made by this schedule's runs.")] = None,
    format: ResultFormat = ResultFormat.JSON,  # noqa: A002 - the query parameter's public name
) -> Any:
    """Latest forecast per symbol (or as of a time), as JSON, CSV or Parquet."""
    symbols = [bar_input.check_symbol(s, f"symbol[{i}]") for i, s in enumerate(symbol or [])]
    if schedule is not None:
        schedule_crud.get_schedule(session, tenant_id=caller.tenant_id, schedule_id=schedule)
    rows = forecast_crud.latest_forecasts(session, tenant_id=caller.tenant_id, symbols=symbols or None,
                                          as_of=as_utc(as_of), schedule_id=schedule)
    if format is ResultFormat.JSON:
        out = rows.copy()
        out["forecast_at"] = out["forecast_at"].map(lambda t: t.isoformat().replace("+00:00", "Z"))
        return ForecastsPublic(columns=list(rows.columns), rows=_json_rows(out))
    content = _csv_bytes(rows) if format is ResultFormat.CSV else _parquet_bytes(rows)
    return Response(content, media_type=RESULT_MEDIA_TYPES[format],
                    headers={"Content-Disposition": f'attachment; filename="forecasts.{format.value}"'})
