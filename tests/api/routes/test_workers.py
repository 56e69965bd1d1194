"""GET /v1/workers: live workers and those seen recently, with device metadata."""

from __future__ import annotations

from datetime import timedelta

from fastapi.testclient import TestClient
from sqlalchemy import update
from sqlalchemy.orm import Session

from kronos_jobs.crud import workers as worker_crud
from kronos_jobs.db.models import Worker, utcnow
from kronos_jobs.testing.factories import GPU_FALLBACK
from kronos_jobs.testing.factories import make_worker as register


def test_list_workers_marks_live_and_recent(client: TestClient, db: Session) -> None:
    register(db, "cpu@a", "cpu", "cpu")
    register(db, "gpu@a", "gpu", "cpu", warning=GPU_FALLBACK)
    register(db, "cpu@old", "cpu", "cpu")
    worker_crud.mark_worker_stopped(db, worker_id="gpu@a")
    db.execute(update(Worker).where(Worker.id == "cpu@old").values(heartbeat_at=utcnow() - timedelta(days=2)))
    db.commit()

    workers = {w["id"]: w for w in client.get("/v1/workers").json()["data"]}
    assert set(workers) == {"cpu@a", "gpu@a"}
    assert workers["cpu@a"]["live"] is True and workers["gpu@a"]["live"] is False
    assert workers["gpu@a"]["device_warning"] == GPU_FALLBACK and workers["gpu@a"]["pool"] == "gpu"
    assert workers["cpu@a"]["heartbeat_at"].endswith("Z")

    everyone = client.get("/v1/workers", params={"seen_within": 7 * 86_400}).json()["data"]
    assert {w["id"] for w in everyone} == {"cpu@a", "gpu@a", "cpu@old"}
