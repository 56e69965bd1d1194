"""Job handles: `Job` (sync) and `AsyncJob`, built by the clients from the API's job JSON."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from kronos_jobs.client.errors import JobTimeout
from kronos_jobs.client.progress import TERMINAL, ProgressBar
from kronos_jobs.client.transport import Call


def _chart_call(job_id: str, path: str | Path | None, symbol: str | None, format: str | None) -> Call:  # noqa: A002
    fmt = format or ("svg" if path is not None and str(path).lower().endswith(".svg") else "png")
    params = {"format": fmt, **({"symbol": symbol} if symbol else {})}

    def parse(response):
        if path is not None:
            Path(path).write_bytes(response.content)
        return response.content

    return Call("GET", f"/v1/jobs/{job_id}/chart", {"params": params}, parse)


def _metrics_call(job_id: str, by: str) -> Call:
    from kronos_jobs.client.client import _parquet_frame

    return Call("GET", f"/v1/jobs/{job_id}/metrics", {"params": {"by": by, "format": "parquet"}}, _parquet_frame)


def _result_call(job_id: str) -> Call:
    from kronos_jobs.client.client import _parquet_frame

    return Call("GET", f"/v1/jobs/{job_id}/result", {"params": {"format": "parquet"}}, _parquet_frame)


class _JobBase:
    def __init__(self, client: Any, body: dict[str, Any]):
        self._client, self.data = client, body

    id = property(lambda self: self.data["id"])
    kind = property(lambda self: self.data["kind"])
    state = property(lambda self: self.data["state"])
    progress = property(lambda self: self.data.get("progress") or {})
    metadata = property(lambda self: self.data.get("metadata") or {})
    error = property(lambda self: self.data.get("error"))
    symbol_errors = property(lambda self: self.data.get("symbol_errors") or [])

    @property
    def done(self) -> bool:
        """Whether the job has finished (succeeded, partially succeeded, failed or cancelled)."""
        return self.state in TERMINAL

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.id} {self.kind} {self.state}>"


class Job(_JobBase):
    """A job on the server; `data` is the last JSON read (`refresh()` reads again)."""

    def refresh(self) -> "Job":
        self.data = self._client._run(Call("GET", f"/v1/jobs/{self.id}"))
        return self

    def wait(self, timeout: float | None = None, *, progress: bool = False, interval: float = 0.5) -> "Job":
        """Poll until the job finishes; a tqdm bar with ETA when `progress`. JobTimeout after `timeout` s."""
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = ProgressBar(self.data) if progress else None
        try:
            while not self.done:
                if deadline is not None and time.monotonic() >= deadline:
                    raise JobTimeout(f"job {self.id} still {self.state} after {timeout:g} s")
                time.sleep(interval)
                self.refresh()
                if bar is not None:
                    bar.update(self.data)
        finally:
            if bar is not None:
                bar.close()
        return self

    def result(self):
        """The forecast rows as a DataFrame (quantile columns included); `attrs` name the model,
        checkpoint and label ("random weights" where true)."""
        return self._client._run(_result_call(self.id))

    def metrics(self, *, by: str = "all"):
        """A finished backtest's metrics table as a DataFrame (`by="symbol"`: one row set per symbol)."""
        return self._client._run(_metrics_call(self.id, by))

    def cancel(self) -> "Job":
        self.data = self._client._run(Call("POST", f"/v1/jobs/{self.id}/cancel"))
        return self

    def plot(self, path: str | Path | None = None, *, symbol: str | None = None, format: str | None = None) -> bytes:  # noqa: A002
        """The job's chart (PNG, or SVG for a .svg path / format="svg"); written to `path` when given."""
        return self._client._run(_chart_call(self.id, path, symbol, format))


class AsyncJob(_JobBase):
    """`Job` with coroutine methods."""

    async def refresh(self) -> "AsyncJob":
        self.data = await self._client._run(Call("GET", f"/v1/jobs/{self.id}"))
        return self

    async def wait(self, timeout: float | None = None, *, progress: bool = False, interval: float = 0.5) -> "AsyncJob":
        deadline = None if timeout is None else time.monotonic() + timeout
        bar = ProgressBar(self.data) if progress else None
        try:
            while not self.done:
                if deadline is not None and time.monotonic() >= deadline:
                    raise JobTimeout(f"job {self.id} still {self.state} after {timeout:g} s")
                await asyncio.sleep(interval)
                await self.refresh()
                if bar is not None:
                    bar.update(self.data)
        finally:
            if bar is not None:
                bar.close()
        return self

    async def result(self):
        return await self._client._run(_result_call(self.id))

    async def metrics(self, *, by: str = "all"):
        return await self._client._run(_metrics_call(self.id, by))

    async def cancel(self) -> "AsyncJob":
        self.data = await self._client._run(Call("POST", f"/v1/jobs/{self.id}/cancel"))
        return self

    async def plot(self, path: str | Path | None = None, *, symbol: str | None = None, format: str | None = None) -> bytes:  # noqa: A002
        return await self._client._run(_chart_call(self.id, path, symbol, format))
