"""Worker bootstrap: device resolution per pool (mocked CUDA), registration, per-child threads, and
the rule that the parent never initialises CUDA."""

from __future__ import annotations

import pytest
import torch

from kronos_jobs.core.names import POOL_QUEUES, Pool
from kronos_jobs.runtime import worker
from model.device import CUDA_UNAVAILABLE_WARNING

CPU_QUEUES = [q.value for q in POOL_QUEUES[Pool.CPU]]
GPU_QUEUES = [q.value for q in POOL_QUEUES[Pool.GPU]]


@pytest.fixture
def no_cuda_init(monkeypatch):
    """Fail the test if anything initialises CUDA in this (parent) process."""

    def forbidden(*_args, **_kwargs):
        raise AssertionError("CUDA was initialised in the worker parent")

    monkeypatch.setattr(torch.cuda, "init", forbidden)
    monkeypatch.setattr(torch.cuda, "_lazy_init", forbidden)
    monkeypatch.setattr(torch.cuda, "get_device_properties", forbidden)
    monkeypatch.setattr(torch.cuda, "get_device_name", forbidden)


@pytest.fixture
def cuda(monkeypatch, no_cuda_init):
    """Pretend the NVML check sees `count` GPUs (0 = none)."""

    def set_count(count: int):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: count > 0)
        monkeypatch.setattr(torch.cuda, "device_count", lambda: count)
        monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)

    return set_count


@pytest.fixture(autouse=True)
def _reset_identity(monkeypatch):
    monkeypatch.setattr(worker, "_identity", None)
    monkeypatch.setattr(worker, "_heartbeat", None)


def test_cpu_pool_always_uses_cpu(settings, cuda):
    cuda(1)
    identity = worker.build_identity(Pool.CPU, 2, settings.model_copy(update={"device": "cuda"}))
    assert (identity.device_resolved, identity.device_warning, identity.queues) == ("cpu", None, CPU_QUEUES)
    assert identity.device_requested == "cpu" and identity.device_name  # the CPU model name


@pytest.mark.parametrize("spec, resolved", [("auto", "cuda:0"), ("cuda", "cuda:0"), ("cuda:1", "cuda:1")])
def test_gpu_pool_with_cuda_consumes_gpu_queues(settings, cuda, spec, resolved):
    cuda(2)
    identity = worker.build_identity(Pool.GPU, 1, settings.model_copy(update={"device": spec}))
    assert (identity.device_resolved, identity.device_warning, identity.queues) == (resolved, None, GPU_QUEUES)
    assert identity.worker_id.startswith("gpu@")
    assert not torch.cuda.is_initialized()


@pytest.mark.parametrize(
    "spec, count, reason",
    [
        ("cuda", 0, CUDA_UNAVAILABLE_WARNING.format(spec="cuda")),
        ("cuda:3", 2, "CUDA device index 3 but only 2 CUDA device(s) visible"),
        ("auto", 0, "no CUDA or MPS device is available"),
    ],
)
def test_gpu_pool_fallback_consumes_cpu_queues_and_says_so(settings, cuda, spec, count, reason):
    cuda(count)
    identity = worker.build_identity(Pool.GPU, 1, settings.model_copy(update={"device": spec}))
    assert identity.device_resolved == "cpu" and identity.queues == CPU_QUEUES
    assert reason in identity.device_warning and "consuming CPU queues only" in identity.device_warning


def test_fallback_warning_is_stored_on_the_worker_row(db_settings, cuda, monkeypatch, caplog):
    from kronos_jobs.broker import celery_app
    from kronos_jobs.crud import workers as worker_crud
    from kronos_jobs.db.session import session_scope

    cuda(0)
    settings = db_settings.model_copy(update={"device": "cuda"})
    started = []
    monkeypatch.setattr(celery_app.Celery, "worker_main", lambda self, argv: started.append(argv))
    with caplog.at_level("INFO", logger="kronos_jobs.runtime.worker"):
        worker.start_worker(Pool.GPU, 1, settings)
    worker._heartbeat.stop()

    identity = worker.current_identity()
    with session_scope(settings) as session:
        (row,) = worker_crud.live_workers(session, stale_seconds=60)
        assert (row.id, row.pool, row.queues) == (identity.worker_id, "gpu", CPU_QUEUES)
        assert row.device_resolved == "cpu" and row.device_warning == identity.device_warning
        assert CUDA_UNAVAILABLE_WARNING.format(spec="cuda") in row.device_warning
    argv = started[0]
    assert argv[argv.index("-Q") + 1] == ",".join(CPU_QUEUES) and argv[argv.index("--pool") + 1] == "prefork"
    assert argv[argv.index("-n") + 1] == identity.worker_id and "-E" in argv
    registered = [r for r in caplog.records if "registered" in r.getMessage()]
    assert len(registered) == 1 and "warning=" in registered[0].getMessage()
    assert any(r.levelname == "WARNING" and "consuming CPU queues only" in r.getMessage() for r in caplog.records)
    assert not torch.cuda.is_initialized()

    worker._on_shutdown()
    with session_scope(settings) as session:
        assert worker_crud.live_workers(session, stale_seconds=60) == []


def test_gpu_worker_parent_bootstrap_never_initialises_cuda(db_settings, cuda, monkeypatch):
    from kronos_jobs.broker import celery_app

    cuda(1)
    monkeypatch.setattr(celery_app.Celery, "worker_main", lambda self, argv: None)
    worker.start_worker(Pool.GPU, 1, db_settings.model_copy(update={"device": "cuda"}))
    worker._heartbeat.stop()
    assert worker.current_identity().queues == GPU_QUEUES
    assert worker.current_identity().device_info["type"] == "cuda"
    assert not torch.cuda.is_initialized()


@pytest.mark.parametrize("concurrency, threads, expected", [(2, None, "cores"), (1, 3, 3)])
def test_each_child_sets_its_torch_threads(settings, concurrency, threads, expected, monkeypatch):
    import os

    settings = settings.model_copy(update={"torch_threads": threads})
    identity = worker.build_identity(Pool.CPU, concurrency, settings)
    want = max(1, (os.cpu_count() or 1) // concurrency) if expected == "cores" else expected
    assert identity.torch_threads == want
    monkeypatch.setattr(worker, "_identity", identity)
    before = torch.get_num_threads()
    try:
        worker._on_process_init()
        assert torch.get_num_threads() == want
    finally:
        torch.set_num_threads(before)


def test_heartbeat_keeps_the_row_fresh(db_settings):
    import time

    from kronos_jobs.crud import workers as worker_crud
    from kronos_jobs.db.session import session_scope

    settings = db_settings.model_copy(update={"heartbeat_seconds": 0.05})
    identity = worker.build_identity(Pool.CPU, 1, settings)
    worker.register(settings, identity)
    with session_scope(settings) as session:
        first = worker_crud.live_workers(session, stale_seconds=60)[0].heartbeat_at
    beat = worker.WorkerHeartbeat(settings, identity)
    beat.start()
    time.sleep(0.3)
    beat.stop()
    with session_scope(settings) as session:
        assert worker_crud.live_workers(session, stale_seconds=60)[0].heartbeat_at > first
