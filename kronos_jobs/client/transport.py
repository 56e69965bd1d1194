"""Sending one request with retries: 429 and 503 answers honour Retry-After, connection errors back off.

The same policy for the sync and the async client; only the sleeping and sending differ.
"""

from __future__ import annotations

import asyncio
import dataclasses
import email.utils
import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

import httpx

from kronos_jobs.client.errors import ApiConnectionError, error_from_response

RETRY_STATUSES = frozenset({429, 503})
MAX_RETRY_AFTER = 60.0  # a server asking for longer is not waited for: the error is raised instead


@dataclasses.dataclass
class Call:
    """One API call: what to send and how to read the answer."""

    method: str
    path: str
    kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    parse: Callable[[httpx.Response], Any] = lambda response: response.json()


def retry_delay(response: httpx.Response | None, attempt: int, backoff: float) -> float | None:
    """Seconds to wait before retry `attempt` (1-based), or None when this answer is final."""
    if response is not None:
        if response.status_code not in RETRY_STATUSES:
            return None
        header = response.headers.get("Retry-After")
        if header:
            seconds = _retry_after_seconds(header)
            if seconds is not None:
                return seconds if seconds <= MAX_RETRY_AFTER else None
    return backoff * 2 ** (attempt - 1)


def _retry_after_seconds(value: str) -> float | None:
    """Retry-After as delay-seconds or an HTTP date (RFC 9110 §10.2.3)."""
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, (when - datetime.now(timezone.utc)).total_seconds())


def _connection_error(http: httpx.Client | httpx.AsyncClient, exc: httpx.TransportError) -> ApiConnectionError:
    return ApiConnectionError(f"cannot reach the kronos-jobs API at {http.base_url} ({type(exc).__name__}: {exc})")


def _settle(http: httpx.Client | httpx.AsyncClient, call: Call, attempt: int, *, max_retries: int, backoff: float,
            response: httpx.Response | None = None, exc: httpx.TransportError | None = None) -> tuple[bool, Any]:
    """What one attempt's outcome means, for the sync and async loops alike: (True, parsed answer),
    or (False, seconds to wait before the next attempt); raises once retrying is over."""
    if exc is not None:
        if attempt > max_retries:
            raise _connection_error(http, exc) from exc
        return False, backoff * 2 ** (attempt - 1)
    assert response is not None
    if not response.is_error:
        return True, call.parse(response)
    delay = retry_delay(response, attempt, backoff)
    if delay is None or attempt > max_retries:
        raise error_from_response(response)
    return False, delay


def send(http: httpx.Client, call: Call, *, max_retries: int, backoff: float) -> Any:
    attempt = 0
    while True:
        attempt += 1
        try:
            response, error = http.request(call.method, call.path, **call.kwargs), None
        except httpx.TransportError as exc:
            response, error = None, exc
        done, value = _settle(http, call, attempt, max_retries=max_retries, backoff=backoff,
                              response=response, exc=error)
        if done:
            return value
        time.sleep(value)


async def send_async(http: httpx.AsyncClient, call: Call, *, max_retries: int, backoff: float) -> Any:
    attempt = 0
    while True:
        attempt += 1
        try:
            response, error = await http.request(call.method, call.path, **call.kwargs), None
        except httpx.TransportError as exc:
            response, error = None, exc
        done, value = _settle(http, call, attempt, max_retries=max_retries, backoff=backoff,
                              response=response, exc=error)
        if done:
            return value
        await asyncio.sleep(value)
