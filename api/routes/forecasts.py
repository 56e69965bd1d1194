"""The latest forecast of each symbol across jobs (nightly schedules or posted jobs)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query

from api.deps import CallerDep, SessionDep
from api.schemas import ErrorResponse, ForecastsPublic, as_utc
from api.tables import FILE_RESPONSES, ResultFormat, file_response, json_rows
from kronos_jobs.crud import forecasts as forecast_crud
from kronos_jobs.crud import schedules as schedule_crud
from kronos_jobs.inputs.checks import check_symbol

router = APIRouter(prefix="/v1/forecasts", tags=["forecasts"])

ERRORS = {status: {"model": ErrorResponse} for status in (400, 404, 422, 503)}


@router.get("", response_model=ForecastsPublic,
            responses={**ERRORS, **FILE_RESPONSES})
def read_latest_forecasts(
    session: SessionDep,
    caller: CallerDep,
    symbol: Annotated[list[str] | None, Query(description="Repeat for several; default every symbol.")] = None,
    as_of: Annotated[datetime | None, Query(description="The latest forecast finished at or before this time.")] = None,
    schedule: Annotated[str | None, Query(max_length=64, description="Only forecasts made by this schedule's runs.")] = None,
    format: ResultFormat = ResultFormat.JSON,  # noqa: A002 - the query parameter's public name
) -> Any:
    """Latest forecast per symbol (or as of a time), as JSON, CSV or Parquet."""
    symbols = [check_symbol(s, f"symbol[{i}]") for i, s in enumerate(symbol or [])]
    if schedule is not None:
        schedule_crud.get_schedule(session, tenant_id=caller.tenant_id, schedule_id=schedule)
    rows = forecast_crud.latest_forecasts(session, tenant_id=caller.tenant_id, symbols=symbols or None,
                                          as_of=as_utc(as_of), schedule_id=schedule)
    if format is ResultFormat.JSON:
        return ForecastsPublic(columns=list(rows.columns), rows=json_rows(rows))
    return file_response(rows, format, "forecasts")
