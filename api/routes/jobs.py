"""Jobs: submit a forecast, list, read, fetch the result, cancel."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

import pandas as pd
from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response

from api.auth import InflightQuota
from api.deps import CallerDep, SessionDep, SettingsDep
from api.schemas import (
    BacktestResultPublic,
    ErrorResponse,
    ForecastJobCreate,
    ForecastParamsIn,
    ForecastUploadCreate,
    JobPublic,
    JobsPublic,
    ResultPublic,
)
from api.tables import FILE_RESPONSES, ResultFormat, file_response, json_rows
from api.parsing_pool import read_bars_body
from api.uploads import Upload, upload_body_doc
from kronos_jobs.charts.backtest import backtest_chart
from kronos_jobs.charts.forecast import CHART_FORMATS, ChartFormat, chart_timezone, chart_title, forecast_chart
from kronos_jobs.core.errors import Conflict, Gone, NotFound
from kronos_jobs.core.names import JobKind, JobState
from kronos_jobs.core.settings import Settings
from kronos_jobs.crud import backtests as backtest_crud
from kronos_jobs.core.workload import workload_of
from kronos_jobs.crud import jobs as job_crud
from kronos_jobs.crud import results as result_crud
from kronos_jobs.inputs.parsing import BarsInput, parse_inline_series
from kronos_jobs.inputs.store import read_store_input
from kronos_jobs.jobs.registry import provenance
from kronos_jobs.jobs.submit import submit_forecast

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

ERRORS = {status: {"model": ErrorResponse} for status in (400, 404, 409, 410, 413, 415, 422, 503)}
JobId = Annotated[str, Path(max_length=64, description="The job id returned by POST.")]


# --- reading a forecast submission (JSON body or multipart upload) --------------------------------


@dataclass
class ForecastSubmission:
    params: ForecastParamsIn  # a ForecastJobCreate (JSON) or a ForecastUploadCreate (upload)
    upload: Upload | None = None
    parsed: BarsInput | None = None  # the upload's bars, parsed off the request threads (api/parsing_pool.py)

    def series_input(self, settings: Settings, session=None, tenant_id: str | None = None) -> BarsInput:
        """Parse and check the bars (CPU work: runs in the handler's thread, not the event loop)."""
        store = getattr(self.params, "series_store", None)
        if store is not None:  # the latest `lookback` bars of stored symbols
            return read_store_input(session, tenant_id=tenant_id, symbols=store.symbols, freq=store.freq,
                                              lookback=self.params.lookback, settings=settings)
        if self.parsed is not None:
            return self.parsed
        series = [s.model_dump() for s in self.params.series]
        return parse_inline_series(series, pred_len=self.params.pred_len, settings=settings)

    def series_fields(self, symbols: list[str]) -> dict[str, str]:
        """Each symbol's field in the request, for a 422 about a series the worker could not forecast."""
        store = getattr(self.params, "series_store", None)
        if store is not None:
            given = {str(s).strip(): i for i, s in reversed(list(enumerate(store.symbols)))}
            return {s: f"series_store.symbols[{given[s]}]" for s in symbols if s in given}
        if self.upload is None:
            given = {str(item.symbol).strip(): i for i, item in enumerate(self.params.series)}
            return {s: f"series[{given[s]}]" for s in symbols if s in given}
        return {s: f"file (symbol {s})" for s in symbols}

    def forecast_params(self, freqs: dict[str, str | None], settings: Settings) -> dict[str, Any]:
        """The job's parameters in `kronos_jobs.jobs.submit.ForecastParams` form."""
        params = self.params.model_dump(include=set(ForecastParamsIn.model_fields) - {"priority"})
        params["model"] = params["model"] or settings.default_model
        params["freq"] = {symbol: freq for symbol, freq in freqs.items() if freq}
        return params


async def read_forecast_submission(request: Request) -> ForecastSubmission:
    """Read the body as JSON or as a multipart upload (`file` + a `request` JSON field)."""
    params, upload, parsed = await read_bars_body(request, ForecastJobCreate, ForecastUploadCreate)
    return ForecastSubmission(params=params, upload=upload, parsed=parsed)


SubmissionDep = Annotated[ForecastSubmission, Depends(read_forecast_submission)]

FORECAST_BODY_DOC = upload_body_doc(
    "ForecastJobCreate",
    file_description="Long-format CSV or Parquet: symbol, timestamp, open, high, low, close[, volume, amount, freq].",
    request_description="JSON of ForecastUploadCreate: the parameters without `series`, plus `freq`.",
)


# --- handlers -------------------------------------------------------------------------------------


@router.post("/forecast", status_code=202, response_model=JobPublic, responses=ERRORS, openapi_extra=FORECAST_BODY_DOC,
             dependencies=[InflightQuota])
def create_forecast_job(
    submission: SubmissionDep,
    session: SessionDep,
    settings: SettingsDep,
    caller: CallerDep,
    response: Response,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", min_length=1, max_length=255)] = None,
) -> JobPublic:
    """Submit a forecast job."""
    series = submission.series_input(settings, session, caller.tenant_id)
    job = submit_forecast(
        session, settings, tenant_id=caller.tenant_id, request=submission.forecast_params(series.freqs, settings),
        bars=series.bars, future=series.future, source=series.source, idempotency_key=idempotency_key,
        series_fields=submission.series_fields(series.symbols),
        workload=workload_of(JobKind.FORECAST, scheduled=False), priority=submission.params.priority,
    )
    response.headers["Location"] = f"{router.prefix}/{job.id}"
    return JobPublic.from_row(job, caller)


@router.get("", response_model=JobsPublic, responses=ERRORS)
def list_jobs(
    session: SessionDep,
    caller: CallerDep,
    state: JobState | None = None,
    kind: JobKind | None = None,
    created_after: datetime | None = None,
    created_before: datetime | None = None,
    limit: Annotated[int, Query(ge=1, le=500)] = 50,
    cursor: Annotated[str | None, Query(max_length=512)] = None,
) -> JobsPublic:
    """List jobs, newest first."""
    jobs, next_cursor = job_crud.list_jobs(
        session, tenant_id=caller.tenant_id, state=state, kind=kind,
        created_after=created_after, created_before=created_before, cursor=cursor, limit=limit,
    )
    return JobsPublic(data=[JobPublic.from_row(job, caller) for job in jobs], next_cursor=next_cursor)


@router.get("/{job_id}", response_model=JobPublic, responses=ERRORS)
def read_job(job_id: JobId, session: SessionDep, caller: CallerDep) -> JobPublic:
    """Read a job: state, progress, errors and execution metadata."""
    return JobPublic.from_row(job_crud.get_job(session, tenant_id=caller.tenant_id, job_id=job_id), caller)


@router.get(
    "/{job_id}/result",
    response_model=ResultPublic | BacktestResultPublic,
    responses={**ERRORS, **FILE_RESPONSES},
)
def read_job_result(
    job_id: JobId,
    session: SessionDep,
    caller: CallerDep,
    format: ResultFormat = ResultFormat.JSON,  # noqa: A002 - the query parameter's public name
) -> Any:
    """Read a finished job's rows as JSON, CSV or Parquet: a forecast's bars, a backtest's per-origin
    forecasts and truths (a fine-tune's result is its model: 409)."""
    job = job_crud.get_job(session, tenant_id=caller.tenant_id, job_id=job_id)
    if job.kind == JobKind.FINETUNE.value:
        # A fine-tune's result is a model, not rows: say where it is instead of an empty table.
        model_id = (job.execution_metadata or {}).get("finetuned_model_id")
        where = (f"its trained model is {model_id} (GET /v1/models/{model_id})" if model_id
                 else f"it is {job.state}; GET /v1/jobs/{job.id} shows its state and, once it succeeds, its model")
        raise Conflict(f"job {job.id} is a fine-tune and has no forecast rows; {where}",
                       details=[{"field": "kind", "message": "fine-tune jobs have no result rows"}])
    if not JobState(job.state).is_terminal:
        raise Conflict(
            f"job {job.id} is {job.state}; its result is available once it finishes",
            details=[{"field": "state", "message": f"job is {job.state}"}],
        )
    if job.result_pruned_at is not None:
        raise Gone(f"job {job.id}'s result rows were deleted by retention on {job.result_pruned_at:%Y-%m-%d} "
                   "(KRONOS_RETAIN_RESULTS_DAYS); GET /v1/jobs/{id} still shows its metadata",
                   details=[{"field": "job_id", "message": "result deleted by retention"}])
    if job.kind == JobKind.BACKTEST.value:
        return backtest_result(job, backtest_crud.read_rows(session, job_id=job.id), format)
    rows = result_crud.read_forecasts(session, job_id=job.id)
    made_by = provenance(job.execution_metadata, job.model)
    if format is ResultFormat.JSON:
        return ResultPublic(job_id=job.id, state=job.state, columns=list(rows.columns), rows=json_rows(rows),
                            errors=job.symbol_errors or [], model=made_by)
    return file_response(rows, format, job.id, made_by)


@router.get("/{job_id}/chart", responses={**ERRORS, 200: {"content": {"image/png": {}, "image/svg+xml": {}}}})
def read_job_chart(
    job_id: JobId,
    session: SessionDep,
    caller: CallerDep,
    symbol: Annotated[str | None, Query(max_length=64, description="Default: the job's first symbol with rows.")] = None,
    format: ChartFormat = ChartFormat.PNG,  # noqa: A002 - the query parameter's public name
) -> Response:
    """Draw a finished forecast job: history candlesticks, the forecast close and its quantile band."""
    job = job_crud.get_job(session, tenant_id=caller.tenant_id, job_id=job_id)
    drawn = (JobKind.FORECAST.value, JobKind.BACKTEST.value)
    if job.kind not in drawn or not JobState(job.state).is_terminal:
        what = f"is a {job.kind} job" if job.kind not in drawn else f"is {job.state}"
        raise Conflict(f"job {job.id} {what}; charts are drawn for finished forecast and backtest jobs",
                       details=[{"field": "kind" if job.kind not in drawn else "state", "message": what}])
    if job.kind == JobKind.BACKTEST.value:
        return _backtest_chart(session, job, symbol, format)
    if job.result_pruned_at is not None:
        raise Gone(f"job {job.id}'s result rows were deleted by retention on {job.result_pruned_at:%Y-%m-%d} "
                   "(KRONOS_RETAIN_RESULTS_DAYS); there is nothing to draw",
                   details=[{"field": "job_id", "message": "result deleted by retention"}])
    rows = result_crud.read_forecasts(session, job_id=job.id)
    symbols = list(dict.fromkeys(rows["symbol"]))
    if not symbols:
        raise Conflict(f"job {job.id} ({job.state}) has no forecast rows to draw",
                       details=[{"field": "state", "message": f"job is {job.state} without rows"}])
    symbol = symbols[0] if symbol is None else symbol
    if symbol not in symbols:
        raise NotFound(f"job {job.id} has no forecast rows for symbol {symbol!r}; it has {', '.join(symbols[:20])}",
                       details=[{"field": "symbol", "message": f"not among the job's symbols: {symbol!r}"}])
    try:
        bars, _ = result_crud.load_job_input(session, job_id=job.id)
    except NotFound:
        raise Gone(f"job {job.id}'s input bars, the chart's history, were deleted by retention "
                   "(KRONOS_RETAIN_INPUTS_DAYS); its result rows are still at GET /v1/jobs/{id}/result",
                   details=[{"field": "job_id", "message": "input deleted by retention"}]) from None
    image = forecast_chart(bars, rows, symbol=symbol, fmt=format, timezone=chart_timezone(job.params),
                           title=chart_title(symbol, provenance(job.execution_metadata, job.model), job.state))
    return Response(image, media_type=CHART_FORMATS[format])


def backtest_result(job, rows: pd.DataFrame | None, format: ResultFormat) -> Any:  # noqa: A002
    """A finished backtest's rows (an empty table when it wrote none: cancelled or failed)."""
    rows = pd.DataFrame(columns=list(backtest_crud.ROW_COLUMNS)) if rows is None else rows
    if format is ResultFormat.JSON:
        return BacktestResultPublic(job_id=job.id, state=job.state, columns=list(rows.columns), rows=json_rows(rows),
                                    errors=job.symbol_errors or [])
    return file_response(rows, format, job.id)


def _backtest_chart(session, job, symbol: str | None, format: ChartFormat) -> Response:  # noqa: A002
    """Skill by step, coverage vs nominal, and forecast vs truth for the latest origin of `symbol`."""
    rows = backtest_crud.read_rows(session, job_id=job.id)
    if rows is None or rows.empty:
        raise Conflict(f"job {job.id} ({job.state}) has no backtest rows to draw",
                       details=[{"field": "state", "message": f"job is {job.state} without rows"}])
    symbols = list(dict.fromkeys(rows["symbol"]))
    symbol = symbols[0] if symbol is None else symbol
    if symbol not in symbols:
        raise NotFound(f"job {job.id} has no backtest rows for symbol {symbol!r}; it has {', '.join(symbols[:20])}",
                       details=[{"field": "symbol", "message": f"not among the job's symbols: {symbol!r}"}])
    made_by = provenance(job.execution_metadata, job.model)
    title = f"backtest {job.id[:12]} - model {made_by['model']}" + (f" - {made_by['label'].upper()}" if made_by["label"] else "")
    image = backtest_chart(backtest_crud.read_metrics(session, job_id=job.id), rows, symbol=symbol, title=title,
                           fmt=format)
    return Response(image, media_type=CHART_FORMATS[format])


@router.post("/{job_id}/cancel", response_model=JobPublic, responses=ERRORS)
def cancel_job(job_id: JobId, session: SessionDep, caller: CallerDep) -> JobPublic:
    """Cancel a job: a queued one never starts, a running forecast stops within one decode step."""
    return JobPublic.from_row(job_crud.request_cancel(session, tenant_id=caller.tenant_id, job_id=job_id), caller)
