"""The client's retry policy and typed errors, on an httpx mock transport (no server)."""

from __future__ import annotations

import httpx
import pytest

import kronos_jobs.client as client_module
from kronos_jobs.client import Client, ConflictError, InvalidRequestError, RateLimitedError, UnavailableError
from kronos_jobs.client.transport import retry_delay


def mock_client(answers, seen, **options) -> Client:
    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answers.pop(0)

    http = httpx.Client(base_url="http://api.test", transport=httpx.MockTransport(handler),
                        headers={"Authorization": "Bearer k-1"})
    return Client(http=http, backoff=0.0, **options)


def envelope(status: int, code: str, field: str | None = None, headers=None) -> httpx.Response:
    details = [{"field": field, "message": "bad"}] if field else []
    return httpx.Response(status, json={"error": {"code": code, "message": f"{code}!", "details": details}},
                          headers=headers)


def test_429_and_503_are_retried_honouring_retry_after(monkeypatch):
    slept = []
    monkeypatch.setattr("time.sleep", slept.append)
    seen = []
    client = mock_client([envelope(429, "rate_limited", headers={"Retry-After": "2"}),
                          envelope(503, "unavailable", headers={"Retry-After": "0.5"}),
                          httpx.Response(200, json={"data": [{"id": "kronos-mini"}]})], seen)
    assert client.models() == [{"id": "kronos-mini"}]
    assert slept == [2.0, 0.5] and len(seen) == 3
    assert seen[0].headers["Authorization"] == "Bearer k-1"


def test_retries_run_out_into_a_typed_error(monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: None)
    client = mock_client([envelope(503, "unavailable") for _ in range(3)], [], max_retries=2)
    with pytest.raises(UnavailableError) as caught:
        client.models()
    assert caught.value.status_code == 503 and caught.value.code == "unavailable"


def test_a_retry_after_too_long_is_not_waited_for():
    response = httpx.Response(429, headers={"Retry-After": "3600"})
    assert retry_delay(response, 1, 0.5) is None
    assert retry_delay(httpx.Response(429, headers={"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}), 1, 0.5) == 0.0
    assert retry_delay(httpx.Response(422), 1, 0.5) is None
    assert retry_delay(None, 3, 0.5) == 2.0  # a connection error backs off


@pytest.mark.parametrize("status, code, cls", [(422, "invalid_request", InvalidRequestError),
                                               (409, "conflict", ConflictError),
                                               (429, "rate_limited", RateLimitedError)])
def test_errors_carry_code_message_and_details(monkeypatch, status, code, cls):
    monkeypatch.setattr("time.sleep", lambda s: None)
    client = mock_client([envelope(status, code, field="quantiles")] * 5, [], max_retries=0)
    with pytest.raises(cls) as caught:
        client.job("abc")
    assert (caught.value.code, caught.value.message) == (code, f"{code}!")
    assert caught.value.details == [{"field": "quantiles", "message": "bad"}]


def test_submissions_carry_an_idempotency_key(monkeypatch):
    import pandas as pd

    seen = []
    job = {"id": "j1", "kind": "forecast", "state": "queued", "progress": {"done": 0, "total": 0}}
    client = mock_client([httpx.Response(202, json=job)], seen)
    bars = pd.DataFrame({"symbol": ["A"], "timestamp": [pd.Timestamp("2024-01-02", tz="UTC")], "open": [1.0],
                         "high": [1.0], "low": [1.0], "close": [1.0]})
    assert client.forecast(bars, model="random:mini").id == "j1"
    assert len(seen[0].headers["Idempotency-Key"]) == 32


def test_api_key_comes_from_the_argument_or_kronos_api_key(monkeypatch):
    from kronos_jobs.core.settings import get_settings

    monkeypatch.setenv("KRONOS_API_KEY", "from-env")
    get_settings.cache_clear()
    try:
        assert Client("http://x").http.headers["Authorization"] == "Bearer from-env"
        assert Client("http://x", api_key="given").http.headers["Authorization"] == "Bearer given"
    finally:
        get_settings.cache_clear()


def test_exported_members():
    assert sorted(client_module.__all__) == [
        "ApiConnectionError", "ApiError", "AsyncClient", "AsyncJob", "AuthenticationError", "BadRequestError",
        "Client", "ClientError", "ConflictError", "InvalidRequestError", "Job", "JobTimeout", "NotFoundError",
        "PermissionDeniedError", "RateLimitedError", "ServerError", "UnavailableError"]
