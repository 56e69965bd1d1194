"""Request and response schemas, named by direction: `*Create` comes in, `*Public` goes out.

Field names of the forecast request are DESIGN.md's and keep their meaning. Bar sanity (OHLC
relations, NaN, duplicate timestamps, limits) is checked by `kronos_jobs.inputs.parsing`, which names each
offending bar; these schemas check shapes, types and parameter ranges.
"""

from __future__ import annotations

import dataclasses
import hashlib
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from api.auth import visible_metadata
from kronos_jobs.core.names import DevicePreference, JobKind, JobState
from kronos_jobs.core.workload import DEFAULT_PRIORITY, PRIORITY_MAX, PRIORITY_MIN, Workload
from kronos_jobs.inputs.wall_clock import utc_instant
from kronos_jobs.evaluation.baselines import BASELINES
from kronos_jobs.jobs.backtest_submit import MAX_LOOKBACKS, MAX_MODELS, MAX_ORIGINS, MAX_REPEATS
from kronos_jobs.jobs.finetune_submit import FinetuneParams
from kronos_jobs.jobs.submit import SAMPLING_LIMITS, Sampling

_SAMPLING = Sampling()  # the defaults
MAX_QUANTILES = 32
MAX_STEPS = 1_000_000  # sanity bound on lookback / pred_len; the model's context is the real limit


class _Strict(BaseModel):
    # A typo such as "temprature" is an error naming the field, not a silently ignored key.
    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)


def _priority(default: str) -> Any:
    """The `priority` request field of every kind a person submits; None takes `default`'s workload value."""
    return Field(None, ge=PRIORITY_MIN, le=PRIORITY_MAX,
                 description=f"{PRIORITY_MIN}..{PRIORITY_MAX}, higher runs first; default {default}.")


# --- forecast request ----------------------------------------------------------------------------


class SamplingParams(_Strict):
    """How each future bar is drawn (the same T, top_k, top_p for both token halves)."""

    temperature: float = Field(_SAMPLING.temperature, **SAMPLING_LIMITS["temperature"], description="Softmax temperature, > 0.")
    top_k: int = Field(_SAMPLING.top_k, **SAMPLING_LIMITS["top_k"], description="Keep the k most likely tokens; 0 = no top-k filter.")
    top_p: float = Field(_SAMPLING.top_p, **SAMPLING_LIMITS["top_p"], description="Nucleus mass in (0, 1]; 1 = no nucleus filter.")
    sample_count: int = Field(_SAMPLING.sample_count, **SAMPLING_LIMITS["sample_count"], description="Sampled paths per series, averaged.")
    seed: int | None = Field(None, ge=0, le=2**63 - 1, description="Seed for reproducible sampling.")


class BarIn(BaseModel):
    """One bar. `volume` and `amount` are optional (all bars carry each, or none does)."""

    # allow_inf_nan stays on here so that "NaN" reaches kronos_jobs.inputs.parsing, which names the bar.
    model_config = ConfigDict(extra="forbid")

    timestamp: datetime = Field(description="ISO 8601; an offset is converted to UTC, no offset means UTC.")
    open: float
    high: float
    low: float
    close: float
    volume: float | None = None
    amount: float | None = None


class SeriesIn(_Strict):
    symbol: str = Field(description="1-64 characters: letters, digits and . _ : / = @ + - ^")
    freq: str | None = Field(None, description="pandas offset alias (5min, 1h, 1D, B); inferred from the bars when omitted.")
    bars: list[BarIn] = Field(description="Past bars, any order; sorted by timestamp on arrival.")
    future_timestamps: list[datetime] | None = Field(None, description="pred_len timestamps to forecast; default: generated from freq.")


class ForecastParamsIn(_Strict):
    """The forecast parameters: the JSON body minus `series`, or the `request` field of an upload."""

    model: str | None = Field(None, max_length=256, description="Model name, random:<size>, directory under KRONOS_MODEL_DIRS or fine-tuned id; default KRONOS_DEFAULT_MODEL.")
    device: DevicePreference = Field(DevicePreference.AUTO, description="auto prefers a live GPU worker, else CPU.")
    lookback: int = Field(400, ge=1, le=MAX_STEPS, description="Past bars fed to the model (at most its context length).")
    pred_len: int = Field(24, ge=1, le=MAX_STEPS, description="Future bars to forecast (at most the model's context length).")
    sampling: SamplingParams = Field(default_factory=SamplingParams)
    quantiles: list[float] | None = Field(None, max_length=MAX_QUANTILES, description="Sample quantile levels in (0, 1), e.g. [0.1, 0.5, 0.9].")
    calendar: dict[str, Any] | None = Field(None, description='Trading calendar for generated future timestamps (see the README): {"timezone", "weekdays", "open", "close", "holidays"}, or {"default": {...}, "symbols": {...}}. Default: weekends skipped for daily bars.')
    score: bool = Field(False, description="Score this forecast live (GET /v1/scores) once its bars reach the series store; schedule runs always are.")
    priority: int | None = _priority(f"{DEFAULT_PRIORITY[Workload.INTERACTIVE]} (schedule runs: {DEFAULT_PRIORITY[Workload.BULK]})")

    @field_validator("quantiles")
    @classmethod
    def _quantile_levels(cls, levels: list[float] | None) -> list[float] | None:
        if levels is None:
            return None
        for level in levels:
            if not 0 < level < 1:
                raise ValueError(f"each quantile level must be in (0, 1), got {level:g}")
        if len(set(levels)) != len(levels):
            raise ValueError("quantile levels must be unique")
        return sorted(levels)


class ForecastStoreSelection(_Strict):
    """Forecast input read from the series store: each symbol's latest `lookback` bars."""

    symbols: list[str] = Field(min_length=1, max_length=100_000)
    freq: str | None = Field(None, max_length=32, description="Needed only when a symbol is stored at several frequencies.")


class ForecastJobCreate(ForecastParamsIn):
    """`POST /v1/jobs/forecast` as JSON: inline `series`, or `series_store` symbols."""

    series_store: ForecastStoreSelection | None = Field(None, description="Instead of `series`: symbols whose latest bars are read from the series store.")
    series: list[SeriesIn] = Field(default_factory=list, validate_default=True, description="One entry per symbol.")

    @field_validator("series")
    @classmethod
    def _one_input(cls, series: list[SeriesIn], info: ValidationInfo) -> list[SeriesIn]:
        stored = info.data.get("series_store") is not None
        if not series and not stored:
            raise ValueError("give at least one series (or series_store symbols)")
        if series and stored:
            raise ValueError("give series or series_store, not both")
        return series


class ForecastUploadCreate(ForecastParamsIn):
    """The `request` form field of a multipart upload: the parameters plus the bar frequency."""

    freq: str | None = Field(None, description="Frequency of every symbol without a `freq` column value.")


# --- jobs ----------------------------------------------------------------------------------------


class Progress(BaseModel):
    done: int = Field(description="Symbols (or fine-tune steps) finished.")
    total: int
    detail: dict[str, Any] = Field(default_factory=dict)


class JobPublic(BaseModel):
    id: str
    kind: JobKind
    state: JobState
    model: str
    device: DevicePreference = Field(description="The device the job asked for.")
    queue: str
    routing_reason: str
    priority: int = Field(description=f"{PRIORITY_MIN}..{PRIORITY_MAX}, higher runs first.")
    workload: Workload = Field(description="interactive (asked for by a person) or bulk (schedule runs): bulk work yields to interactive jobs.")
    progress: Progress
    parts: int | None = Field(None, description="How many part jobs a large forecast was split into, to run on every live worker slot at once (metadata.parts says where each ran); null when it runs whole.")
    error: dict[str, Any] | None = Field(None, description='{"code", "message"} when the job failed.')
    symbol_errors: list[dict[str, Any]] = Field(default_factory=list, description='[{"symbol", "code", "message"}]')
    cancel_requested: bool = False
    params: dict[str, Any] = Field(default_factory=dict, description="The request minus its bars.")
    metadata: dict[str, Any] = Field(default_factory=dict, description="Execution metadata: devices, versions, worker, timings.")
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    updated_at: datetime | None = None
    input_pruned_at: datetime | None = Field(None, description="When retention deleted the job's input bars (KRONOS_RETAIN_INPUTS_DAYS).")
    result_pruned_at: datetime | None = Field(None, description="When retention deleted its result rows; the result then answers 410.")

    @classmethod
    def from_row(cls, job: Any, caller: Any = None) -> "JobPublic":
        """The job as `caller` sees it (no caller: as a non-admin key, without hosts, pids and versions)."""
        return cls(
            id=job.id, kind=job.kind, state=job.state, model=job.model, device=job.device_requested,
            queue=job.queue, routing_reason=job.routing_reason, priority=job.priority, workload=job.workload,
            progress=Progress(done=job.progress_done or 0, total=job.progress_total or 0, detail=job.progress_detail or {}),
            parts=getattr(job, "parts", None), error=job.error, symbol_errors=job.symbol_errors or [], cancel_requested=bool(job.cancel_requested),
            params=job.params or {}, metadata=visible_metadata(job.execution_metadata, caller),
            created_at=utc_instant(job.created_at), started_at=utc_instant(job.started_at),
            finished_at=utc_instant(job.finished_at), updated_at=utc_instant(job.updated_at),
            input_pruned_at=utc_instant(getattr(job, "input_pruned_at", None)),
            result_pruned_at=utc_instant(getattr(job, "result_pruned_at", None)),
        )


class JobsPublic(BaseModel):
    data: list[JobPublic]
    next_cursor: str | None = Field(None, description="Pass as `cursor` for the next page; null on the last page.")


class ResultPublic(BaseModel):
    """`GET /v1/jobs/{id}/result?format=json`."""

    job_id: str
    state: JobState
    columns: list[str] = Field(description="symbol, timestamp, open, high, low, close, volume, amount, then q<level>_<column>.")
    rows: list[dict[str, Any]] = Field(description="One row per symbol and future step; timestamps ISO 8601 UTC.")
    errors: list[dict[str, Any]] = Field(description='Per-symbol failures: [{"symbol", "code", "message"}].')
    model: dict[str, str | None] = Field(
        default_factory=dict,
        description='Which model produced the rows: {"model", "source", "checkpoint", "checksum", "label"}; '
                    'label is "random weights" for random:* models and fine-tunes of them.')


# --- fine-tune request (defaults: kronos_jobs.jobs.finetune_submit.FinetuneParams, spec §6) ------------

_FT = {f.name: f.default for f in dataclasses.fields(FinetuneParams)}


class FinetuneParamsIn(_Strict):
    """The fine-tune parameters: the JSON body minus `data`, or the `request` field of an upload."""

    model: str | None = Field(None, max_length=256, description="Base model: published name, random:<size>, local directory or a registered (fine-tuned) id; default KRONOS_DEFAULT_MODEL.")
    tokenizer: str | None = Field(None, max_length=256, description="Upstream's layout: a tokenizer checkpoint directory under KRONOS_MODEL_DIRS; `model` then names the predictor's checkpoint directory.")
    device: DevicePreference = Field(DevicePreference.AUTO, description="auto and gpu go to finetune.gpu; only cpu goes to finetune.cpu.")
    train: Literal["tokenizer", "predictor", "both"] = Field(_FT["train"], description="What to train; both = tokenizer, then predictor.")
    epochs: int = Field(_FT["epochs"], ge=1, le=100_000)
    tokenizer_epochs: int | None = Field(None, ge=1, le=100_000, description="Default: epochs.")
    predictor_epochs: int | None = Field(None, ge=1, le=100_000, description="Default: epochs.")
    batch_size: int = Field(_FT["batch_size"], ge=1, le=65_536)
    tokenizer_learning_rate: float = Field(_FT["tokenizer_learning_rate"], gt=0, le=1)
    predictor_learning_rate: float = Field(_FT["predictor_learning_rate"], gt=0, le=1)
    adam_beta1: float = Field(_FT["adam_beta1"], ge=0, lt=1)
    adam_beta2: float = Field(_FT["adam_beta2"], ge=0, lt=1)
    adam_weight_decay: float = Field(_FT["adam_weight_decay"], ge=0)
    accumulation_steps: int = Field(_FT["accumulation_steps"], ge=1)
    lookback: int = Field(_FT["lookback"], ge=1, description="Context bars per training window.")
    predict_window: int = Field(_FT["predict_window"], ge=1, description="Future bars per training window (and the evaluation horizon).")
    clip: float = Field(_FT["clip"], gt=0, description="Clip after normalisation.")
    validation_split: float = Field(_FT["validation_split"], ge=0, le=0.5, description="Last share of every series held out for validation and evaluation.")
    seed: int = Field(_FT["seed"], ge=0, le=2**31 - 1)
    max_steps: int | None = Field(None, ge=1, description="Optimiser steps per phase.")
    max_seconds: float | None = Field(None, gt=0, description="Wall time of the whole job, resumes included.")
    samples_per_epoch: int | None = Field(None, ge=1, description="Windows drawn per epoch; default all.")
    log_interval: int = Field(_FT["log_interval"], ge=1, description="Steps between progress reports with a train loss.")
    checkpoint_every_steps: int = Field(_FT["checkpoint_every_steps"], ge=1, description="Checkpoint cadence, besides every epoch end.")
    eval_windows: int = Field(_FT["eval_windows"], ge=1, le=10_000, description="Held-out windows forecast by the evaluation.")
    amp: bool = Field(_FT["amp"], description="Mixed precision (bf16 autocast); used only on CUDA.")
    name: str | None = Field(None, max_length=128)
    description: str | None = Field(None, max_length=2_000)
    priority: int | None = _priority(str(DEFAULT_PRIORITY[Workload.INTERACTIVE]))


class SeriesStoreSelection(_Strict):
    """Training bars read from the series store."""

    symbols: list[str] = Field(min_length=1, max_length=10_000)
    freq: str | None = Field(None, description="Needed only when a symbol is stored at several frequencies.")
    start: datetime | None = None
    end: datetime | None = None


class FinetuneJobCreate(FinetuneParamsIn):
    """`POST /v1/jobs/finetune` as JSON: bars from the series store (uploads use multipart)."""

    data: SeriesStoreSelection


class FinetuneJobPublic(JobPublic):
    warnings: list[str] = Field(default_factory=list, description="E.g. no live worker consumes the target queue.")


# --- workers and models --------------------------------------------------------------------------


class WorkerPublic(BaseModel):
    id: str = Field(description="The Celery node name for admin keys; a stable pseudonym (pool-<hash>) for others.")
    hostname: str | None = Field(None, description="Admin keys only.")
    pid: int | None = Field(None, description="Admin keys only.")
    pool: str
    queues: list[str]
    concurrency: int
    torch_threads: int
    device_requested: str
    device_resolved: str
    device_name: str | None = None
    device_warning: str | None = Field(None, description="Exact fallback warning, e.g. a GPU worker running on CPU.")
    device_info: dict[str, Any] = Field(default_factory=dict, description="Versions and device details; admin keys only.")
    live: bool = Field(description="Heartbeat within KRONOS_WORKER_STALE_SECONDS and not stopped.")
    started_at: datetime
    heartbeat_at: datetime
    stopped_at: datetime | None = None

    @classmethod
    def from_row(cls, worker: Any, *, live: bool, admin: bool = False) -> "WorkerPublic":
        return cls(
            id=worker.id if admin else worker_pseudonym(worker.id, worker.pool),
            hostname=worker.hostname if admin else None, pid=worker.pid if admin else None,
            pool=worker.pool, queues=list(worker.queues or []),
            concurrency=worker.concurrency, torch_threads=worker.torch_threads,
            device_requested=worker.device_requested, device_resolved=worker.device_resolved,
            device_name=worker.device_name, device_warning=worker.device_warning, device_info=(worker.device_info or {}) if admin else {},
            live=live, started_at=utc_instant(worker.started_at), heartbeat_at=utc_instant(worker.heartbeat_at),
            stopped_at=utc_instant(worker.stopped_at),
        )


def worker_pseudonym(worker_id: str, pool: str) -> str:
    """A stable name for a worker that does not give away its host (Celery node names hold it)."""
    return f"{pool}-{hashlib.sha256(worker_id.encode()).hexdigest()[:10]}"


class WorkersPublic(BaseModel):
    data: list[WorkerPublic]


class ModelPublic(BaseModel):
    id: str
    kind: str = Field(description="published | random | local | finetuned")
    label: str | None = Field(None, description='"random weights" for random:* models and for models fine-tuned from them.')
    base_model: str | None = None
    model_repo: str | None = None
    model_revision: str | None = None
    tokenizer_repo: str | None = None
    tokenizer_revision: str | None = None
    max_context: int
    checksum: str | None = None
    job_id: str | None = None
    hyperparameters: dict[str, Any] = Field(default_factory=dict)
    metrics: dict[str, Any] = Field(default_factory=dict)
    data_summary: dict[str, Any] = Field(default_factory=dict)
    created_at: datetime | None = None
    retired_at: datetime | None = None
    artifact_pruned_at: datetime | None = Field(None, description="When retention deleted a retired model's files.")

    @classmethod
    def from_row(cls, row: Any) -> "ModelPublic":
        fields = {name: getattr(row, name, None) for name in cls.model_fields}
        fields.update(created_at=utc_instant(row.created_at), retired_at=utc_instant(row.retired_at),
                      artifact_pruned_at=utc_instant(getattr(row, "artifact_pruned_at", None)))
        for name in ("hyperparameters", "metrics", "data_summary"):
            fields[name] = fields[name] or {}
        return cls(**fields)


class ModelsPublic(BaseModel):
    data: list[ModelPublic]


# --- errors (documentation of the envelope every 4xx/5xx uses) ------------------------------------


class ErrorDetail(BaseModel):
    field: str | None = Field(description="Where the problem is: sampling.top_p, series[0].bars[3].high, file row 17: high, Idempotency-Key.")
    message: str


class ErrorBody(BaseModel):
    code: str = Field(description="invalid_request, malformed_json, payload_too_large, not_found, conflict, ...")
    message: str
    details: list[ErrorDetail] = Field(default_factory=list)


class ErrorResponse(BaseModel):
    error: ErrorBody


# --- series store ------------------------------------------------------------------------------------


class SeriesBarsCreate(_Strict):
    """`POST /v1/series/{symbol}/bars` as JSON."""

    freq: str | None = Field(None, description="pandas offset alias (5min, 1h, 1D); part of the stored key. Inferred from the bars when omitted.")
    bars: list[BarIn] = Field(min_length=1, description="Bars in any order; a bar already stored at the same timestamp is replaced.")


class SeriesPublic(BaseModel):
    symbol: str
    freq: str
    first_timestamp: datetime
    last_timestamp: datetime
    rows: int


class SeriesListPublic(BaseModel):
    data: list[SeriesPublic]


class SeriesImportPublic(BaseModel):
    rows_written: int = Field(description="Bars inserted or replaced by this import (one transaction).")
    series: list[SeriesPublic] = Field(description="The imported symbols as stored now.")


class BarsPublic(BaseModel):
    symbol: str
    freq: str
    columns: list[str]
    rows: list[dict[str, Any]] = Field(description="Oldest first; timestamps ISO 8601 UTC.")


class SeriesDeletedPublic(BaseModel):
    symbol: str
    freq: str | None
    deleted_rows: int


# --- schedules ---------------------------------------------------------------------------------------


class _ScheduleFields(_Strict):
    cron: str = Field(max_length=128, description="Five-field cron (minute hour day month weekday), e.g. '0 18 * * 1-5'.")
    timezone: str = Field("UTC", max_length=64, description="IANA zone the cron is read in, e.g. America/New_York.")
    symbols: list[str] | None = Field(None, max_length=100_000, description="The universe; null = every symbol in the store.")
    freq: str | None = Field(None, max_length=32, description="Only symbols stored at this frequency.")
    model: str | None = Field(None, max_length=256, description="Default KRONOS_DEFAULT_MODEL.")
    device: DevicePreference = DevicePreference.AUTO
    lookback: int = Field(400, ge=1, le=MAX_STEPS, description="Latest stored bars read per symbol.")
    pred_len: int = Field(24, ge=1, le=MAX_STEPS)
    sampling: SamplingParams = Field(default_factory=SamplingParams)
    quantiles: list[float] | None = Field(None, max_length=MAX_QUANTILES)
    calendar: dict[str, Any] | None = Field(None, description='Trading calendar for future timestamps: {"timezone", "weekdays", "open", "close", "holidays"}, or {"default": {...}, "symbols": {"AAPL": {...}}}.')
    min_history: int | None = Field(None, ge=2, le=MAX_STEPS, description="Fewer stored bars = an error for that symbol; default lookback.")
    enabled: bool = True

    _quantile_levels = field_validator("quantiles")(ForecastParamsIn._quantile_levels.__func__)


class ScheduleCreate(_ScheduleFields):
    """`POST /v1/schedules`."""

    name: str = Field(min_length=1, max_length=128)


class ScheduleUpdate(_Strict):
    """`PATCH /v1/schedules/{id}`: only the fields given change."""

    name: str | None = Field(None, min_length=1, max_length=128)
    cron: str | None = Field(None, max_length=128)
    timezone: str | None = Field(None, max_length=64)
    symbols: list[str] | None = Field(None, max_length=100_000)
    freq: str | None = Field(None, max_length=32)
    model: str | None = Field(None, max_length=256)
    device: DevicePreference | None = None
    lookback: int | None = Field(None, ge=1, le=MAX_STEPS)
    pred_len: int | None = Field(None, ge=1, le=MAX_STEPS)
    sampling: SamplingParams | None = None
    quantiles: list[float] | None = Field(None, max_length=MAX_QUANTILES)
    calendar: dict[str, Any] | None = None
    min_history: int | None = Field(None, ge=2, le=MAX_STEPS)
    enabled: bool | None = None

    _quantile_levels = field_validator("quantiles")(ForecastParamsIn._quantile_levels.__func__)


class SchedulePublic(BaseModel):
    id: str
    name: str
    cron: str
    timezone: str
    symbols: list[str] | None
    freq: str | None
    model: str
    device: DevicePreference
    lookback: int
    pred_len: int
    sampling: dict[str, Any]
    quantiles: list[float] | None
    calendar: dict[str, Any]
    min_history: int | None
    enabled: bool
    next_run_at: datetime | None = Field(None, description="The next cron occurrence (as of the last beat tick or edit).")
    created_at: datetime
    updated_at: datetime

    @classmethod
    def from_row(cls, row: Any, fields: dict[str, Any]) -> "SchedulePublic":
        return cls(id=row.id, **{**fields, "sampling": fields.get("sampling") or {}},
                   next_run_at=utc_instant(row.next_run_at), created_at=utc_instant(row.created_at), updated_at=utc_instant(row.updated_at))


class SchedulesPublic(BaseModel):
    data: list[SchedulePublic]


class RunCreate(_Strict):
    """`POST /v1/schedules/{id}/run`: now, or a given occurrence (to re-run or backfill it)."""

    scheduled_for: datetime | None = Field(None, description="Default: now. A run for the same time is returned, not repeated.")


class RunPublic(BaseModel):
    id: str
    schedule_id: str
    scheduled_for: datetime
    trigger: str = Field(description="schedule (the beat) or manual.")
    state: JobState = Field(description="queued (fan-out pending), running, then succeeded, partially_succeeded or failed.")
    progress: Progress = Field(description="Symbols finished (forecast or failed) of the universe.")
    symbol_errors: list[dict[str, Any]] = Field(default_factory=list, description='[{"symbol", "code", "message", "job_id"?}]')
    error: dict[str, Any] | None = None
    job_ids: list[str] = Field(default_factory=list, description="The forecast jobs, one per batch.")
    detail: dict[str, Any] = Field(default_factory=dict, description="Batches and fan-out timings.")
    created_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None


class RunsPublic(BaseModel):
    data: list[RunPublic]


# --- latest forecasts --------------------------------------------------------------------------------


class ForecastsPublic(BaseModel):
    """`GET /v1/forecasts?format=json`."""

    columns: list[str]
    rows: list[dict[str, Any]] = Field(description="Per symbol, the rows of its latest forecast; `job_id` and "
                                                   "`forecast_at` (when that job finished) say which.")


# --- backtests (issue 10) -------------------------------------------------------------------------


class BacktestParamsIn(_Strict):
    """The backtest parameters: the JSON body minus the bars, or the `request` field of an upload.
    Ranges are checked here; what needs the bars or the models (history, context) by the job layer."""

    models: list[str] | None = Field(None, max_length=MAX_MODELS, description="Models to evaluate (names as for forecasts); default [KRONOS_DEFAULT_MODEL].")
    device: DevicePreference = Field(DevicePreference.AUTO, description="auto prefers a live GPU worker, else CPU.")
    lookbacks: list[int] = Field([400], min_length=1, max_length=MAX_LOOKBACKS, description="Context lengths to evaluate, each a separate set of forecasts.")
    horizon: int = Field(12, ge=1, le=MAX_STEPS, description="Steps forecast from each origin; metrics for every step 1..horizon.")
    horizons: list[int] = Field(default_factory=list, max_length=64, description="Sub-horizons also reported pooled (steps 1..h), read off the same paths.")
    n_windows: int | None = Field(None, ge=1, le=MAX_ORIGINS, description="Rolling origins per symbol, the last `horizon` bars before the end.")
    step_size: int | None = Field(None, ge=1, le=MAX_STEPS, description="Bars between rolling origins; default horizon.")
    origins: list[datetime] | None = Field(None, max_length=MAX_ORIGINS, description="Explicit origin times instead of n_windows: each forecast sees the bars at or before its origin.")
    sampling: SamplingParams = Field(default_factory=SamplingParams)
    repeats: int = Field(1, ge=1, le=MAX_REPEATS, description="Forecasts per origin with seeds seed, seed+1, ...")
    quantiles: list[float] | None = Field(None, max_length=MAX_QUANTILES, description="Band levels (need sampling.sample_count >= 2); central pairs such as 0.1/0.9 also get a coverage.")
    baselines: list[str] = Field(list(BASELINES), max_length=len(BASELINES), description="Any of naive, seasonal_naive, drift.")
    priority: int | None = _priority(f"{DEFAULT_PRIORITY[Workload.BULK]} (a backtest is bulk work: it yields the worker between chunks)")

    _quantile_levels = field_validator("quantiles")(ForecastParamsIn._quantile_levels.__func__)


class BacktestSeriesIn(_Strict):
    symbol: str = Field(description="1-64 characters: letters, digits and . _ : / = @ + - ^")
    freq: str | None = Field(None, description="pandas offset alias; inferred from the bars when omitted.")
    bars: list[BarIn] = Field(description="The whole history to evaluate on, any order.")


class BacktestStoreSelection(_Strict):
    """Backtest input read from the series store: each symbol's bars between start and end."""

    symbols: list[str] = Field(min_length=1, max_length=100_000)
    freq: str | None = Field(None, max_length=32, description="Needed only when a symbol is stored at several frequencies.")
    start: datetime | None = Field(None, description="First bar time (inclusive); default the first stored.")
    end: datetime | None = Field(None, description="Last bar time (inclusive); default the last stored.")


class BacktestJobCreate(BacktestParamsIn):
    """`POST /v1/jobs/backtest` as JSON: inline `series`, or `series_store` symbols and a time range."""

    series_store: BacktestStoreSelection | None = Field(None, description="Instead of `series`: bars from the series store.")
    series: list[BacktestSeriesIn] = Field(default_factory=list, validate_default=True, description="One entry per symbol.")

    _one_input = field_validator("series")(ForecastJobCreate._one_input.__func__)


class BacktestUploadCreate(BacktestParamsIn):
    """The `request` form field of a multipart backtest upload."""

    freq: str | None = Field(None, description="Frequency of every symbol without a `freq` column value.")


class BacktestResultPublic(BaseModel):
    """`GET /v1/jobs/{id}/result?format=json` of a backtest."""

    job_id: str
    state: JobState
    columns: list[str] = Field(description="model, kind, lookback, symbol, origin, repeat, step, timestamp, open..amount, q<level>_<column>, actual_open..actual_amount, last_close[, crps].")
    rows: list[dict[str, Any]] = Field(description="One row per model/lookback/symbol/origin/repeat/step; timestamps ISO 8601 UTC.")
    errors: list[dict[str, Any]] = Field(description='Origins that could not be forecast: [{"symbol", "code", "message", "origin", "lookback"}].')


class MetricsPublic(BaseModel):
    """`GET /v1/jobs/{id}/metrics`."""

    job_id: str
    state: JobState
    by: Literal["all", "symbol"]
    columns: list[str]
    rows: list[dict[str, Any]] = Field(description="One row per model x lookback[ x symbol] x step (horizon null), then x sub-horizon (step null).")


class ScoresPublic(BaseModel):
    """`GET /v1/scores`."""

    columns: list[str]
    rows: list[dict[str, Any]] = Field(description="One row per schedule x model[ x symbol]: the model's and persistence's errors on the same scored bars.")
