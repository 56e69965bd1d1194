"""Accept a forecast job: validate what needs the model table, route, store, commit, then send.

Celery's "Database transactions" rule: the task is sent only after the job row is committed, so a
fast worker never looks for a row that does not exist yet. The task carries only the job id, and
the job id is the Celery task id, so a duplicate message is visible as such.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import uuid
from collections.abc import Mapping
from typing import Any

import pandas as pd

from kronos_jobs.core.errors import InvalidRequest, invalid
from kronos_jobs.core.names import (
    TASK_RUN_BACKTEST,
    TASK_RUN_FINETUNE,
    TASK_RUN_FORECAST,
    DevicePreference,
    JobKind,
    Queue,
)
from kronos_jobs.core.routing import choose_queue
from kronos_jobs.core.settings import Settings
from kronos_jobs.core.workload import Workload, broker_priority, job_priority, workload_of
from kronos_jobs.crud import jobs as job_crud
from kronos_jobs.crud import results as result_crud
from kronos_jobs.crud import workers as worker_crud
from kronos_jobs.inputs.calendar import TradingCalendar
from kronos_jobs.inputs.checks import MAX_DETAILS, check_freq
from kronos_jobs.jobs.registry import resolve_model
from kronos_jobs.jobs.series import build_inputs

logger = logging.getLogger(__name__)


MAX_SAMPLE_COUNT = 256  # paths averaged per forecast; memory grows linearly with it

# Each sampling parameter's bounds, declared once (pydantic's names: gt, ge, le). The API schema
# enforces them so a request hears of every problem at once; `validate_params` for every caller.
SAMPLING_LIMITS: dict[str, dict[str, float]] = {
    "temperature": {"gt": 0},
    "top_k": {"ge": 0},
    "top_p": {"gt": 0, "le": 1},
    "sample_count": {"ge": 1, "le": MAX_SAMPLE_COUNT},
}
_BOUND_TEXT = {"gt": ">", "ge": ">=", "le": "<="}


@dataclasses.dataclass
class Sampling:
    """Sampling parameters of `KronosPredictor.predict_batch` (names as in DESIGN.md)."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 0.9
    sample_count: int = 1
    seed: int | None = None


def sampling_and_fields(cls: type, value: dict[str, Any], *, what: str) -> tuple[Sampling, dict[str, Any]]:
    """A job's stored parameters split into its `Sampling` and the other fields, refusing any field
    that `cls` (a parameters dataclass with a `sampling` field) does not have."""
    data = dict(value)
    sampling = data.pop("sampling", None) or {}
    if not isinstance(sampling, Sampling):
        sampling = Sampling(**{k: v for k, v in dict(sampling).items() if v is not None or k == "seed"})
    unknown = sorted(set(data) - {f.name for f in dataclasses.fields(cls)})
    if unknown:
        raise invalid(unknown[0], f"unknown {what} parameter(s) {unknown}")
    return sampling, data


@dataclasses.dataclass
class ForecastParams:
    """A forecast request minus its bars; stored as the job's `params`."""

    model: str
    device: DevicePreference = DevicePreference.AUTO
    lookback: int = 400
    pred_len: int = 24
    sampling: Sampling = dataclasses.field(default_factory=Sampling)
    quantiles: list[float] | None = None
    freq: dict[str, str] = dataclasses.field(default_factory=dict)  # symbol -> pandas offset alias
    # Trading calendar for generated future timestamps (kronos_jobs/inputs/calendar.py): a flat spec, or
    # {"default": spec, "symbols": {symbol: spec}}. Empty: weekends skipped for daily bars only.
    calendar: dict[str, Any] = dataclasses.field(default_factory=dict)
    score: bool = False  # score live once the bars arrive (kronos_jobs/evaluation/scoring.py); schedule runs always are

    @classmethod
    def from_value(cls, value: "ForecastParams | dict[str, Any]") -> "ForecastParams":
        if isinstance(value, cls):
            return value
        sampling, data = sampling_and_fields(cls, value, what="forecast")
        params = cls(sampling=sampling, **data)
        params.device = DevicePreference(params.device)
        params.freq = dict(params.freq or {})
        params.calendar = dict(params.calendar or {})
        return params

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["device"] = DevicePreference(self.device).value
        return data


def validate_params(params: ForecastParams, max_context: int, symbols: list[str]) -> None:
    """Checks that need the model table (or nothing else); everything else is the API schema's."""
    if params.lookback < 1:
        raise InvalidRequest(f"lookback must be >= 1, got {params.lookback}", field="lookback")
    if not 1 <= params.pred_len <= max_context:
        raise InvalidRequest(
            f"pred_len must be between 1 and the model's context length {max_context}, got {params.pred_len}",
            field="pred_len",
        )
    check_sampling(params.sampling)
    for level in params.quantiles or ():
        if not 0 < float(level) < 1:
            raise InvalidRequest(f"quantile levels must be in (0, 1), got {level}", field="quantiles")
    if params.quantiles and params.sampling.sample_count < 2:
        raise InvalidRequest(
            f"quantiles {params.quantiles} need sampling.sample_count >= 2: they are taken over the sample paths, "
            f"and with sample_count {params.sampling.sample_count} every quantile would equal the mean forecast",
            field="quantiles")
    check_calendar(params.calendar)
    for symbol, freq in params.freq.items():
        if symbol not in symbols:
            raise InvalidRequest(f"freq given for symbol {symbol!r}, which has no bars", field=f"freq.{symbol}")
        check_freq(freq, f"freq.{symbol}")


def reject_unforecastable(bars: pd.DataFrame, future: pd.DataFrame | None, params: ForecastParams,
                          fields: Mapping[str, str]) -> None:
    """InvalidRequest naming each series the worker could not forecast (too few bars, no frequency,
    a calendar or future that does not fit): the worker's own per-symbol checks, run at submit, so
    one code path decides. `fields` names each symbol's place in the request (`series[2]`)."""
    _, errors = build_inputs(bars, future, params)
    if not errors:
        return
    details = [{"field": fields.get(e["symbol"], f"symbol {e['symbol']}"), "message": f"{e['code']}: {e['message']}"}
               for e in errors[:MAX_DETAILS]]
    more = f" (and {len(errors) - 1} more series)" if len(errors) > 1 else ""
    raise InvalidRequest(f"{details[0]['field']}: {details[0]['message']}{more}", field=details[0]["field"],
                         details=details)


def check_sampling(sampling: Sampling) -> None:
    """Raise InvalidRequest naming `sampling.<name>` for the first value outside SAMPLING_LIMITS."""
    for name, limits in SAMPLING_LIMITS.items():
        value = getattr(sampling, name)
        for bound, limit in limits.items():
            within = value > limit if bound == "gt" else value >= limit if bound == "ge" else value <= limit
            if not within:
                raise InvalidRequest(f"{name} must be {_BOUND_TEXT[bound]} {limit:g}, got {value}", field=f"sampling.{name}")


def check_calendar(spec: dict[str, Any] | None, field: str = "calendar") -> None:
    """InvalidRequest naming e.g. `calendar.symbols.AAPL.open` when a calendar spec is wrong."""
    if not spec:
        return
    if "default" in spec or "symbols" in spec:
        extra = sorted(set(spec) - {"default", "symbols"})
        if extra:
            raise InvalidRequest(f"{field}.{extra[0]}: unknown key beside default/symbols", field=f"{field}.{extra[0]}")
        TradingCalendar.from_spec(spec.get("default"), f"{field}.default")
        for symbol, one in (spec.get("symbols") or {}).items():
            TradingCalendar.from_spec(one, f"{field}.symbols.{symbol}")
    else:
        TradingCalendar.from_spec(spec, field)


def request_hash(params: ForecastParams, bars: pd.DataFrame, future: pd.DataFrame | None) -> str:
    """sha256 of the parameters and the data: same key + same hash = the same request."""
    digest = hashlib.sha256(json.dumps(params.to_json(), sort_keys=True, default=str).encode())
    for frame in (bars, future):
        if frame is not None:
            digest.update(pd.util.hash_pandas_object(frame.reset_index(drop=True), index=False).to_numpy().tobytes())
            digest.update(",".join(map(str, frame.columns)).encode())
    return digest.hexdigest()


def task_for_queue(queue: Queue | str, kind: JobKind | str | None = None) -> str:
    """The task that runs a job of `kind` on `queue` (the reconciler re-sends every kind); backtests
    share the forecast queues, so their kind decides."""
    if kind is not None and JobKind(kind) is JobKind.BACKTEST:
        return TASK_RUN_BACKTEST
    return TASK_RUN_FINETUNE if Queue(queue) in (Queue.FINETUNE_CPU, Queue.FINETUNE_GPU) else TASK_RUN_FORECAST


def send_job(settings: Settings, job_id: str, queue: Queue | str, kind: JobKind | str | None = None, *,
             priority: int, countdown: float | None = None, start: int | None = None) -> None:
    """Send the task for a committed job of `kind` at its priority (also used by the reconciler, a
    bulk job's next chunk and a claim over the tenant's bulk limit, which passes a `countdown`).

    `start`: where the bulk chunk this message is for begins (a forecast's first series, a
    backtest's first batch); a delivery whose job has moved past it is a duplicate and does
    nothing (jobs/forecast.py, jobs/backtest.py)."""
    from kronos_jobs.broker.celery_app import app_for  # celery only on the sending path

    options: dict[str, Any] = {}
    if settings.queue_policy == "priority":  # fifo: every message on the broker's one default step
        options["priority"] = broker_priority(priority)
    if countdown:
        options["countdown"] = countdown
    if start is not None:
        options["kwargs"] = {"start": int(start)}
    app_for(settings).send_task(
        task_for_queue(queue, kind), args=[job_id], task_id=job_id, queue=Queue(queue).value,
        retry=True, retry_policy={"max_retries": 2, "interval_start": 0.1, "interval_step": 0.5}, **options,
    )


def enqueue(session, settings: Settings, *, tenant_id: str, kind: JobKind, device: DevicePreference, queue: Queue,
            reason: str, model: str, params: dict[str, Any], progress_total: int, bars: pd.DataFrame,
            future: pd.DataFrame | None, source: str, idempotency_key: str | None, digest: str | None,
            summary: str, workload: Workload | None = None, priority: int | None = None):
    """Insert the job and its input, COMMIT, then send its task: the one path every job kind takes.

    `priority` None takes the workload's default (core/workload.py).

    crud.jobs.create_job settles an Idempotency-Key: the same key and body return the job that
    exists (or won an insert race), another body raises IdempotencyConflict. Such a job is returned
    as it is and not sent again. `summary` ends the log line ("3 series, model kronos-small").
    """
    job_id = uuid.uuid4().hex
    workload = workload or workload_of(kind, scheduled=False)  # a backtest is bulk whoever asks
    priority = job_priority(workload, priority)
    job = job_crud.create_job(
        session, job_id=job_id, tenant_id=tenant_id, kind=kind.value, device_requested=DevicePreference(device).value,
        queue=queue.value, routing_reason=reason, model=model, params=params, progress_total=progress_total,
        idempotency_key=idempotency_key, request_hash=digest, priority=priority, workload=workload.value,
    )
    if job.id != job_id:
        session.commit()
        return job
    result_crud.save_job_input(session, job_id=job_id, tenant_id=tenant_id, bars=bars, future=future, source=source)
    session.commit()
    # Only now, with the row committed, may a worker see the task. The row is the outbox entry:
    # until `sent_at` is set, beat's dispatcher sends it (jobs/recovery.py), so a broker that is
    # down now delays the job by seconds and loses nothing.
    try:
        # A backtest shares the forecast queues: its kind names its task.
        if kind is JobKind.BACKTEST:
            send_job(settings, job_id, queue, kind=kind, priority=priority)
        else:
            send_job(settings, job_id, queue, priority=priority)
    except Exception as exc:
        logger.error("job %s queued but not sent (%s: %s); the dispatcher will send it",
                     job_id, type(exc).__name__, exc)
    else:
        try:
            job_crud.mark_sent(session, job_ids=[job_id])
            session.commit()
        except Exception as exc:  # the task is out; at worst the dispatcher sends a duplicate (the lease absorbs it)
            session.rollback()
            logger.warning("job %s sent, but its sent_at was not recorded (%s)", job_id, exc)
    logger.info("job %s queued on %s at priority %d (%s, %s): %s", job_id, queue.value, priority, workload.value,
                reason, summary)
    return job


def submit_forecast(session, settings: Settings, *, tenant_id: str, request: ForecastParams | dict[str, Any],
                    bars: pd.DataFrame, future: pd.DataFrame | None, source: str,
                    idempotency_key: str | None = None, series_fields: Mapping[str, str] | None = None,
                    workload: Workload = Workload.INTERACTIVE, priority: int | None = None):
    """Validate, route, insert the job and its input, COMMIT, then send the task; return the Job.

    With `series_fields` (symbol -> its field in the request; the API), a series the worker could
    not forecast is a 422 naming that field. Without it (schedules), such a series becomes the job's
    per-symbol error, so one thin symbol does not stop a nightly run. `workload` and `priority`
    (None: the workload's default) come from core/workload.py's rules."""
    params = ForecastParams.from_value(request)
    symbols = pd.unique(bars["symbol"].astype(str)).tolist()  # first-seen order; vectorised (100k+ rows from the store)
    if not symbols:
        raise InvalidRequest("a forecast needs at least one series", field="series")
    spec = resolve_model(params.model, session, tenant_id=tenant_id, model_dirs=settings.effective_model_dirs)
    validate_params(params, spec.max_context, symbols)
    if series_fields is not None:
        reject_unforecastable(bars, future, params, series_fields)
    # The hash only tells a retried request from a different one under the same key.
    digest = request_hash(params, bars, future) if idempotency_key else None
    live = worker_crud.live_worker_queues(session, stale_seconds=settings.worker_stale_seconds)
    queue, reason = choose_queue(JobKind.FORECAST, params.device, live)
    return enqueue(session, settings, tenant_id=tenant_id, kind=JobKind.FORECAST, device=params.device, queue=queue,
                   reason=reason, model=params.model,
                   params={**params.to_json(), "source": source, "n_series": len(symbols)},
                   progress_total=len(symbols), bars=bars, future=future, source=source,
                   idempotency_key=idempotency_key, digest=digest, workload=workload, priority=priority,
                   summary=f"{len(symbols)} series, model {params.model}")
