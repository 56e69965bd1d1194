"""`Client` and `AsyncClient`: the public HTTP API of kronos-jobs from Python.

    from kronos_jobs.client import Client

    client = Client("http://localhost:8000")           # api_key=... or KRONOS_API_KEY
    job = client.forecast(bars, model="random:mini", pred_len=12, sample_count=8, quantiles=[0.1, 0.9])
    job.wait(progress=True)
    frame = job.result()                                # a DataFrame, quantile columns included
    job.plot("forecast.png")

Every endpoint is written once (`_Endpoints`) as a `Call`; the sync client sends it at once, the
async one returns a coroutine. The client speaks the HTTP API and nothing else.
"""

from __future__ import annotations

import io
import json
import uuid
from collections.abc import Iterable, Sequence
from typing import Any

import httpx
import pandas as pd

from kronos_jobs.client.jobs import AsyncJob, Job
from kronos_jobs.client.transport import Call, send, send_async

DEFAULT_TIMEOUT = 60.0


def _frame_upload(frame: pd.DataFrame, name: str) -> dict[str, Any]:
    """A DataFrame as a Parquet file field (types and time zones survive, unlike CSV)."""
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"expected a pandas DataFrame, got {type(frame).__name__}")
    frame = frame.reset_index(drop=True) if isinstance(frame.index, pd.RangeIndex) else frame.reset_index()
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return {"file": (f"{name}.parquet", buffer.getvalue(), "application/vnd.apache.parquet")}


def _parquet_frame(response: httpx.Response) -> pd.DataFrame:
    """A Parquet answer as a DataFrame; the file's `kronos.*` metadata (model, checkpoint, label)
    goes to `frame.attrs`."""
    import pyarrow.parquet as pq

    table = pq.read_table(io.BytesIO(response.content))
    frame = table.to_pandas()
    meta = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items() if k.startswith(b"kronos.")}
    frame.attrs.update({k.removeprefix("kronos."): v for k, v in meta.items()})
    return frame


def _sampling(temperature, top_k, top_p, sample_count, seed) -> dict[str, Any]:
    values = dict(temperature=temperature, top_k=top_k, top_p=top_p, sample_count=sample_count, seed=seed)
    return {k: v for k, v in values.items() if v is not None}


def _drop_none(values: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in values.items() if v is not None}


class _Endpoints:
    """Each public call, written once; `_run` sends it (sync) or returns a coroutine (async)."""

    _job_class: type

    def _run(self, call: Call) -> Any:  # pragma: no cover - defined by the two clients
        raise NotImplementedError

    def _job(self, body: dict[str, Any]):
        return self._job_class(self, body)

    def _submit(self, path: str, *, data: dict[str, Any], files: dict[str, Any] | None,
                idempotency_key: str | None):
        # A key on every submission makes the client's retries safe: a repeat returns the same job.
        headers = {"Idempotency-Key": idempotency_key or uuid.uuid4().hex}
        kwargs = ({"files": files, "data": {"request": json.dumps(data)}} if files else {"json": data})
        return self._run(Call("POST", path, {**kwargs, "headers": headers}, lambda r: self._job(r.json())))

    # --- jobs ---------------------------------------------------------------------------------------

    def forecast(self, bars: pd.DataFrame | None = None, *, symbols: Sequence[str] | None = None,
                 model: str | None = None, pred_len: int = 24, lookback: int = 400, device: str = "auto",
                 freq: str | None = None, quantiles: Sequence[float] | None = None,
                 temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                 sample_count: int | None = None, seed: int | None = None, calendar: dict[str, Any] | None = None,
                 priority: int | None = None, idempotency_key: str | None = None):
        """Submit a forecast of a long DataFrame (symbol, timestamp, open, high, low, close[, volume,
        amount]) or, with `symbols`, of the series store's latest bars; `priority` 0..9, higher runs
        first (default 6). Returns a job handle."""
        params = _drop_none(dict(model=model, pred_len=pred_len, lookback=lookback, device=device, priority=priority,
                                 quantiles=list(quantiles) if quantiles is not None else None, calendar=calendar))
        sampling = _sampling(temperature, top_k, top_p, sample_count, seed)
        if sampling:
            params["sampling"] = sampling
        if (bars is None) == (symbols is None):
            raise ValueError("give bars (a DataFrame) or symbols (from the series store), not both or neither")
        if symbols is not None:
            store = _drop_none({"symbols": list(symbols), "freq": freq})
            return self._submit("/v1/jobs/forecast", data={**params, "series_store": store}, files=None,
                                idempotency_key=idempotency_key)
        return self._submit("/v1/jobs/forecast", data=_drop_none({**params, "freq": freq}),
                            files=_frame_upload(bars, "bars"), idempotency_key=idempotency_key)

    def finetune(self, bars: pd.DataFrame, *, model: str | None = None, priority: int | None = None,
                 idempotency_key: str | None = None, **params: Any):
        """Submit a fine-tune of `model` on a long DataFrame; `params` are the request's fields
        (epochs, max_steps, lookback, pred_len, name, ...); `priority` 0..9, higher runs first
        (default 6). Returns a job handle."""
        return self._submit("/v1/jobs/finetune", data=_drop_none({"model": model, "priority": priority, **params}),
                            files=_frame_upload(bars, "train"), idempotency_key=idempotency_key)

    def backtest(self, bars: pd.DataFrame | None = None, *, models: Sequence[str], symbols: Sequence[str] | None = None,
                 start: str | None = None, end: str | None = None, freq: str | None = None,
                 lookbacks: Sequence[int] = (400,), horizon: int = 12, horizons: Sequence[int] | None = None,
                 n_windows: int | None = None, step_size: int | None = None, origins: Sequence[str] | None = None,
                 repeats: int | None = None, quantiles: Sequence[float] | None = None,
                 baselines: Sequence[str] | None = None, device: str = "auto",
                 temperature: float | None = None, top_k: int | None = None, top_p: float | None = None,
                 sample_count: int | None = None, seed: int | None = None, priority: int | None = None,
                 idempotency_key: str | None = None):
        """Submit a rolling-origin backtest of `models` on a long DataFrame or, with `symbols`, on the
        series store's bars between `start` and `end`; `priority` 0..9, higher runs first (default 3).
        Returns a job handle; `job.result()` gives the per-origin forecasts and truths, `job.metrics()`
        the stored metrics table."""
        params = _drop_none(dict(
            models=list(models), lookbacks=list(lookbacks), horizon=horizon, device=device, priority=priority,
            horizons=list(horizons) if horizons is not None else None, n_windows=n_windows, step_size=step_size,
            origins=list(origins) if origins is not None else None, repeats=repeats,
            quantiles=list(quantiles) if quantiles is not None else None,
            baselines=list(baselines) if baselines is not None else None))
        sampling = _sampling(temperature, top_k, top_p, sample_count, seed)
        if sampling:
            params["sampling"] = sampling
        if (bars is None) == (symbols is None):
            raise ValueError("give bars (a DataFrame) or symbols (from the series store), not both or neither")
        if symbols is not None:
            store = _drop_none({"symbols": list(symbols), "freq": freq, "start": start, "end": end})
            return self._submit("/v1/jobs/backtest", data={**params, "series_store": store}, files=None,
                                idempotency_key=idempotency_key)
        return self._submit("/v1/jobs/backtest", data=_drop_none({**params, "freq": freq}),
                            files=_frame_upload(bars, "bars"), idempotency_key=idempotency_key)

    def scores(self, *, schedule: str | None = None, models: Iterable[str] | None = None,
               symbols: Iterable[str] | None = None, since: str | None = None, by: str = "all"):
        """Live scores of stored forecasts against the bars that arrived since, with persistence's
        errors on the same bars, as a DataFrame."""
        params = _drop_none({"schedule": schedule, "model": list(models) if models is not None else None,
                             "symbol": list(symbols) if symbols is not None else None, "since": since,
                             "by": by, "format": "parquet"})
        return self._run(Call("GET", "/v1/scores", {"params": params}, _parquet_frame))

    def job(self, job_id: str):
        """The handle of an existing job (read once)."""
        return self._run(Call("GET", f"/v1/jobs/{job_id}", parse=lambda r: self._job(r.json())))

    def jobs(self, *, state: str | None = None, kind: str | None = None, limit: int = 50):
        """The newest jobs (one page), as handles."""
        params = _drop_none({"state": state, "kind": kind, "limit": limit})
        return self._run(Call("GET", "/v1/jobs", {"params": params},
                              lambda r: [self._job(body) for body in r.json()["data"]]))

    # --- models, workers ------------------------------------------------------------------------------

    def models(self):
        """Every model name a job may use (published, random:*, local directories, fine-tuned)."""
        return self._run(Call("GET", "/v1/models", parse=lambda r: r.json()["data"]))

    def model(self, model_id: str):
        return self._run(Call("GET", f"/v1/models/{model_id}"))

    def workers(self, *, seen_within: int | None = None):
        return self._run(Call("GET", "/v1/workers", {"params": _drop_none({"seen_within": seen_within})},
                              lambda r: r.json()["data"]))

    # --- series store -----------------------------------------------------------------------------------

    def import_series(self, bars: pd.DataFrame, *, freq: str | None = None):
        """Store a long DataFrame's bars (all or nothing); returns `{"rows_written", "series"}`."""
        return self._run(Call("POST", "/v1/series", {"files": _frame_upload(bars, "bars"),
                                                     "params": _drop_none({"freq": freq})}))

    def series(self, *, freq: str | None = None):
        return self._run(Call("GET", "/v1/series", {"params": _drop_none({"freq": freq})}, lambda r: r.json()["data"]))

    def bars(self, symbol: str, *, freq: str | None = None, start: str | None = None, end: str | None = None):
        """A stored symbol's bars as a DataFrame."""
        params = _drop_none({"freq": freq, "start": start, "end": end, "format": "parquet"})
        return self._run(Call("GET", f"/v1/series/{symbol}/bars", {"params": params}, _parquet_frame))

    # --- schedules ------------------------------------------------------------------------------------------

    def create_schedule(self, **fields: Any):
        """Create a schedule (fields as `POST /v1/schedules`: name, cron, timezone, symbols, model, ...)."""
        return self._run(Call("POST", "/v1/schedules", {"json": fields}))

    def schedules(self):
        return self._run(Call("GET", "/v1/schedules", parse=lambda r: r.json()["data"]))

    def update_schedule(self, schedule_id: str, **changes: Any):
        return self._run(Call("PATCH", f"/v1/schedules/{schedule_id}", {"json": changes}))

    def run_schedule(self, schedule_id: str):
        """Run a schedule now; returns the run."""
        return self._run(Call("POST", f"/v1/schedules/{schedule_id}/run"))

    def schedule_runs(self, schedule_id: str):
        return self._run(Call("GET", f"/v1/schedules/{schedule_id}/runs", parse=lambda r: r.json()["data"]))

    def latest_forecasts(self, *, symbols: Iterable[str] | None = None, schedule: str | None = None,
                         as_of: str | None = None):
        """Per symbol, the rows of its most recent finished forecast (a DataFrame)."""
        params: dict[str, Any] = _drop_none({"schedule": schedule, "as_of": as_of, "format": "parquet"})
        if symbols is not None:
            params["symbol"] = list(symbols)
        return self._run(Call("GET", "/v1/forecasts", {"params": params}, _parquet_frame))


def _http_options(url: str | None, api_key: str | None, timeout: float) -> dict[str, Any]:
    from kronos_jobs.core.settings import get_settings

    settings = get_settings()
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else settings.api_auth_headers
    return {"base_url": (url or settings.effective_api_url).rstrip("/"), "headers": headers, "timeout": timeout}


class Client(_Endpoints):
    """Synchronous client. `url` defaults to KRONOS_API_URL, `api_key` to KRONOS_API_KEY (sent as a
    bearer token); 429 and 503 answers and connection errors are retried `max_retries` times."""

    _job_class = Job

    def __init__(self, url: str | None = None, *, api_key: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                 max_retries: int = 3, backoff: float = 0.5, http: httpx.Client | None = None):
        # `http` lets tests pass an in-process client (fastapi.testclient.TestClient is an httpx.Client).
        self.http = http or httpx.Client(**_http_options(url, api_key, timeout))
        self.max_retries, self.backoff = max_retries, backoff

    def _run(self, call: Call) -> Any:
        return send(self.http, call, max_retries=self.max_retries, backoff=self.backoff)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class AsyncClient(_Endpoints):
    """The same calls as `Client`, each a coroutine; job handles are `AsyncJob`."""

    _job_class = AsyncJob

    def __init__(self, url: str | None = None, *, api_key: str | None = None, timeout: float = DEFAULT_TIMEOUT,
                 max_retries: int = 3, backoff: float = 0.5, http: httpx.AsyncClient | None = None):
        self.http = http or httpx.AsyncClient(**_http_options(url, api_key, timeout))
        self.max_retries, self.backoff = max_retries, backoff

    def _run(self, call: Call) -> Any:
        return send_async(self.http, call, max_retries=self.max_retries, backoff=self.backoff)

    async def aclose(self) -> None:
        await self.http.aclose()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()


