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

Sharing the fleet: a backtest is bulk work (core/workload.py). Under KRONOS_QUEUE_POLICY=priority it
yields its worker between chunks, as a bulk forecast does (jobs/forecast.py): its batches are laid
out in one fixed order (`plan_batches`: model, lookback, repeat, contexts), each keeping the seed a
whole run gives it (`batch_seed`), and a delivery runs the next slice of that list worth about
KRONOS_BULK_CHUNK_SECONDS of model time on its device (`chunk_stop`, jobs/pace.py). The slice's
model rows go to `job_chunks`, the seed and batch size chosen by the first delivery go to the job's
metadata in the same transaction (every chunk must agree on them), the job yields and its task is
sent again at the job's priority naming the next batch. The last chunk's delivery adds the
baselines, scores every chunk's rows and writes rows, metrics and the final state in the one
finish transaction, deleting the chunks in it. A chunked backtest's forecasts are therefore those of
the same backtest run whole. A cancel, while running or between chunks, keeps no rows.
"""

from __future__ import annotations

import dataclasses
import logging
import random
import time
from types import SimpleNamespace
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from kronos_jobs.core.errors import JobCancelled, LeaseLost, TenantBusy
from kronos_jobs.core.identity import WorkerIdentity
from kronos_jobs.core.names import BAR_COLUMNS, UTC_OFFSET_COLUMN, JobKind, JobState, quantile_column
from kronos_jobs.core.settings import Settings
from kronos_jobs.core.workload import DEFAULT_PRIORITY, Workload, chunk_series
from kronos_jobs.crud import backtests as backtest_crud
from kronos_jobs.crud import chunks as chunk_crud
from kronos_jobs.crud import jobs as job_crud
from kronos_jobs.crud import results as result_crud
from kronos_jobs.db.models import utcnow
from kronos_jobs.db.session import session_scope
from kronos_jobs.evaluation import baselines as baseline_lib
from kronos_jobs.evaluation.metrics import NAIVE, crps_of_paths, metrics_table, naive_scale
from kronos_jobs.evaluation.origins import context_slice, truth_slice
from kronos_jobs.inputs.wall_clock import as_utc, row_offsets, wall_clock
from kronos_jobs.jobs import pace
from kronos_jobs.jobs.backtest_submit import BacktestParams, symbol_origins
from kronos_jobs.jobs.lease import LeaseHeartbeat, raise_if_held
from kronos_jobs.jobs.lifecycle import Delivery, new_owner, plan_claim, run_delivery
from kronos_jobs.jobs.registry import resolve_model
from kronos_jobs.jobs.series import SeriesInput, build_one
from kronos_jobs.jobs.submit import send_job

__all__ = ["run_backtest_job", "Series", "prepare_series", "contexts_for", "Batch", "plan_batches", "chunk_stop"]

logger = logging.getLogger(__name__)

ROW_KEYS = ("model", "kind", "lookback", "symbol", "origin", "repeat", "step", "timestamp")


@dataclasses.dataclass
class _Run(Delivery):
    params: BacktestParams
    priority: int = DEFAULT_PRIORITY[Workload.BULK]
    workload: str = Workload.BULK.value
    bulk: bool = False  # one chunk per delivery, then yield (module docstring)
    start: int = 0  # a chunked delivery's first batch (the batches before it are stored)
    plan: dict[str, Any] = dataclasses.field(default_factory=dict)  # seed, batch size: set by the first chunk
    wait_seconds: float = 0.0  # this delivery's time on the queue
    first_wait_seconds: float | None = None  # the job's: submit -> first claim


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


def run_backtest_job(job_id: str, *, settings: Settings, identity: WorkerIdentity,
                     start: int | None = None) -> JobState | None:
    """Run one delivery of a backtest job on the worker `identity`; the final state (`running`
    after a chunk), or None when this delivery did nothing.

    `start`: the batch the chunk message was sent for; a message for a batch the job has already
    passed is a duplicate and does nothing (as for forecasts, jobs/forecast.py).

    Raises LeaseLost (another delivery owns the job) and transient errors (the task retries); every
    other outcome is recorded on the job before returning.
    """
    owner = new_owner()
    t0 = time.perf_counter()
    # --- claim --------------------------------------------------------------------------------
    claim = plan_claim(settings, job_id, start)
    if claim is None:
        return None
    context, wait, bulk, limit = claim.context, claim.wait_seconds, claim.bulk, claim.bulk_limit
    try:
        with session_scope(settings, autocommit=limit is None) as session:
            if limit is not None:  # the count and the claim under the tenant's lock (jobs/forecast.py)
                job_crud.lock_tenant(session, tenant_id=context.tenant_id)
            job_input = result_crud.load_job_input(session, job_id=job_id)
            job = job_crud.claim_job(session, job_id=job_id, owner=owner, lease_seconds=settings.lease_seconds,
                                     wait_seconds=wait, bulk_limit=limit)
            first = chunk_crud.next_start(session, job_id=job_id) if bulk else 0
            run = _Run(job_id=job.id, owner=owner, tenant_id=job.tenant_id, params=BacktestParams.from_job(job.params),
                       queue=job.queue, device_requested=job.device_requested, attempt=job.attempts,
                       queued_at=job.created_at, started_at=job.started_at, t0=t0, priority=job.priority,
                       workload=job.workload, bulk=bulk, start=first,
                       plan=dict(job.execution_metadata or {}) if first else {}, wait_seconds=wait,
                       first_wait_seconds=job.queue_wait_seconds)
    except JobCancelled:
        with session_scope(settings) as session:
            chunk_crud.delete_chunks(session, job_id=job_id)
        logger.info("job %s cancelled elapsed=%.3fs (before it started)", job_id, time.perf_counter() - t0)
        return JobState.CANCELLED
    except TenantBusy as exc:  # not a failure: the job waits for one of the tenant's chunks to end
        countdown = settings.bulk_chunk_seconds * random.uniform(1.0, 2.0)
        send_job(settings, job_id, context.queue, kind=JobKind.BACKTEST, priority=context.priority,
                 countdown=countdown, start=start)
        logger.info("job %s waits: %s; sent again in %.1f s", job_id, exc, countdown)
        return None
    except LeaseLost as exc:
        raise_if_held(job_id, settings, exc)
        raise
    _log(run, JobState.RUNNING, f"attempt={run.attempt} owner={owner} batch={run.start}")
    heartbeat = LeaseHeartbeat(settings, job_id, owner)
    heartbeat.start()
    try:
        meta: dict[str, Any] = {}
        return run_delivery(
            run, settings, lambda: _backtest(run, settings, heartbeat, job_input[0], meta, identity),
            fail=lambda error: _finish(run, settings, JobState.FAILED, meta=meta, error=error),
            # A cancelled backtest keeps no rows, its stored chunks' included: metrics over the
            # forecasts that happened to finish would read as the whole evaluation's.
            cancelled=lambda _exc: _finish(run, settings, JobState.CANCELLED, meta=meta, error=_CANCELLED),
            time_limit_message=f"the backtest exceeded its {settings.forecast_soft_time_limit} s soft time limit",
        )
    finally:
        heartbeat.stop()


_CANCELLED = {"code": "cancelled", "message": "cancelled by request while running"}


class _Progress:
    """Counts forecasts done; between batches, records progress and raises JobCancelled on a cancel."""

    def __init__(self, run: _Run, settings: Settings, heartbeat: LeaseHeartbeat, total: int, done: int = 0):
        self.run, self.settings, self.heartbeat, self.total, self.done = run, settings, heartbeat, total, done

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


class Batch(NamedTuple):
    """One `predict_batch` call of a backtest: `n` contexts of one model, lookback and repeat."""

    model: str
    lookback: int
    repeat: int
    index: int  # the first context's position among the lookback's contexts
    n: int


def plan_batches(models: list[str], counts: dict[int, int], repeats: int, size: int) -> list[Batch]:
    """Every batch of a backtest in the order a whole run makes them; a chunk is a slice of this list.
    `counts`: the contexts of each lookback."""
    return [Batch(model, lookback, repeat, index, min(size, count - index))
            for model in models for lookback, count in counts.items() for repeat in range(repeats)
            for index in range(0, count, size)]


def batch_seed(seed: int, batch: Batch, repeats: int, size: int) -> int:
    """A batch's seed depends on its place in the plan only, so cutting the plan into chunks changes
    no forecast, sampled ones included."""
    return seed + batch.repeat + repeats * (batch.index // size)


def chunk_stop(batches: list[Batch], start: int, cost_of, target_seconds: float, probe: int) -> int:
    """The end (exclusive) of the chunk starting at batch `start`: whole batches, at least one, of
    the start's model and lookback, as many forecasts as `core/workload.chunk_series` fits in
    `target_seconds` for that shape's measured cost (`cost_of(model, lookback)`). A chunk keeps to
    one shape so that the cost it is cut by is the one it pays."""
    shape = batches[start][:2]
    end = start
    while end < len(batches) and batches[end][:2] == shape:
        end += 1
    budget = chunk_series(cost_of(*shape), target_seconds, sum(b.n for b in batches[start:end]), probe)
    stop, taken = start + 1, batches[start].n
    while stop < end and taken + batches[stop].n <= budget:
        taken += batches[stop].n
        stop += 1
    return stop


def _backtest(run: _Run, settings: Settings, heartbeat: LeaseHeartbeat, bars: pd.DataFrame, meta: dict[str, Any],
              identity: WorkerIdentity) -> JobState:
    from kronos_jobs.jobs import model_cache  # torch, in the worker only

    params, plan = run.params, run.plan
    # The seed and batch size of a chunked job's first delivery hold for every later one: they
    # decide which contexts share a call and which random draws each call makes.
    if plan:
        seed, size = int(plan["seed"]), int(plan["batch_size"])
    else:
        seed = params.sampling.seed if params.sampling.seed is not None else random.SystemRandom().randrange(2**31)
        size = settings.max_batch_size
    meta.update(identity.job_metadata())
    meta.update(device_requested=run.device_requested, queue=run.queue, attempt=run.attempt, seed=seed,
                sampling=dataclasses.asdict(params.sampling) | {"seed": seed}, repeats=params.repeats,
                quantiles=params.quantiles, lookbacks=params.lookbacks, horizon=params.horizon,
                horizons=params.report_horizons, baselines=params.baselines, batch_size=size,
                models=dict(plan.get("models", {})))
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
    batches = plan_batches(params.models, {k: len(v) for k, v in contexts.items()}, params.repeats, size)
    total = sum(b.n for b in batches)
    device = str(identity.device)

    def shape(model: str, lookback: int) -> tuple:
        return pace.shape_key(model, device, lookback, params.horizon, params.sampling.sample_count)

    stop = len(batches)
    if run.bulk and run.start < len(batches):  # this delivery's chunk only, sized by this worker's pace
        stop = chunk_stop(batches, run.start, lambda m, lb: pace.cost_model(shape(m, lb)),
                          settings.bulk_chunk_seconds, settings.bulk_probe_series)
    done = sum(b.n for b in batches[:run.start])
    progress = _Progress(run, settings, heartbeat, total, done)
    timings = dict(plan.get("timings", {}))
    prepare_seconds = time.perf_counter() - started + timings.get("prepare_seconds", 0.0)
    inference_seconds, load_seconds = 0.0, timings.get("model_load_seconds", 0.0)
    predictors: dict[str, Any] = {}
    parts = []
    for batch in batches[run.start:stop]:
        if batch.model not in predictors:
            with session_scope(settings) as session:
                spec = resolve_model(batch.model, session, tenant_id=run.tenant_id,
                                     model_dirs=settings.effective_model_dirs)
            entry, cached = model_cache.get_predictor(spec, identity.device, settings)
            predictors[batch.model] = entry.predictor
            load_seconds += 0.0 if cached else entry.load_seconds
            meta["models"][batch.model] = {**spec.metadata(), "model_checksum": entry.model_checksum,
                                           "tokenizer_checksum": entry.tokenizer_checksum, "dtype": entry.dtype}
        chunk = contexts[batch.lookback][batch.index:batch.index + size]
        t = time.perf_counter()
        outputs = predict_contexts(predictors[batch.model], [c[2] for c in chunk], params,
                                   batch_seed(seed, batch, params.repeats, size))
        inference_seconds += time.perf_counter() - t
        parts.append(_model_rows(batch.model, batch.lookback, batch.repeat, chunk, outputs, params))
        progress.add(len(chunk))
    timings = {"prepare_seconds": prepare_seconds, "model_load_seconds": load_seconds}
    if run.bulk and stop > run.start:
        pace.record(shape(*batches[run.start][:2]), progress.done - done, inference_seconds)
        if stop < len(batches):
            return _yield_chunk(run, settings, meta, timings, parts, inference_seconds, stop, progress.done, device)

    # --- the last chunk: every chunk's rows with the baselines, scored --------------------------
    stored = []
    if run.bulk:
        with session_scope(settings) as session:
            stored = chunk_crud.load_chunks(session, job_id=run.job_id)
        waits = [c["wait_seconds"] for c in stored[1:]] + ([run.wait_seconds] if stored else [])
        meta["chunks"] = {"count": len(stored) + 1,
                          "forecasts": [_forecasts(batches, c["start"], c["stop"]) for c in stored]
                          + [progress.done - done], "wait_seconds": round(sum(waits), 6)}
        inference_seconds += sum(c["inference_seconds"] for c in stored)
    started = time.perf_counter()
    rows = pd.concat([_baseline_rows(series, params), *(c["rows"] for c in stored if c["rows"] is not None), *parts],
                     ignore_index=True)
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


def _forecasts(batches: list[Batch], start: int, stop: int) -> int:
    return sum(b.n for b in batches[start:stop])


def _yield_chunk(run: _Run, settings: Settings, meta: dict[str, Any], timings: dict[str, float], parts: list,
                 inference_seconds: float, stop: int, done: int, device: str) -> JobState:
    """Store this delivery's model rows and the job's plan, and yield the job, in one transaction;
    then send the task for the next chunk."""
    plan = {"seed": meta["seed"], "batch_size": meta["batch_size"], "models": meta["models"], "timings": timings}
    with session_scope(settings) as session:
        chunk_crud.save_chunk(session, job_id=run.job_id, start=run.start, stop=stop,
                              rows=pd.concat(parts, ignore_index=True), symbol_errors=[],
                              inference_seconds=inference_seconds, wait_seconds=run.wait_seconds, device=device)
        chunk_crud.save_plan(session, job_id=run.job_id, plan=plan)
        # Raises JobCancelled (rolling the chunk back) when a cancel arrived during the chunk.
        job_crud.yield_job(session, job_id=run.job_id, owner=run.owner, done=done,
                           grace_seconds=10 * settings.lease_seconds)
    # Should this send fail, the job waits yielded until the reconciler sends it (jobs/recovery.py).
    send_job(settings, run.job_id, run.queue, kind=JobKind.BACKTEST, priority=run.priority, start=stop)
    _log(run, "yielded", f"batches={run.start}:{stop} inference={inference_seconds:.3f}s")
    return JobState.RUNNING


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
    first_wait = run.first_wait_seconds if run.first_wait_seconds is not None else run.wait_seconds
    meta.update(priority=run.priority, workload=run.workload)
    meta["timings"]["queue_wait_seconds"] = round(first_wait, 6)  # submit -> first claim
    with session_scope(settings) as session:
        chunk_crud.delete_chunks(session, job_id=run.job_id)  # a chunked job's, whatever its outcome
        if rows is not None:
            backtest_crud.write_backtest(session, job_id=run.job_id, tenant_id=run.tenant_id, rows=rows, metrics=metrics)
        job_crud.finish_job(session, job_id=run.job_id, owner=run.owner, state=state, error=error,
                            symbol_errors=symbol_errors or [], execution_metadata=meta, progress=progress)
    _log(run, state, f"errors={len(symbol_errors or [])}" + (f" code={error['code']}" if error else ""))
    return state
