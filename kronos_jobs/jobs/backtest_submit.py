"""Accept a backtest job: its parameters, the checks that need the bars or the model table, routing,
commit, send. Runs in the API and CLI processes and never imports torch.

A backtest is rolling-origin evaluation on the forecast queues: every (model, lookback, symbol,
origin, repeat) is one forecast of `horizon` steps from the bars at or before the origin
(kronos_jobs/evaluation/origins.py), scored against the bars after it together with the baselines.
The worker (`jobs/backtest.py`) reads the same `BacktestParams` back from the job row and finds the
same origins with the same functions, so what was validated here is what runs.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pandas as pd

from kronos_jobs.core.errors import InvalidRequest, invalid
from kronos_jobs.core.names import DevicePreference, JobKind
from kronos_jobs.core.routing import choose_queue
from kronos_jobs.core.settings import Settings
from kronos_jobs.crud import workers as worker_crud
from kronos_jobs.evaluation.baselines import BASELINES
from kronos_jobs.evaluation.origins import bars_needed, origin_indices
from kronos_jobs.inputs.wall_clock import as_utc
from kronos_jobs.jobs.registry import resolve_model
from kronos_jobs.jobs.submit import Sampling, check_sampling, enqueue, request_hash, sampling_and_fields

MAX_MODELS = 8
MAX_LOOKBACKS = 8
MAX_REPEATS = 32
MAX_ORIGINS = 10_000  # per symbol
MAX_FORECASTS = 2_000_000  # models x lookbacks x repeats x symbols x origins: bounds a job's rows


@dataclasses.dataclass
class BacktestParams:
    """A backtest request minus its bars; stored as the job's `params`."""

    models: list[str]
    device: DevicePreference = DevicePreference.AUTO
    lookbacks: list[int] = dataclasses.field(default_factory=lambda: [400])
    horizon: int = 12
    horizons: list[int] = dataclasses.field(default_factory=list)  # sub-horizons reported besides `horizon`
    n_windows: int | None = None
    step_size: int | None = None  # default: horizon
    origins: list[str] | None = None  # ISO 8601 instants (UTC when naive)
    sampling: Sampling = dataclasses.field(default_factory=Sampling)
    repeats: int = 1  # forecasts per origin, seeds seed, seed+1, ...
    quantiles: list[float] | None = None
    baselines: list[str] = dataclasses.field(default_factory=lambda: list(BASELINES))

    @classmethod
    def from_value(cls, value: "BacktestParams | dict[str, Any]") -> "BacktestParams":
        if isinstance(value, cls):
            return value
        sampling, data = sampling_and_fields(cls, value, what="backtest")
        params = cls(sampling=sampling, **data)
        params.device = DevicePreference(params.device)
        params.models = list(params.models or [])
        params.lookbacks = [int(v) for v in params.lookbacks or []]
        params.horizons = [int(v) for v in params.horizons or []]
        params.baselines = list(params.baselines if params.baselines is not None else BASELINES)
        if params.step_size is None and not params.origins:
            params.step_size = params.horizon
        return params

    @classmethod
    def from_job(cls, stored: dict[str, Any]) -> "BacktestParams":
        """The parameters of a stored job (its `params` also hold the source and a summary)."""
        known = {f.name for f in dataclasses.fields(cls)}
        return cls.from_value({k: v for k, v in stored.items() if k in known})

    def to_json(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["device"] = DevicePreference(self.device).value
        return data

    @property
    def report_horizons(self) -> list[int]:
        """The sub-horizons of the metrics table: those asked for and the whole horizon."""
        return sorted({*self.horizons, self.horizon})

    def origin_times(self) -> list[pd.Timestamp] | None:
        return [pd.Timestamp(o) for o in self.origins] if self.origins else None


def validate_params(params: BacktestParams, max_context: int) -> None:
    """The checks that need no bars: counts, ranges, names (`max_context`: the smallest of the models')."""
    if not 1 <= len(params.models) <= MAX_MODELS:
        raise invalid("models", f"give 1 to {MAX_MODELS} models, got {len(params.models)}")
    if len(set(params.models)) != len(params.models):
        raise invalid("models", "each model may be listed once")
    if not 1 <= len(params.lookbacks) <= MAX_LOOKBACKS:
        raise invalid("lookbacks", f"give 1 to {MAX_LOOKBACKS} lookbacks, got {len(params.lookbacks)}")
    for i, lookback in enumerate(params.lookbacks):
        if lookback < 2:
            raise invalid(f"lookbacks[{i}]", f"a lookback must be >= 2 bars, got {lookback}")
    if len(set(params.lookbacks)) != len(params.lookbacks):
        raise invalid("lookbacks", "each lookback may be listed once")
    if not 1 <= params.horizon <= max_context:
        raise invalid("horizon", f"must be between 1 and the model's context length {max_context}, got {params.horizon}")
    for i, h in enumerate(params.horizons):
        if not 1 <= h <= params.horizon:
            raise invalid(f"horizons[{i}]", f"a sub-horizon must be between 1 and horizon {params.horizon}, got {h}")
    if params.origins:
        if params.n_windows is not None:
            raise invalid("origins", "give origins or n_windows, not both")
        if len(params.origins) > MAX_ORIGINS:
            raise invalid("origins", f"at most {MAX_ORIGINS} origins, got {len(params.origins)}")
        times = [_instant(value, f"origins[{i}]") for i, value in enumerate(params.origins)]
        seen: dict[pd.Timestamp, int] = {}
        for i, instant in enumerate(times):
            if instant in seen:
                raise invalid(f"origins[{i}]", f"duplicate origin {instant.isoformat()} (also origins[{seen[instant]}])")
            seen[instant] = i
    else:
        if params.n_windows is None or not 1 <= params.n_windows <= MAX_ORIGINS:
            raise invalid("n_windows", f"give n_windows between 1 and {MAX_ORIGINS} (or explicit origins), got {params.n_windows}")
        if params.step_size is None or params.step_size < 1:
            raise invalid("step_size", f"must be >= 1 bar, got {params.step_size}")
    if not 1 <= params.repeats <= MAX_REPEATS:
        raise invalid("repeats", f"must be between 1 and {MAX_REPEATS}, got {params.repeats}")
    check_sampling(params.sampling)
    for i, level in enumerate(params.quantiles or ()):
        if not 0 < float(level) < 1:
            raise invalid(f"quantiles[{i}]", f"quantile levels must be in (0, 1), got {level}")
    if params.quantiles and params.sampling.sample_count < 2:
        raise invalid("quantiles", f"quantiles need sample paths: set sampling.sample_count >= 2 "
                                   f"(got {params.sampling.sample_count})")
    for i, name in enumerate(params.baselines):
        if name not in BASELINES:
            raise invalid(f"baselines[{i}]", f"unknown baseline {name!r}; expected one of {', '.join(BASELINES)}")
    if len(set(params.baselines)) != len(params.baselines):
        raise invalid("baselines", "each baseline may be listed once")


def _instant(value: Any, field: str) -> pd.Timestamp:
    try:
        stamp = pd.Timestamp(value)
    except (TypeError, ValueError):
        raise invalid(field, f"not an ISO 8601 time: {value!r}") from None
    if stamp is pd.NaT:
        raise invalid(field, f"not an ISO 8601 time: {value!r}")
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def symbol_origins(stamps: pd.DatetimeIndex, params: BacktestParams) -> "pd.Index":
    """One symbol's origin indices (sorted UTC `stamps`), as the worker will use them."""
    return origin_indices(stamps, horizon=params.horizon, n_windows=params.n_windows, step_size=params.step_size,
                          origins=params.origin_times())


def check_history(params: BacktestParams, bars: pd.DataFrame) -> dict[str, Any]:
    """Every symbol has the context and truth its origins need (InvalidRequest saying how many bars
    are needed); returns a summary: symbols, forecasts."""
    lookback = max(params.lookbacks)
    symbols = pd.unique(bars["symbol"].astype(str)).tolist()
    if not symbols:
        raise invalid("series", "a backtest needs at least one series")
    origins = 0
    for symbol, group in bars.groupby(bars["symbol"].astype(str), sort=False):
        stamps = pd.DatetimeIndex(as_utc(group["timestamp"])).sort_values()
        n = len(stamps)
        if params.origins:
            index = symbol_origins(stamps, params)
            for i, (origin, at) in enumerate(zip(params.origins, index)):
                if at + 1 < lookback:
                    raise invalid(f"origins[{i}]", f"symbol {symbol!r} has {max(0, at + 1)} bar(s) at or before "
                                                   f"{origin}; lookback {lookback} needs {lookback}")
                if at + params.horizon >= n:
                    raise invalid(f"origins[{i}]", f"symbol {symbol!r} has {n - at - 1} bar(s) after {origin}; "
                                                   f"horizon {params.horizon} needs {params.horizon}")
            origins += len(index)
        else:
            needed = bars_needed(lookback=lookback, horizon=params.horizon, n_windows=params.n_windows,
                                 step_size=params.step_size)
            if n < needed:
                raise invalid("n_windows", f"symbol {symbol!r} has {n} bars; lookback {lookback} + horizon "
                                           f"{params.horizon} + (n_windows {params.n_windows} - 1) x step_size "
                                           f"{params.step_size} needs {needed}")
            origins += params.n_windows
    forecasts = origins * len(params.models) * len(params.lookbacks) * params.repeats
    if forecasts > MAX_FORECASTS:
        raise invalid("n_windows" if not params.origins else "origins",
                      f"{forecasts} forecasts (models x lookbacks x repeats x symbols x origins); at most {MAX_FORECASTS}")
    return {"n_symbols": len(symbols), "n_origins": origins, "n_forecasts": forecasts}


def job_model_label(models: list[str]) -> str:
    """The job row's `model`: the models, comma-separated, within the column's 256 characters."""
    label = ",".join(models)
    return label if len(label) <= 256 else f"{models[0]} (+{len(models) - 1} more)"[:256]


def submit_backtest(session, settings: Settings, *, tenant_id: str, request: BacktestParams | dict[str, Any],
                    bars: pd.DataFrame, source: str, idempotency_key: str | None = None, priority: int | None = None):
    """Validate, route, insert the job and its bars, COMMIT, then send the task; return the Job.
    `priority` None takes the bulk default (core/workload.py)."""
    params = BacktestParams.from_value(request)
    if not params.models:
        raise invalid("models", "give at least one model")
    specs = []
    for i, name in enumerate(params.models):
        try:
            specs.append(resolve_model(name, session, tenant_id=tenant_id, model_dirs=settings.effective_model_dirs))
        except InvalidRequest as exc:
            raise invalid(f"models[{i}]", exc.message) from None
    validate_params(params, min(spec.max_context for spec in specs))
    summary = check_history(params, bars)
    digest = request_hash(params, bars, None) if idempotency_key else None
    live = worker_crud.live_worker_queues(session, stale_seconds=settings.worker_stale_seconds)
    queue, reason = choose_queue(JobKind.BACKTEST, params.device, live)
    return enqueue(session, settings, tenant_id=tenant_id, kind=JobKind.BACKTEST, device=params.device, queue=queue,
                   reason=reason, model=job_model_label(params.models),
                   params={**params.to_json(), "source": source, **summary},
                   progress_total=summary["n_forecasts"], bars=bars, future=None, source=source,
                   idempotency_key=idempotency_key, digest=digest, priority=priority,
                   summary=f"backtest of {', '.join(params.models)}: {summary['n_forecasts']} forecasts")
