"""Browser safety: untrusted Host names, cross-site state-changing requests (the no-preflight
multipart POST included), the CORS allow-list and the security headers.

These run keyless (the embedded default on loopback), where a browser page is the real threat.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from api.main import create_app
from kronos_jobs.core.settings import Settings
from kronos_jobs.testing.factories import bars_frame, make_forecast_request
from tests.api.conftest import BASE_URL

EVIL = "https://evil.example"
ALLOWED = "https://ops.example.com"


@pytest.fixture
def browser_client(settings: Settings) -> Iterator[TestClient]:
    configured = settings.model_copy(update={"trusted_hosts": ["127.0.0.1", "localhost"], "cors_origins": [ALLOWED]})
    with TestClient(create_app(configured), base_url=BASE_URL) as client:
        yield client


def test_untrusted_host_is_refused(browser_client: TestClient) -> None:
    assert browser_client.get("/v1/jobs", headers={"Host": "attacker.example"}).status_code == 400
    assert browser_client.get("/v1/jobs", headers={"Host": "localhost:8000"}).status_code == 200


def test_cross_site_multipart_post_is_refused_and_stores_nothing(browser_client: TestClient) -> None:
    csv = bars_frame(1, 8).to_csv(index=False).encode()
    response = browser_client.post("/v1/series?freq=5min", files={"file": ("bars.csv", csv, "text/csv")},
                                   headers={"Origin": EVIL, "Sec-Fetch-Site": "cross-site"})
    assert response.status_code == 403 and response.json()["error"]["code"] == "forbidden"
    assert browser_client.get("/v1/series").json()["data"] == []


@pytest.mark.parametrize("headers", [
    {"Origin": EVIL},
    {"Sec-Fetch-Site": "cross-site"},
    {"Sec-Fetch-Site": "same-site"},  # another port or subdomain is another origin
    {"Origin": "null"},  # sandboxed frames, file:// pages
], ids=["origin", "fetch-cross-site", "fetch-same-site", "null-origin"])
@pytest.mark.parametrize("method, path", [("POST", "/v1/jobs/forecast"), ("DELETE", "/v1/series/AAA"),
                                          ("PATCH", "/v1/schedules/x")])
def test_cross_site_state_changes_are_refused(browser_client: TestClient, method, path, headers) -> None:
    kwargs = {"json": make_forecast_request()} if method == "POST" else {}
    assert browser_client.request(method, path, headers=headers, **kwargs).status_code == 403


@pytest.mark.parametrize("headers", [
    {}, {"Sec-Fetch-Site": "same-origin"}, {"Sec-Fetch-Site": "none"}, {"Origin": "http://127.0.0.1"},
    {"Origin": ALLOWED, "Sec-Fetch-Site": "cross-site"},
], ids=["no-browser", "same-origin", "typed-url", "own-origin", "allowed-origin"])
def test_same_origin_allowed_origins_and_non_browsers_pass(browser_client: TestClient, headers) -> None:
    assert browser_client.post("/v1/jobs/forecast", json=make_forecast_request(), headers=headers).status_code == 202


def test_reads_are_not_blocked_but_carry_no_cors_grant(browser_client: TestClient) -> None:
    response = browser_client.get("/v1/jobs", headers={"Origin": EVIL, "Sec-Fetch-Site": "cross-site"})
    assert response.status_code == 200 and "access-control-allow-origin" not in response.headers


def test_cors_allow_list(browser_client: TestClient, settings: Settings) -> None:
    preflight = {"Access-Control-Request-Method": "POST", "Access-Control-Request-Headers": "authorization,content-type"}
    allowed = browser_client.options("/v1/jobs/forecast", headers={"Origin": ALLOWED, **preflight})
    assert allowed.status_code == 200 and allowed.headers["access-control-allow-origin"] == ALLOWED
    refused = browser_client.options("/v1/jobs/forecast", headers={"Origin": EVIL, **preflight})
    assert "access-control-allow-origin" not in refused.headers
    with TestClient(create_app(settings), base_url=BASE_URL) as default:  # no CORS at all by default
        response = default.options("/v1/jobs/forecast", headers={"Origin": ALLOWED, **preflight})
        assert "access-control-allow-origin" not in response.headers


def test_security_headers(browser_client: TestClient) -> None:
    data = browser_client.get("/v1/jobs")
    assert data.headers["x-content-type-options"] == "nosniff"
    assert data.headers["x-frame-options"] == "DENY"
    assert data.headers["referrer-policy"] == "no-referrer"
    assert data.headers["content-security-policy"].startswith("default-src 'none'")
    docs = browser_client.get("/docs")
    assert docs.status_code == 200 and docs.headers["content-security-policy"] == "frame-ancestors 'none'"
    assert browser_client.get("/v1/jobs/nope").headers["x-content-type-options"] == "nosniff"  # errors too
