"""API keys over HTTP: 401 without a valid key, 403 without the scope, tenants see only their own
jobs, results, series, schedules and models (another tenant's id is a 404), 429 with Retry-After
for the rate limit and the in-flight quota, and hosts, pids and versions for admin keys only."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from api.main import create_app
from kronos_jobs.core.settings import Settings
from kronos_jobs.crud import api_keys
from kronos_jobs.crud import jobs as job_crud
from kronos_jobs.crud import models as model_crud
from kronos_jobs.crud import results as result_crud
from kronos_jobs.db.session import session_scope
from kronos_jobs.testing.factories import bar_records, make_forecast_request, make_forecast_rows, make_worker
from tests.api.conftest import BASE_URL

FORECAST = "/v1/jobs/forecast"


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_no_key_bad_key_and_revoked_key_are_401(client: TestClient, auth_settings: Settings,
                                                make_key: Callable[..., str]) -> None:
    anonymous = {"Authorization": ""}
    for path in ("/v1/jobs", "/v1/series", "/v1/schedules", "/v1/models", "/v1/workers", "/v1/forecasts?symbols=A"):
        response = client.get(path, headers=anonymous)
        assert response.status_code == 401, (path, response.text)
        assert response.json()["error"]["code"] == "unauthorized"
        assert response.headers["WWW-Authenticate"].startswith("Bearer")
    assert client.post(FORECAST, json=make_forecast_request(), headers=anonymous).status_code == 401
    assert client.get("/v1/jobs", headers=bearer("kj_000000000000_" + "x" * 43)).status_code == 401
    assert client.get("/v1/jobs", headers={"Authorization": "Basic dXNlcjpwYXNz"}).status_code == 401
    assert client.get("/v1/jobs", headers=bearer("x" * 5000)).status_code == 401

    token = make_key(scopes=("read",))
    assert client.get("/v1/jobs", headers=bearer(token)).status_code == 200
    assert client.get("/v1/jobs", headers={"Authorization": "", "X-API-Key": token}).status_code == 200
    with session_scope(auth_settings) as session:
        api_keys.revoke_key(session, key_id=token.split("_")[1])
    assert client.get("/v1/jobs", headers=bearer(token)).status_code == 401


def test_only_the_sha256_of_a_token_is_stored(client: TestClient, db: Session, make_key: Callable[..., str]) -> None:
    token = make_key()
    row = db.get(api_keys.ApiKey, token.split("_")[1])
    assert row.token_sha256 == api_keys.token_digest(token) and token not in repr(vars(row))


def test_scopes(client: TestClient, make_key: Callable[..., str]) -> None:
    reader, submitter = bearer(make_key(scopes=("read",))), bearer(make_key(scopes=("submit",)))
    refused = client.post(FORECAST, json=make_forecast_request(), headers=reader)
    assert refused.status_code == 403 and "submit" in refused.json()["error"]["message"]
    job = client.post(FORECAST, json=make_forecast_request(), headers=submitter)
    assert job.status_code == 202
    assert client.get(f"/v1/jobs/{job.json()['id']}", headers=reader).status_code == 200
    assert client.get("/v1/jobs", headers=submitter).status_code == 403  # submit does not include read
    assert client.get("/metrics", headers=reader).status_code == 403  # counts of every tenant: admin only
    assert client.get("/metrics").status_code == 200  # the fixture's key is an admin key


def test_tenants_see_only_their_own(client: TestClient, db: Session, make_key: Callable[..., str]) -> None:
    acme, other = bearer(make_key("acme", ("read", "submit"))), bearer(make_key("globex", ("read", "submit")))
    job = client.post(FORECAST, json=make_forecast_request(n_symbols=1), headers=acme).json()
    bars = {"freq": "5min", "bars": bar_records(40)}
    assert client.post("/v1/series/SECRET/bars", json=bars, headers=acme).status_code == 200
    schedule = client.post("/v1/schedules", json={"name": "n", "cron": "0 18 * * 1-5", "timezone": "UTC",
                                                  "model": "random:mini", "symbols": ["SECRET"]}, headers=acme)
    assert schedule.status_code == 201, schedule.text
    model_crud.register_model(db, model_id="ft-acme", tenant_id="acme", kind="finetuned", max_context=512)
    db.commit()

    for path in (f"/v1/jobs/{job['id']}", f"/v1/jobs/{job['id']}/result", f"/v1/schedules/{schedule.json()['id']}",
                 f"/v1/schedules/{schedule.json()['id']}/runs", "/v1/series/SECRET/bars", "/v1/models/ft-acme"):
        assert client.get(path, headers=other).status_code == 404, path
        assert client.get(path, headers=acme).status_code in (200, 409), path  # 409: result of a queued job
    for method, path in (("POST", f"/v1/jobs/{job['id']}/cancel"), ("DELETE", "/v1/series/SECRET"),
                         ("PATCH", f"/v1/schedules/{schedule.json()['id']}"), ("DELETE", "/v1/models/ft-acme"),
                         ("POST", f"/v1/schedules/{schedule.json()['id']}/run")):
        kwargs = {"json": {"enabled": False}} if method == "PATCH" else {}
        assert client.request(method, path, headers=other, **kwargs).status_code == 404, path
    assert client.get("/v1/jobs", headers=other).json()["data"] == []
    assert client.get("/v1/series", headers=other).json()["data"] == []
    assert client.get("/v1/schedules", headers=other).json()["data"] == []
    assert "ft-acme" not in [m["id"] for m in client.get("/v1/models", headers=other).json()["data"]]
    job_crud.claim_job(db, job_id=job["id"], owner="w", lease_seconds=60)
    result_crud.write_forecasts(db, job_id=job["id"], tenant_id="acme", rows=make_forecast_rows(["SECRET"]))
    job_crud.finish_job(db, job_id=job["id"], owner="w", state="succeeded")
    db.commit()
    assert client.get("/v1/forecasts?symbol=SECRET", headers=acme).json()["rows"]
    assert client.get("/v1/forecasts?symbol=SECRET", headers=other).json()["rows"] == []
    assert client.get(f"/v1/jobs/{job['id']}/result", headers=other).status_code == 404
    # the same idempotency key in two tenants makes two jobs
    body = make_forecast_request(n_symbols=1)
    first = client.post(FORECAST, json=body, headers={**acme, "Idempotency-Key": "k1"}).json()["id"]
    second = client.post(FORECAST, json=body, headers={**other, "Idempotency-Key": "k1"}).json()["id"]
    assert first != second
    assert job_crud.get_job(db, tenant_id="acme", job_id=first).tenant_id == "acme"
    assert job_crud.get_job(db, tenant_id="globex", job_id=second).tenant_id == "globex"


def test_rate_limit_answers_429_with_retry_after(auth_settings: Settings, make_key: Callable[..., str]) -> None:
    limited = auth_settings.model_copy(update={"rate_limit": "3/minute"})
    with TestClient(create_app(limited), base_url=BASE_URL) as client:
        key, other = bearer(make_key()), bearer(make_key())
        assert [client.get("/v1/jobs", headers=key).status_code for _ in range(3)] == [200] * 3
        refused = client.get("/v1/jobs", headers=key)
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "rate_limited"
        assert 1 <= int(refused.headers["Retry-After"]) <= 60
        assert client.get("/v1/jobs", headers=other).status_code == 200  # per key


def test_in_flight_quota_answers_429_and_frees_up(auth_settings: Settings, make_key: Callable[..., str]) -> None:
    quota = auth_settings.model_copy(update={"max_inflight_jobs": 2})
    with TestClient(create_app(quota), base_url=BASE_URL) as client:
        acme, other = bearer(make_key("acme", ("read", "submit"))), bearer(make_key("globex", ("read", "submit")))
        ids = [client.post(FORECAST, json=make_forecast_request(), headers={**acme, "Idempotency-Key": f"k{i}"}).json()["id"]
               for i in range(2)]
        refused = client.post(FORECAST, json=make_forecast_request(), headers=acme)
        assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
        assert "KRONOS_MAX_INFLIGHT_JOBS" in refused.json()["error"]["message"]
        repeat = client.post(FORECAST, json=make_forecast_request(), headers={**acme, "Idempotency-Key": "k0"})
        assert repeat.status_code == 202 and repeat.json()["id"] == ids[0]  # a repeat creates nothing
        assert client.post(FORECAST, json=make_forecast_request(), headers=other).status_code == 202  # per tenant
        assert client.post(f"/v1/jobs/{ids[0]}/cancel", headers=acme).status_code == 200  # queued -> cancelled
        assert client.post(FORECAST, json=make_forecast_request(), headers=acme).status_code == 202


def test_hosts_pids_and_versions_are_for_admin_keys(client: TestClient, db: Session, make_key: Callable[..., str]) -> None:
    job = client.post(FORECAST, json=make_forecast_request()).json()
    meta = {"worker_id": "cpu@db-host-7", "worker_host": "db-host-7", "worker_pid": 4242, "torch_version": "2.13.0",
            "cuda_version": None, "device_resolved": "cpu", "given_back": [{"worker_pid": 4242, "at": "t"}]}
    job_crud.claim_job(db, job_id=job["id"], owner="db-host-7:4242:ab", lease_seconds=60)
    job_crud.finish_job(db, job_id=job["id"], owner="db-host-7:4242:ab", state="succeeded", execution_metadata=meta)
    make_worker(db, "cpu@db-host-7", "cpu", "cpu")
    db.commit()
    reader = bearer(make_key(scopes=("read",)))

    seen = client.get(f"/v1/jobs/{job['id']}", headers=reader).json()["metadata"]
    assert seen["device_resolved"] == "cpu" and seen["given_back"] == [{"at": "t"}]
    assert "db-host-7" not in str(seen) and "4242" not in str(seen) and "2.13.0" not in str(seen)
    assert client.get(f"/v1/jobs/{job['id']}").json()["metadata"]["worker_host"] == "db-host-7"  # admin

    workers = client.get("/v1/workers", headers=reader).text
    assert "db-host-7" not in workers and '"pid":null' in workers.replace(" ", "")
    assert "db-host-7" in client.get("/v1/workers").text

    assert "db-host-7" not in client.get("/readyz", headers={"Authorization": ""}).text
    assert "db-host-7" in client.get("/readyz").text


def test_readyz_hides_error_texts_without_an_admin_key(auth_settings: Settings, make_key: Callable[..., str]) -> None:
    broken = auth_settings.model_copy(update={"broker_url": "redis://secret-broker.internal:1/0"})
    with TestClient(create_app(broken), base_url=BASE_URL) as client:
        anonymous = client.get("/readyz")
        assert anonymous.status_code == 503
        assert anonymous.json()["checks"]["broker"] == {"ok": False}
        assert "secret-broker" not in anonymous.text
        assert "error" in client.get("/readyz", headers=bearer(make_key())).json()["checks"]["broker"]


def test_keyless_only_for_the_embedded_default_on_loopback(settings: Settings, caplog) -> None:
    assert settings.auth == "auto" and not settings.auth_required
    with caplog.at_level("WARNING", logger="api.main"), TestClient(create_app(settings), base_url=BASE_URL) as client:
        assert client.get("/v1/jobs").status_code == 200
    assert "API keys NOT required" in caplog.text and "loopback" in caplog.text
    with pytest.raises(ValueError, match="KRONOS_AUTH=off"):
        Settings(data_dir=settings.data_dir, auth="off", api_host="0.0.0.0")
    assert Settings(data_dir=settings.data_dir, api_host="0.0.0.0").auth_required
    assert Settings(data_dir=settings.data_dir, database_url="postgresql+psycopg://db/k").auth_required


@pytest.mark.integration
def test_rate_limit_is_shared_by_api_processes_through_redis(auth_settings: Settings, make_key: Callable[..., str]) -> None:
    from kronos_jobs.testing.services import TEST_REDIS_URL_ENV, require_service

    shared = auth_settings.model_copy(update={"rate_limit": "3/minute", "broker_url": require_service(TEST_REDIS_URL_ENV)})
    with TestClient(create_app(shared), base_url=BASE_URL) as one, TestClient(create_app(shared), base_url=BASE_URL) as two:
        key = bearer(make_key())
        assert [one.get("/v1/jobs", headers=key).status_code for _ in range(2)] == [200, 200]
        assert two.get("/v1/jobs", headers=key).status_code == 200
        assert two.get("/v1/jobs", headers=key).status_code == 429  # the third request was counted by the other
        assert one.get("/v1/jobs", headers=key).status_code == 429


def test_rate_limits_are_not_enforced_while_their_redis_is_down_and_the_log_says_so(
        auth_settings: Settings, make_key: Callable[..., str], caplog) -> None:
    down = auth_settings.model_copy(update={"rate_limit": "1/minute", "broker_url": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(down), base_url=BASE_URL) as client, caplog.at_level("WARNING", logger="api.quotas"):
        key = bearer(make_key())
        assert [client.get("/v1/jobs", headers=key).status_code for _ in range(3)] == [200] * 3
    assert "rate limits not enforced" in caplog.text


def test_a_cached_key_lasts_until_its_entry_expires(auth_settings: Settings, make_key: Callable[..., str]) -> None:
    cached = auth_settings.model_copy(update={"auth_cache_seconds": 3600})
    with TestClient(create_app(cached), base_url=BASE_URL) as client:
        token = make_key(scopes=("read",))
        assert client.get("/v1/jobs", headers=bearer(token)).status_code == 200
        with session_scope(auth_settings) as session:
            api_keys.revoke_key(session, key_id=token.split("_")[1])
        # the trade-off KRONOS_AUTH_CACHE_SECONDS buys: this process learns of the revoke at expiry
        assert client.get("/v1/jobs", headers=bearer(token)).status_code == 200
        client.app.state.key_cache.seconds = 0
        client.app.state.key_cache._entries.clear()  # what expiry does
        assert client.get("/v1/jobs", headers=bearer(token)).status_code == 401
        # scopes come from the cache too: still enforced
        reader = make_key(scopes=("read",))
        assert client.get("/v1/jobs", headers=bearer(reader)).status_code == 200
        assert client.post(FORECAST, json=make_forecast_request(), headers=bearer(reader)).status_code == 403
