"""Uploaded files are parsed in separate processes, with a time limit, never on the request threads.

A CSV or Parquet file is parsed by pandas/pyarrow, whose cost a hostile file can blow up far beyond
its size. So the API hands each upload to a small `pebble` process pool (KRONOS_UPLOAD_PARSE_WORKERS
processes) and awaits the result on the event loop: no request thread waits on it, and a parse that
runs past KRONOS_UPLOAD_PARSE_SECONDS has its process killed (pebble starts a fresh one) and
answers 422 naming `file`. When KRONOS_UPLOAD_PARSE_QUEUE uploads already wait, the next one is
answered 503 at once rather than queued behind them. The pool starts with the first upload and
stops with the app.
"""

from __future__ import annotations

import asyncio
import multiprocessing
import threading
from concurrent.futures import TimeoutError as FutureTimeout
from collections.abc import Callable
from typing import Any

from pebble import ProcessExpired, ProcessPool

from kronos_jobs.core.errors import InvalidRequest, PayloadTooLarge, Unavailable, invalid
from kronos_jobs.core.settings import Settings
from kronos_jobs.inputs.parsing import BarsInput, parse_upload

_RAISED = {cls.__name__: cls for cls in (InvalidRequest, PayloadTooLarge)}


def _parse(parser: Callable[..., BarsInput], data: bytes, kwargs: dict[str, Any]) -> tuple[str, Any]:
    """Runs in a pool process. Errors travel back as plain values (their keyword arguments would
    not survive pickling as exceptions)."""
    try:
        return "ok", parser(data, **kwargs)
    except (InvalidRequest, PayloadTooLarge) as exc:
        return "error", (type(exc).__name__, exc.message, exc.details, exc.field)


class ParsingPool:
    """The API's upload-parsing processes (one per app)."""

    def __init__(self, settings: Settings, parser: Callable[..., BarsInput] = parse_upload) -> None:
        self.settings, self.parser = settings, parser  # `parser`: a module-level function (it is pickled by name)
        self._pool: ProcessPool | None = None
        self._lock = threading.Lock()
        self._waiting = 0

    def _get(self) -> ProcessPool:
        with self._lock:
            if self._pool is None:
                # spawn: a fork of the API process would copy its threads' locks mid-use.
                self._pool = ProcessPool(max_workers=self.settings.upload_parse_workers,
                                         context=multiprocessing.get_context("spawn"))
            return self._pool

    async def parse_upload(self, data: bytes, **kwargs: Any) -> BarsInput:
        """`kronos_jobs.inputs.parsing.parse_upload(data, **kwargs)` in a pool process."""
        limit = self.settings.upload_parse_seconds
        if self._waiting >= self.settings.upload_parse_queue:
            raise Unavailable(f"{self._waiting} uploads are being parsed; retry shortly (KRONOS_UPLOAD_PARSE_QUEUE)")
        self._waiting += 1
        try:
            future = self._get().schedule(_parse, args=(self.parser, data, {**kwargs, "settings": self.settings}),
                                          timeout=limit)
            outcome, value = await asyncio.wrap_future(future)
        except FutureTimeout:
            raise invalid("file", f"parsing took longer than {limit:g} s (KRONOS_UPLOAD_PARSE_SECONDS); "
                                  "split the file or check its format") from None
        except ProcessExpired as exc:  # killed from outside, e.g. by the kernel's out-of-memory killer
            raise invalid("file", f"the parser's process died ({exc}); the file is too large or malformed") from None
        finally:
            self._waiting -= 1
        if outcome == "ok":
            return value
        name, message, details, field = value
        raise _RAISED[name](message, field=field, details=details)

    def close(self) -> None:
        with self._lock:
            if self._pool is not None:
                self._pool.stop()
                self._pool.join(timeout=5)
                self._pool = None


def pool_of(app: Any) -> ParsingPool:
    """The app's pool (api/main.py puts one on `app.state`)."""
    return app.state.parsing_pool



async def read_bars_body(request: Any, json_schema: type, upload_schema: type) -> tuple[Any, Any, BarsInput | None]:
    """A bars-carrying request (forecast, backtest): JSON, or a multipart upload whose file is parsed
    in this app's pool. Returns (params, upload or None, parsed bars or None)."""
    from api.uploads import read_json_or_upload  # here, so the pool's spawned parsers never import FastAPI

    params, upload = await read_json_or_upload(
        request, json_schema, upload_schema, what="the CSV or Parquet file",
        accepted="application/json or multipart/form-data with a file")
    parsed = None
    if upload is not None:
        parsed = await pool_of(request.app).parse_upload(
            upload.data, filename=upload.filename, content_type=upload.content_type, freq=params.freq)
    return params, upload, parsed
