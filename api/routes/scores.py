"""Live scores: how stored schedule (and opted-in) forecasts did once their bars arrived, next to
persistence on the same bars (kronos_jobs/evaluation/scoring.py scores them on the beat)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query

from api.deps import CallerDep, SessionDep
from api.schemas import ErrorResponse, ScoresPublic
from api.tables import FILE_RESPONSES, ResultFormat, file_response, json_rows
from kronos_jobs.crud import schedules as schedule_crud
from kronos_jobs.crud import scores as score_crud
from kronos_jobs.evaluation.scoring import rolling_scores
from kronos_jobs.inputs.checks import check_symbol
from kronos_jobs.inputs.wall_clock import utc_instant

router = APIRouter(prefix="/v1/scores", tags=["scores"])

ERRORS = {status: {"model": ErrorResponse} for status in (400, 404, 422, 503)}


@router.get("", response_model=ScoresPublic, responses={**ERRORS, **FILE_RESPONSES})
def read_scores(
    session: SessionDep,
    caller: CallerDep,
    schedule: Annotated[str | None, Query(max_length=64, description="Only forecasts of this schedule's runs.")] = None,
    model: Annotated[list[str] | None, Query(description="Repeat for several; default every model.")] = None,
    symbol: Annotated[list[str] | None, Query(description="Repeat for several; default every symbol.")] = None,
    since: Annotated[datetime | None, Query(description="Only forecast bars at or after this time, e.g. the month's start.")] = None,
    by: Annotated[Literal["all", "symbol"], Query(description="all: symbols pooled; symbol: a row per symbol.")] = "all",
    format: ResultFormat = ResultFormat.JSON,  # noqa: A002 - the query parameter's public name
) -> Any:
    """Rolling metrics of the model and of persistence over the same scored forecast bars."""
    symbols = [check_symbol(s, f"symbol[{i}]") for i, s in enumerate(symbol or [])]
    if schedule is not None:
        schedule_crud.get_schedule(session, tenant_id=caller.tenant_id, schedule_id=schedule)
    scored = score_crud.read_scores(session, tenant_id=caller.tenant_id, schedule_id=schedule, models=model or None,
                                    symbols=symbols or None, since=utc_instant(since))
    table = rolling_scores(scored, by_symbol=by == "symbol")
    if format is ResultFormat.JSON:
        return ScoresPublic(columns=list(table.columns), rows=json_rows(table))
    return file_response(table, format, "scores")
