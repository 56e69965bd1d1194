"""The backtest job on the shared lifecycle (jobs/lifecycle.py): claim, heartbeat, forecast every
origin in batches, score, and write rows, metrics and the final state in ONE transaction.

Speed: a backtest is thousands of small forecasts of the same shape. All (symbol, origin) contexts
of one model and lookback go through `KronosPredictor.predict_batch` together, `max_batch_size` at a
time (they share one context length, so each call is one decoding loop), instead of one `predict`
per origin; sub-horizons are read off the same `horizon`-step paths. Greedy forecasts are identical
to the per-origin loop (tests/evaluation/test_backtest_job.py); sampled ones draw from one seeded
generator per call and repeat.

No look-ahead: each context is built by `jobs/series.build_one` from the bars at or before its
origin only (`evaluation/origins.context_slice`); the truth and the timestamps to forecast are the
bars after it.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from types import SimpleNamespace
from typing import Any

import numpy as np
import pandas as pd

from kronos_jobs.core.errors import JobCancelled, LeaseLost
from kronos_jobs.core.identity import WorkerIdentity
from kronos_jobs.core.names import BAR_COLUMNS, UTC_OFFSET_COLUMN, JobState, quantile_column
from kronos_jobs.core.settings import Settings
from kronos_jobs.crud import backtests as backtest_crud
from kronos_jobs.crud import jobs as job_crud
from kronos_jobs.crud import results as result_crud
from kronos_jobs.db.models import utcnow
from kronos_jobs.db.session import session_scope
from kronos_jobs.evaluation import baselines as baseline_lib
from kronos_jobs.evaluation.metrics import NAIVE, crps_of_paths, metrics_table, naive_scale
from kronos_jobs.evaluation.origins import context_slice, truth_slice
from kronos_jobs.inputs.wall_clock import as_utc, row_offsets, wall_clock
from kronos_jobs.jobs.backtest_submit import BacktestParams, symbol_origins
from kronos_jobs.jobs.lease import LeaseHeartbeat, raise_if_held
from kronos_jobs.jobs.lifecycle import Delivery, new_owner, run_delivery
from kronos_jobs.jobs.registry import resolve_model
from kronos_jobs.jobs.series import SeriesInput, build_one

__all__ = ["run_backtest_job", "Series", "prepare_series", "contexts_for"]

logger = logging.getLogger(__name__)

ROW_KEYS = ("model", "kind", "lookback", "symbol", "origin", "repeat", "step", "timestamp")


@dataclasses.dataclass
class _Run(Delivery):
    params: BacktestParams


@dataclasses.dataclass
class Series:
    """One symbol's bars as arrays, sorted by time."""

    symbol: str
    stamps: pd.DatetimeIndex  # (N,) UTC
    values: np.ndarray  # (N, C) float64
    columns: list[str]  # the C bar columns present
    offsets: np.ndarray | None  # (N,) UTC offsets in minutes, when the input kept them
    wall: pd.DatetimeIndex  # (N,) naive local wall clock: what the model sees
    origins: np.ndarray  # origin indices

    def bars(self, index: slice) -> np.ndarray:
        """(n, 6) bars in BAR_COLUMNS order; a column the input lacks is NaN."""
        out = np.full((len(self.stamps[index]), len(BAR_COLUMNS)), np.nan)
        for j, column in enumerate(self.columns):
            out[:, BAR_COLUMNS.index(column)] = self.values[index, j]
        return out


def prepare_series(bars: pd.DataFrame, params: BacktestParams) -> list[Series]:
    """Per-symbol arrays and origins of long-format `bars`, in first-seen symbol order."""
    columns = [c for c in BAR_COLUMNS if c in bars.columns and bars[c].notna().any()]
    out = []
    for symbol, group in bars.groupby(bars["symbol"].astype(str), sort=False):
        group = group.assign(timestamp=as_utc(group["timestamp"])).sort_values("timestamp", kind="stable")
        stamps = pd.DatetimeIndex(group["timestamp"])
        offsets = row_offsets(group)
        out.append(Series(symbol=str(symbol), stamps=stamps, values=group[columns].to_numpy(dtype="float64"),
                          columns=columns, offsets=offsets, wall=wall_clock(stamps, offsets, None),
                          origins=np.asarray(symbol_origins(stamps, params))))
    return out


def contexts_for(series: Series, origin: int, lookback: int, horizon: int) -> SeriesInput | dict:
    """The model input of one origin: the bars at or before it (nothing after), and the timestamps of
    the `horizon` bars after it to forecast."""
    past = slice(0, origin + 1)
    future = truth_slice(origin, horizon)
    given = pd.DataFrame({"timestamp": series.stamps[future]})
    if series.offsets is not None:
        given[UTC_OFFSET_COLUMN] = series.offsets[future]
    spec = SimpleNamespace(lookback=lookback, pred_len=horizon, calendar={}, freq={})
    window = context_slice(origin, lookback)
    return build_one(series.symbol, series.stamps[window], series.values[window], series.columns, given, spec,
                     None if series.offsets is None else series.offsets[window], series.wall[window])


def _log(run: _Run, state: JobState | str, extra: str = "") -> None:
    state = JobState(state).value if isinstance(state, JobState) else state
    logger.info("job %s %s elapsed=%.3fs%s", run.job_id, state, run.elapsed(), f" {extra}" if extra else "")


def run_backtest_job(job_id: str, *, settings: Settings, identity: WorkerIdentity) -> JobState | None:
    """Run one delivery of a backtest job on the worker `identity`; the final state, or None.

    Raises LeaseLost (another delivery owns the job) and transient errors (the task retries); every
    other outcome is recorded on the job before returning.
    """
    owner = new_owner()
    t0 = time.perf_counter()
    try:
        with session_scope(settings, autocommit=True) as session:
            job_input = result_crud.load_job_input(session, job_id=job_id)
            job = job_crud.claim_job(session, job_id=job_id, owner=owner, lease_seconds=settings.lease_seconds)
            run = _Run(job_id=job.id, owner=owner, tenant_id=job.tenant_id, params=BacktestParams.from_job(job.params),
                       queue=job.queue, device_requested=job.device_requested, attempt=job.attempts,
                       queued_at=job.created_at, started_at=job.started_at, t0=t0)
    except JobCancelled:
        logger.info("job %s cancelled elapsed=%.3fs (before it started)", job_id, time.perf_counter() - t0)
        return JobState.CANCELLED
    except LeaseLost as exc:
        raise_if_held(job_id, settings, exc)
        raise
    _log(run, JobState.RUNNING, f"attempt={run.attempt} owner={owner}")
    heartbeat = LeaseHeartbeat(settings, job_id, owner)
    heartbeat.start()
    try:
        meta: dict[str, Any] = {}
        return run_delivery(
            run, settings, lambda: _backtest(run, settings, heartbeat, job_input[0], meta, identity),
            fail=lambda error: _finish(run, settings, JobState.FAILED, meta=meta, error=error),
            cancelled=lambda _exc: _finish(run, settings, JobState.CANCELLED, meta=meta,
                                           error={"code": "cancelled", "message": "cancelled by request while running"}),
            time_limit_message=f"the backtest exceeded its {settings.forecast_soft_time_limit} s soft time limit",
        )
    finally:
        heartbeat.stop()


class _Progress:
    """Counts forecasts done; between batches, records progress and raises JobCancelled on a cancel."""

    def __init__(self, run: _Run, settings: Settings, heartbeat: LeaseHeartbeat, total: int):
        self.run, self.settings, self.heartbeat, self.total, self.done = run, settings, heartbeat, total, 0

    def add(self, n: int) -> None:
        self.done += n
        if self.heartbeat.lost:
            raise LeaseLost(f"job {self.run.job_id}: lease lost while running")
        if self.done < self.total:  # the last one rides in the finish transaction
            with session_scope(self.settings) as session:
                cancel = job_crud.update_progress(session, job_id=self.run.job_id, owner=self.run.owner,
                                                  done=self.done, total=self.total)
            if cancel:
                raise JobCancelled(f"job {self.run.job_id} cancelled after {self.done}/{self.total} forecasts")


def _backtest(run: _Run, settings: Settings, heartbeat: LeaseHeartbeat, bars: pd.DataFrame, meta: dict[str, Any],
              identity: WorkerIdentity) -> JobState:
    from kronos_jobs.jobs import model_cache  # torch, in the worker only

    params = run.params
    seed = params.sampling.seed if params.sampling.seed is not None else random.SystemRandom().randrange(2**31)
    meta.update(identity.job_metadata())
    meta.update(device_requested=run.device_requested, queue=run.queue, attempt=run.attempt, seed=seed,
                sampling=dataclasses.asdict(params.sampling) | {"seed": seed}, repeats=params.repeats,
                quantiles=params.quantiles, lookbacks=params.lookbacks, horizon=params.horizon,
                horizons=params.report_horizons, baselines=params.baselines, models={})
    started = time.perf_counter()
    series = prepare_series(bars, params)
    contexts: dict[int, list[tuple[Series, int, SeriesInput]]] = {}
    errors: list[dict[str, Any]] = []
    for lookback in params.lookbacks:
        contexts[lookback] = []
        for s in series:
            for origin in s.origins:
                item = contexts_for(s, int(origin), lookback, params.horizon)
                if isinstance(item, dict):
                    errors.append({**item, "origin": s.stamps[origin].isoformat(), "lookback": lookback})
                else:
                    contexts[lookback].append((s, int(origin), item))
    parts = [_baseline_rows(series, params)]
    total = sum(len(v) for v in contexts.values()) * len(params.models) * params.repeats
    progress = _Progress(run, settings, heartbeat, total)
    prepare_seconds, inference_seconds, load_seconds = time.perf_counter() - started, 0.0, 0.0
    for model in params.models:
        with session_scope(settings) as session:
            spec = resolve_model(model, session, tenant_id=run.tenant_id, model_dirs=settings.effective_model_dirs)
        entry, cached = model_cache.get_predictor(spec, identity.device, settings)
        load_seconds += 0.0 if cached else entry.load_seconds
        meta["models"][model] = {**spec.metadata(), "model_checksum": entry.model_checksum,
                                 "tokenizer_checksum": entry.tokenizer_checksum, "dtype": entry.dtype}
        for lookback, items in contexts.items():
            for repeat in range(params.repeats):
                for index in range(0, len(items), settings.max_batch_size):
                    chunk = items[index:index + settings.max_batch_size]
                    t = time.perf_counter()
                    outputs = predict_contexts(entry.predictor, [c[2] for c in chunk], params,
                                               seed + repeat + params.repeats * (index // settings.max_batch_size))
                    inference_seconds += time.perf_counter() - t
                    parts.append(_model_rows(model, lookback, repeat, chunk, outputs, params))
                    progress.add(len(chunk))
    started = time.perf_counter()
    rows = pd.concat(parts, ignore_index=True)
    metrics = score(rows, series, params)
    rows = rows if NAIVE in params.baselines else rows[rows["model"] != NAIVE]
    meta["timings"] = {"prepare_seconds": round(prepare_seconds, 6), "model_load_seconds": round(load_seconds, 6),
                       "inference_seconds": round(inference_seconds, 6),
                       "scoring_seconds": round(time.perf_counter() - started, 6)}
    meta["forecasts"] = total
    state, error = JobState.SUCCEEDED, None
    if errors:
        state = JobState.PARTIALLY_SUCCEEDED if total else JobState.FAILED
        error = {"code": "some_origins_failed" if total else "all_origins_failed",
                 "message": f"{len(errors)} origin(s) could not be forecast; first: {errors[0]['message']}"}
    return _finish(run, settings, state, meta=meta, rows=rows, metrics=metrics, error=error, symbol_errors=errors,
                   progress=(total, total))


def predict_contexts(predictor, items: list[SeriesInput], params: BacktestParams, seed: int) -> list:
    """One `predict_batch` call for many origins' contexts (sample paths kept for CRPS when sampled)."""
    s = params.sampling
    return predictor.predict_batch([i.context for i in items], [i.x_timestamp for i in items],
                                   [i.y_timestamp for i in items], pred_len=params.horizon, T=s.temperature,
                                   top_k=s.top_k, top_p=s.top_p, sample_count=s.sample_count, seed=seed,
                                   quantiles=params.quantiles or None, return_samples=s.sample_count > 1)


def _frame(keys: dict[str, Any], forecast: np.ndarray, truth: np.ndarray, last_close: float,
           extra: dict[str, np.ndarray] | None = None) -> dict[str, Any]:
    """Columns of one forecast's rows: keys, open..amount, actual_<column>, last_close and `extra`."""
    columns = dict(keys)
    for j, column in enumerate(BAR_COLUMNS):
        columns[column] = forecast[:, j]
    columns.update(extra or {})
    for j, column in enumerate(BAR_COLUMNS):
        columns[f"actual_{column}"] = truth[:, j]
    columns["last_close"] = np.full(len(forecast), last_close)
    return columns


def _keys(model: str, kind: str, lookback: int, s: Series, origin: int, repeat: int, horizon: int) -> dict[str, Any]:
    return {"model": model, "kind": kind, "lookback": lookback, "symbol": s.symbol, "origin": s.stamps[origin],
            "repeat": repeat, "step": np.arange(1, horizon + 1), "timestamp": s.stamps[truth_slice(origin, horizon)]}


def _baseline_rows(series: list[Series], params: BacktestParams) -> pd.DataFrame:
    """Every baseline's rows for every lookback, symbol and origin (naive always: skill needs it)."""
    names = list(dict.fromkeys([NAIVE, *params.baselines]))
    frames = []
    for s in series:
        season = baseline_lib.season_of(s.stamps)
        for origin in s.origins:
            origin = int(origin)
            past = s.bars(slice(0, origin + 1))
            truth = s.bars(truth_slice(origin, params.horizon))
            for lookback in params.lookbacks:
                made = baseline_lib.baseline_forecasts(names, past_stamps=s.stamps[:origin + 1], past=past,
                                                       lookback=lookback, targets=s.stamps[truth_slice(origin, params.horizon)],
                                                       season=season)
                for name, forecast in made.items():
                    frames.append(_frame(_keys(name, "baseline", lookback, s, origin, 0, params.horizon),
                                         forecast, truth, past[-1, 3]))
    return _concat(frames)


def _model_rows(model: str, lookback: int, repeat: int, chunk, outputs, params: BacktestParams) -> pd.DataFrame:
    frames = []
    for (s, origin, _), output in zip(chunk, outputs):
        mean = output.mean if hasattr(output, "quantiles") else output
        forecast = mean[list(BAR_COLUMNS)].to_numpy(dtype="float64")
        truth = s.bars(truth_slice(origin, params.horizon))
        extra = {}
        for level in params.quantiles or ():
            band = output.quantiles[float(level)][list(BAR_COLUMNS)].to_numpy(dtype="float64")
            extra.update({quantile_column(level, c): band[:, j] for j, c in enumerate(BAR_COLUMNS)})
        if getattr(output, "samples", None) is not None:
            paths = np.asarray(output.samples[:, :, BAR_COLUMNS.index("close")], dtype="float64").T  # (P, S)
            extra["crps"] = crps_of_paths(truth[:, BAR_COLUMNS.index("close")], paths)
        frames.append(_frame(_keys(model, "model", lookback, s, origin, repeat, params.horizon), forecast, truth,
                             s.bars(slice(origin, origin + 1))[0, 3], extra))
    return _concat(frames)


def _concat(frames: list[dict[str, Any]]) -> pd.DataFrame:
    if not frames:
        return pd.DataFrame(columns=list(ROW_KEYS))
    names = list(dict.fromkeys(name for f in frames for name in f))
    n = [len(f["step"]) for f in frames]
    columns = {}
    for name in names:
        values = []
        for f, length in zip(frames, n):
            value = f.get(name, np.full(length, np.nan))
            values.append(np.asarray(value) if np.ndim(value) else np.full(length, value, dtype=object))
        if name in ("origin", "timestamp"):
            columns[name] = pd.DatetimeIndex(np.concatenate([pd.DatetimeIndex(v).as_unit("ns").asi8 for v in values])
                                             .view("datetime64[ns]")).tz_localize("UTC")
        else:
            columns[name] = np.concatenate(values)
    frame = pd.DataFrame(columns)
    frame["lookback"] = frame["lookback"].astype("int64")
    frame["repeat"] = frame["repeat"].astype("int64")
    frame["step"] = frame["step"].astype("int64")
    return frame


def score(rows: pd.DataFrame, series: list[Series], params: BacktestParams) -> pd.DataFrame:
    """The metrics table, pooled (symbol None) and per symbol, from the rows of every model and baseline.
    MASE scales come from each symbol's bars at or before its first origin."""
    history = pd.concat([pd.DataFrame({"symbol": s.symbol, "close": s.bars(slice(0, int(s.origins.min()) + 1))[:, 3]})
                         for s in series if len(s.origins)], ignore_index=True)
    scales = naive_scale(history)
    levels = [float(q) for q in params.quantiles or ()]
    pooled = metrics_table(rows, scales=scales, quantiles=levels, horizons=params.report_horizons)
    pooled.insert(3, "symbol", None)
    per_symbol = metrics_table(rows, scales=scales, quantiles=levels, horizons=params.report_horizons, by_symbol=True)
    out = pd.concat([pooled, per_symbol], ignore_index=True)
    return out if NAIVE in params.baselines else out[out["model"] != NAIVE]


def _finish(run: _Run, settings: Settings, state: JobState, *, meta: dict[str, Any], rows: pd.DataFrame | None = None,
            metrics: pd.DataFrame | None = None, error: dict[str, Any] | None = None,
            symbol_errors: list[dict[str, Any]] | None = None, progress: tuple[int, int] | None = None) -> JobState:
    """Rows, metrics, metadata and the final state in ONE transaction (only while we hold the lease)."""
    meta = dict(meta)
    finished_at = utcnow()
    meta.setdefault("timings", {}).update(
        queued_at=run.queued_at.isoformat() if run.queued_at else None,
        started_at=run.started_at.isoformat() if run.started_at else None,
        finished_at=finished_at.isoformat(), elapsed_seconds=round(run.elapsed(), 6))
    with session_scope(settings) as session:
        if rows is not None:
            backtest_crud.write_backtest(session, job_id=run.job_id, tenant_id=run.tenant_id, rows=rows, metrics=metrics)
        job_crud.finish_job(session, job_id=run.job_id, owner=run.owner, state=state, error=error,
                            symbol_errors=symbol_errors or [], execution_metadata=meta, progress=progress)
    _log(run, state, f"errors={len(symbol_errors or [])}" + (f" code={error['code']}" if error else ""))
    return state
