"""crud.workers: registration upserts, heartbeats, and which workers count as live."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import update

from kronos_jobs.core.names import POOL_QUEUES, Pool
from kronos_jobs.crud import workers as worker_crud
from kronos_jobs.db.models import Worker, utcnow

FALLBACK = "CUDA requested but torch.cuda.is_available() is False; using CPU"


def _register(session, worker_id: str, pool: Pool = Pool.CPU, **overrides):
    fields = dict(
        worker_id=worker_id, hostname="host-a", pid=1234, pool=pool, queues=list(POOL_QUEUES[pool]),
        concurrency=2, torch_threads=1, device_requested="auto", device_resolved="cpu", device_name="x86_64 CPU",
        device_warning=None, device_info={"torch": "2.13.0"},
    )
    fields.update(overrides)
    worker = worker_crud.register_worker(session, **fields)
    session.commit()
    return worker


def _age(session, worker_id: str, seconds: float) -> None:
    session.execute(update(Worker).where(Worker.id == worker_id)
                    .values(heartbeat_at=utcnow() - timedelta(seconds=seconds)))
    session.commit()


def test_register_stores_device_metadata(session):
    worker = _register(session, "gpu@host-a", Pool.GPU, queues=list(POOL_QUEUES[Pool.CPU]),
                       device_requested="cuda", device_warning=FALLBACK)
    session.expunge_all()
    stored = session.get(Worker, "gpu@host-a")
    assert (stored.pool, stored.queues, stored.device_warning) == ("gpu", ["forecast.cpu", "finetune.cpu"], FALLBACK)
    assert stored.device_info == {"torch": "2.13.0"} and stored.stopped_at is None
    assert worker.heartbeat_at.tzinfo is not None


def test_register_again_updates_the_same_row(session):
    _register(session, "cpu@host-a", pid=1)
    worker_crud.mark_worker_stopped(session, worker_id="cpu@host-a")
    session.commit()
    again = _register(session, "cpu@host-a", pid=2)
    assert (again.pid, again.stopped_at) == (2, None)
    assert [w.id for w in worker_crud.list_workers(session)] == ["cpu@host-a"]


def test_live_versus_stale_and_stopped(session):
    for name in ("cpu@a", "cpu@b", "cpu@c"):
        _register(session, name)
    _register(session, "gpu@a", Pool.GPU)
    _age(session, "cpu@b", 120)  # missed its heartbeats: crashed
    worker_crud.mark_worker_stopped(session, worker_id="cpu@c")  # shut down cleanly
    session.commit()
    assert [w.id for w in worker_crud.live_workers(session, stale_seconds=60)] == ["cpu@a", "gpu@a"]
    assert [w.id for w in worker_crud.live_workers(session, stale_seconds=60, pool=Pool.GPU)] == ["gpu@a"]
    assert [w.id for w in worker_crud.live_workers(session, stale_seconds=600, pool="cpu")] == ["cpu@a", "cpu@b"]
    # What routing reads on every submit: the queues of the same live workers.
    assert sorted(w["queues"] for w in worker_crud.live_worker_queues(session, stale_seconds=60)) == sorted(
        [q.value for q in POOL_QUEUES[pool]] for pool in (Pool.CPU, Pool.GPU))


def test_heartbeat_revives_a_stale_worker(session):
    _register(session, "cpu@a")
    _age(session, "cpu@a", 120)
    assert worker_crud.live_workers(session, stale_seconds=60) == []
    assert worker_crud.heartbeat_worker(session, worker_id="cpu@a") is True
    session.commit()
    assert [w.id for w in worker_crud.live_workers(session, stale_seconds=60)] == ["cpu@a"]


def test_heartbeat_of_an_unknown_worker_asks_it_to_register(session):
    assert worker_crud.heartbeat_worker(session, worker_id="ghost@nowhere") is False
    assert worker_crud.mark_worker_stopped(session, worker_id="ghost@nowhere") is False
