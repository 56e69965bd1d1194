"""Backtest jobs: submit one, read its per-origin rows and its metrics table.

`POST /v1/jobs/backtest` takes JSON (inline `series`, or `series_store` symbols and a time range) or
a multipart upload, like forecasts. The job runs on the forecast queues (kronos_jobs/jobs/backtest.py);
`GET /v1/jobs/{id}/result` serves its rows (api/routes/jobs.py `backtest_result`) and
`GET /v1/jobs/{id}/metrics` its stored metrics table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Query, Request, Response

from api.auth import InflightQuota
from api.deps import CallerDep, SessionDep, SettingsDep
from api.parsing_pool import read_bars_body
from api.routes.jobs import ERRORS, JobId
from api.schemas import (
    BacktestJobCreate,
    BacktestParamsIn,
    BacktestUploadCreate,
    JobPublic,
    MetricsPublic,
)
from api.tables import FILE_RESPONSES, ResultFormat, file_response, json_rows
from api.uploads import Upload, upload_body_doc
from kronos_jobs.core.errors import Conflict
from kronos_jobs.core.names import JobKind, JobState
from kronos_jobs.core.settings import Settings
from kronos_jobs.crud import backtests as backtest_crud
from kronos_jobs.crud import jobs as job_crud
from kronos_jobs.inputs.parsing import BarsInput, parse_inline_series
from kronos_jobs.inputs.store import read_store_range
from kronos_jobs.jobs.backtest_submit import submit_backtest

router = APIRouter(prefix="/v1/jobs", tags=["backtests"])


@dataclass
class BacktestSubmission:
    params: BacktestParamsIn  # a BacktestJobCreate (JSON) or a BacktestUploadCreate (upload)
    upload: Upload | None = None
    parsed: BarsInput | None = None  # the upload's bars, parsed off the request threads (api/parsing_pool.py)

    def series_input(self, settings: Settings, session, tenant_id: str) -> BarsInput:
        store = getattr(self.params, "series_store", None)
        if store is not None:
            return read_store_range(session, tenant_id=tenant_id, symbols=store.symbols, freq=store.freq,
                                    start=store.start, end=store.end, settings=settings)
        if self.parsed is not None:
            return self.parsed
        series = [s.model_dump() for s in self.params.series]
        return parse_inline_series(series, pred_len=self.params.horizon, settings=settings)

    def backtest_params(self, settings: Settings) -> dict[str, Any]:
        """The job's parameters in `kronos_jobs.jobs.backtest_submit.BacktestParams` form."""
        params = self.params.model_dump(include=set(BacktestParamsIn.model_fields) - {"priority"})
        params["models"] = params["models"] or [settings.default_model]
        if params["origins"] is not None:
            params["origins"] = [o.isoformat() for o in params["origins"]]
        return params


async def read_backtest_submission(request: Request) -> BacktestSubmission:
    params, upload, parsed = await read_bars_body(request, BacktestJobCreate, BacktestUploadCreate)
    return BacktestSubmission(params=params, upload=upload, parsed=parsed)


BACKTEST_BODY_DOC = upload_body_doc(
    "BacktestJobCreate",
    file_description="Long-format CSV or Parquet: symbol, timestamp, open, high, low, close[, volume, amount, freq].",
    request_description="JSON of BacktestUploadCreate: the parameters without `series`, plus `freq`.",
)


@router.post("/backtest", status_code=202, response_model=JobPublic, responses=ERRORS, openapi_extra=BACKTEST_BODY_DOC,
             dependencies=[InflightQuota])
def create_backtest_job(
    submission: Annotated[BacktestSubmission, Depends(read_backtest_submission)],
    session: SessionDep,
    settings: SettingsDep,
    caller: CallerDep,
    response: Response,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", min_length=1, max_length=255)] = None,
) -> JobPublic:
    """Submit a backtest job: rolling-origin forecasts of one or more models, scored with baselines."""
    series = submission.series_input(settings, session, caller.tenant_id)
    job = submit_backtest(session, settings, tenant_id=caller.tenant_id, request=submission.backtest_params(settings),
                          bars=series.bars, source=series.source, idempotency_key=idempotency_key,
                          priority=submission.params.priority)
    response.headers["Location"] = f"{router.prefix}/{job.id}"
    return JobPublic.from_row(job, caller)


def _finished_backtest(session, tenant_id: str, job_id: str):
    job = job_crud.get_job(session, tenant_id=tenant_id, job_id=job_id)
    if job.kind != JobKind.BACKTEST.value:
        raise Conflict(f"job {job.id} is a {job.kind} job; only backtests have metrics",
                       details=[{"field": "kind", "message": f"job is a {job.kind}"}])
    if not JobState(job.state).is_terminal:
        raise Conflict(f"job {job.id} is {job.state}; its metrics are available once it finishes",
                       details=[{"field": "state", "message": f"job is {job.state}"}])
    return job


@router.get("/{job_id}/metrics", response_model=MetricsPublic, responses={**ERRORS, **FILE_RESPONSES})
def read_backtest_metrics(
    job_id: JobId,
    session: SessionDep,
    caller: CallerDep,
    by: Annotated[Literal["all", "symbol"], Query(description="all: symbols pooled; symbol: one row set per symbol.")] = "all",
    format: ResultFormat = ResultFormat.JSON,  # noqa: A002 - the query parameter's public name
) -> Any:
    """Read a finished backtest's metrics table (model x lookback x step and sub-horizons, with baselines)."""
    job = _finished_backtest(session, caller.tenant_id, job_id)
    table = backtest_crud.read_metrics(session, job_id=job.id, by_symbol=by == "symbol")
    if format is ResultFormat.JSON:
        return MetricsPublic(job_id=job.id, state=job.state, by=by, columns=list(table.columns), rows=json_rows(table))
    return file_response(table, format, f"{job.id}-metrics")
