"""/healthz, /readyz (database, broker, live workers per pool) and /metrics."""

from __future__ import annotations

from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy.orm import Session

from api.main import create_app
from kronos_jobs.core.settings import Settings
from kronos_jobs.crud import jobs as job_crud
from kronos_jobs.testing.factories import GPU_FALLBACK, make_forecast_request
from kronos_jobs.testing.factories import make_worker as register


def test_healthz(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}


def test_readyz_lists_live_workers_per_pool_with_device_and_warning(client: TestClient, db: Session) -> None:
    register(db, "cpu@host-a", "cpu", "cpu")
    register(db, "gpu@host-a", "gpu", "cpu", warning=GPU_FALLBACK)
    response = client.get("/readyz")
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "ready"
    assert body["checks"]["database"]["ok"] and body["checks"]["broker"]["ok"]
    assert [w["id"] for w in body["workers"]["cpu"]] == ["cpu@host-a"]
    gpu = body["workers"]["gpu"][0]
    assert gpu["device_resolved"] == "cpu" and gpu["device_warning"] == GPU_FALLBACK


def test_readyz_is_ready_on_the_embedded_default_before_any_worker_started(settings: Settings) -> None:
    from kronos_jobs.broker.celery_app import broker_folders

    assert not settings.broker_dir.exists()  # a fresh data dir: no worker ever created the folders
    with TestClient(create_app(settings)) as client:
        response = client.get("/readyz")
    assert response.status_code == 200, response.text
    assert response.json()["checks"]["broker"]["ok"]
    assert all(folder.is_dir() for folder in broker_folders(settings).values())


def test_readyz_is_503_when_the_broker_is_down(settings: Settings) -> None:
    broken = settings.model_copy(update={"broker_url": "redis://127.0.0.1:1/0"})
    with TestClient(create_app(broken)) as client:
        response = client.get("/readyz")
        assert client.get("/healthz").status_code == 200
    assert response.status_code == 503
    body = response.json()
    assert body["status"] == "unavailable"
    assert body["checks"]["database"]["ok"] and not body["checks"]["broker"]["ok"]
    assert body["checks"]["broker"]["error"]


def test_readyz_is_503_when_the_database_is_down(client: TestClient, settings: Settings, tmp_path) -> None:
    (tmp_path / "not-a-dir").write_text("")  # the database path runs through a file: unreachable
    client.app.state.settings = settings.model_copy(update={"database_url": f"sqlite:///{tmp_path}/not-a-dir/kronos.db"})
    response = client.get("/readyz")
    assert response.status_code == 503
    assert not response.json()["checks"]["database"]["ok"]
    assert client.get("/healthz").status_code == 200


def test_metrics_prometheus_text(client: TestClient, db: Session) -> None:
    client.post("/v1/jobs/forecast", json=make_forecast_request())
    register(db, "cpu@host-a", "cpu", "cpu")
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(response.text) for s in family.samples}
    queued = client.get("/v1/jobs").json()["data"][0]["queue"]
    assert samples[("kronos_jobs_jobs", (("kind", "forecast"), ("queue", queued), ("state", "queued")))] == 1
    assert samples[("kronos_jobs_jobs", (("kind", "forecast"), ("queue", queued), ("state", "succeeded")))] == 0
    assert samples[("kronos_jobs_queue_depth", (("queue", queued),))] == 1
    assert samples[("kronos_jobs_queue_depth", (("queue", "finetune.gpu"),))] == 0
    assert ("kronos_jobs_jobs", (("kind", "finetune"), ("queue", "forecast.cpu"), ("state", "queued"))) not in samples
    # the instrumentator's HTTP metrics of this API process follow
    assert any(name == "http_requests_total" and dict(labels).get("handler") == "/v1/jobs/forecast"
               for name, labels in samples)
    assert samples[("kronos_jobs_live_workers", (("pool", "cpu"),))] == 1
    assert samples[("kronos_jobs_live_workers", (("pool", "gpu"),))] == 0
    assert samples[("kronos_jobs_live_worker_devices", (("device", "cpu"), ("pool", "cpu")))] == 1
    assert samples[("kronos_jobs_database_up", ())] == 1
    assert "# TYPE kronos_jobs_jobs gauge" in response.text.splitlines()


def test_metrics_queue_depth_by_priority_and_wait_by_kind(client: TestClient, db: Session) -> None:
    client.post("/v1/jobs/forecast", json=make_forecast_request())
    client.post("/v1/jobs/forecast", json=make_forecast_request(priority=2))
    waited = client.post("/v1/jobs/forecast", json=make_forecast_request(priority=2)).json()["id"]
    job_crud.claim_job(db, job_id=waited, owner="w", lease_seconds=60, wait_seconds=1.5)
    db.commit()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(client.get("/metrics").text) for s in family.samples}
    depth = "kronos_jobs_broker_queue_depth"
    assert samples[(depth, (("priority", "6"), ("queue", "forecast.cpu")))] == 1
    assert samples[(depth, (("priority", "2"), ("queue", "forecast.cpu")))] == 2  # the message stays until a worker takes it
    assert samples[(depth, (("priority", "9"), ("queue", "forecast.gpu")))] == 0
    assert samples[("kronos_jobs_broker_up", ())] == 1
    wait = (("kind", "forecast"), ("workload", "interactive"))
    assert samples[("kronos_jobs_queue_wait_seconds_count", wait)] == 1
    assert samples[("kronos_jobs_queue_wait_seconds_sum", wait)] == 1.5
    assert samples[("kronos_jobs_queue_wait_seconds_bucket", (*wait[:1], ("le", "1.0"), *wait[1:]))] == 0
    assert samples[("kronos_jobs_queue_wait_seconds_bucket", (*wait[:1], ("le", "2.5"), *wait[1:]))] == 1
