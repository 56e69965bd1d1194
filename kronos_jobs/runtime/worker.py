"""Worker bootstrap: resolve the device, register, heartbeat, and run a prefork Celery worker.

`kronos-jobs worker --pool cpu|gpu [--concurrency N]` calls `start_worker`. The parent process
resolves its device with NVML-based checks only and never initialises CUDA, loads no model and
runs no kernel: it forks the pool children afterwards, and a CUDA context does not survive a fork.
Each child sets its torch thread count and drops inherited database engines in
`worker_process_init` (which must finish within 4 s, so models load lazily on the first task).

A GPU-pool worker whose device falls back to CPU keeps running, logs a loud WARNING, records the
exact text in its registration, and consumes the CPU queues only: GPU jobs never run on a CPU
unnoticed.

A warm shutdown (SIGTERM, a deploy) raises the drain flag (runtime/drain.py): a running fine-tune then
checkpoints at its next step and gives its job back to the queue (jobs/finetune.py) instead of
holding the shutdown until it finishes or is killed.

    python -m kronos_jobs.runtime.worker --pool cpu --concurrency 2
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import socket
import sys
import threading
from typing import Any

from kronos_jobs.core.identity import WorkerIdentity
from kronos_jobs.core.names import POOL_QUEUES, Pool
from kronos_jobs.core.settings import Settings, get_settings
from kronos_jobs.runtime import drain, metrics

logger = logging.getLogger(__name__)

GPU_POOL_FALLBACK_WARNING = (
    "gpu-pool worker resolved device {spec!r} to cpu ({reason}); consuming CPU queues only ({queues}) "
    "so GPU jobs never run on a CPU unnoticed"
)


_identity: WorkerIdentity | None = None  # set in the parent before the fork; children inherit it
_heartbeat: "WorkerHeartbeat | None" = None


def _on_shutting_down(sig: str | None = None, how: str | None = None, **_: Any) -> None:
    """worker_shutting_down (parent, inside the signal handler): a warm shutdown raises the drain flag.

    A cold shutdown (SIGQUIT) keeps today's behaviour: Celery cancels the tasks and their messages
    are redelivered; the fine-tune resumes from its last periodic checkpoint. Nothing is logged here
    (logging takes locks the interrupted code may hold); the child logs the give-back.
    """
    if how == "Warm":
        drain.request_drain()


def _describe(device, info_allowed: bool) -> dict[str, Any]:
    """Device metadata without initialising CUDA: device_info() only where it is safe."""
    import torch

    from model.device import device_info

    if info_allowed:
        return device_info(device)
    info: dict[str, Any] = {"type": device.type, "index": device.index, "name": None,
                            "torch_version": torch.__version__, "cuda_version": torch.version.cuda}
    try:  # NVML names the GPU without creating a CUDA context
        import pynvml

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(device.index or 0)
        name = pynvml.nvmlDeviceGetName(handle)
        info["name"] = name.decode() if isinstance(name, bytes) else name
        info["total_memory"] = int(pynvml.nvmlDeviceGetMemoryInfo(handle).total)
    except Exception:  # no pynvml / no driver: the name is filled in by the first job's metadata
        pass
    return info


def resolve_worker_device(pool: Pool | str, settings: Settings) -> tuple[str, Any, str | None, list[str]]:
    """(device spec, torch.device, warning or None, queues) for a worker of `pool`; never inits CUDA."""
    from model.device import resolve_device

    pool = Pool(pool)
    spec = "cpu" if pool is Pool.CPU else settings.device
    device, warning = resolve_device(spec)
    if pool is Pool.CPU or device.type != "cpu":
        return spec, device, warning, [q.value for q in POOL_QUEUES[pool]]
    queues = [q.value for q in POOL_QUEUES[Pool.CPU]]
    reason = warning or ("KRONOS_DEVICE=cpu" if spec == "cpu" else "no CUDA or MPS device is available")
    return spec, device, GPU_POOL_FALLBACK_WARNING.format(spec=spec, reason=reason, queues=", ".join(queues)), queues


def build_identity(pool: Pool | str, concurrency: int | None, settings: Settings) -> WorkerIdentity:
    pool = Pool(pool)
    concurrency = concurrency or settings.worker_concurrency
    spec, device, warning, queues = resolve_worker_device(pool, settings)
    info = _describe(device, info_allowed=device.type != "cuda")
    hostname, pid = socket.gethostname(), os.getpid()
    return WorkerIdentity(
        worker_id=f"{pool.value}@{hostname}-{pid}", hostname=hostname, pid=pid, pool=pool.value, queues=queues,
        concurrency=concurrency, torch_threads=settings.effective_torch_threads(concurrency),
        device_requested=spec, device_resolved=str(device), device_name=info.get("name"),
        device_warning=warning, device_info=info,
    )


def current_identity() -> WorkerIdentity:
    """This worker's identity, built once by `start_worker` before the pool forks.

    Only the tasks read it, and hand it to the job services; a process that is not a worker has
    none, rather than one made up here."""
    if _identity is None:
        raise RuntimeError("no worker identity: this process was not started by start_worker")
    return _identity


class WorkerHeartbeat(threading.Thread):
    """Refreshes the worker's row so routing and /readyz count it as live."""

    def __init__(self, settings: Settings, identity: WorkerIdentity):
        super().__init__(name="worker-heartbeat", daemon=True)
        self.settings, self.identity = settings, identity
        self._stop_event = threading.Event()

    def run(self) -> None:
        from sqlalchemy.orm import Session
        from sqlalchemy.pool import NullPool

        from kronos_jobs.crud import workers as worker_crud
        from kronos_jobs.db.session import make_engine

        # Its own engine, outside the process-wide engine cache: the parent forks pool children
        # while this thread runs, and a child must never inherit a cache lock this thread held.
        engine = make_engine(self.settings.effective_database_url, poolclass=NullPool)
        while not self._stop_event.wait(self.settings.heartbeat_seconds):
            try:
                with Session(engine) as session, session.begin():
                    if not worker_crud.heartbeat_worker(session, worker_id=self.identity.worker_id):
                        register(self.settings, self.identity, session=session)
            except Exception as exc:  # keep beating through a database hiccup
                logger.warning("worker %s: heartbeat failed (%s)", self.identity.worker_id, exc)
        engine.dispose()

    def stop(self) -> None:
        self._stop_event.set()


def register(settings: Settings, identity: WorkerIdentity, session=None) -> None:
    from kronos_jobs.crud import workers as worker_crud
    from kronos_jobs.db.session import session_scope

    fields = dataclasses.asdict(identity)
    if session is not None:
        worker_crud.register_worker(session, **fields)
        return
    with session_scope(settings) as own:
        worker_crud.register_worker(own, **fields)


def _on_process_init(**_: Any) -> None:
    """worker_process_init: cheap per-child set-up only (Celery allows 4 s; no model loading)."""
    import torch

    from kronos_jobs.db.session import dispose_engines

    identity = current_identity()
    # N children x all cores each would oversubscribe the CPU and collapse throughput.
    torch.set_num_threads(identity.torch_threads)
    dispose_engines()  # never share the parent's database sockets; this child builds its own
    logger.debug("worker child %d: torch threads %d", os.getpid(), identity.torch_threads)


def _on_shutdown(**_: Any) -> None:
    """worker_shutdown (parent): stop heartbeating and say so, so routing stops counting us at once."""
    from kronos_jobs.crud import workers as worker_crud
    from kronos_jobs.db.session import session_scope

    if _heartbeat is None or _identity is None:
        return
    _heartbeat.stop()
    try:
        with session_scope(_heartbeat.settings) as session:
            worker_crud.mark_worker_stopped(session, worker_id=_identity.worker_id)
        logger.info("worker %s stopped", _identity.worker_id)
    except Exception as exc:
        logger.warning("worker %s: could not mark stopped (%s); it goes stale on its own", _identity.worker_id, exc)


def start_worker(pool: Pool | str, concurrency: int | None, settings: Settings) -> None:
    """Resolve the device, register, then run a prefork worker on the pool's queues (blocks)."""
    from celery import signals

    from kronos_jobs.broker.celery_app import make_celery
    from kronos_jobs.core import redaction
    from kronos_jobs.db.migrate import upgrade

    global _identity, _heartbeat
    logging.basicConfig(level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    redaction.install(settings)
    upgrade(settings)  # safe when several workers start at once (advisory / file lock)
    identity = _identity = build_identity(pool, concurrency, settings)
    if identity.device_warning:
        logger.warning("!!! %s !!!", identity.device_warning)
    register(settings, identity)
    drain.open_flag()  # before worker_main forks the pool
    logger.info("worker %s registered: pool=%s queues=%s concurrency=%d device=%s (%s) torch_threads=%d warning=%s",
                identity.worker_id, identity.pool, ",".join(identity.queues), identity.concurrency,
                identity.device_resolved, identity.device_name, identity.torch_threads, identity.device_warning)
    _heartbeat = WorkerHeartbeat(settings, identity)
    _heartbeat.start()
    metrics_dir = metrics.serve(settings)  # before the fork: the children inherit its directory

    signals.worker_process_init.connect(_on_process_init, weak=False, dispatch_uid="kronos_jobs.runtime.worker.init")
    signals.worker_shutting_down.connect(_on_shutting_down, weak=False, dispatch_uid="kronos_jobs.runtime.worker.drain")
    signals.worker_shutdown.connect(_on_shutdown, weak=False, dispatch_uid="kronos_jobs.runtime.worker.shutdown")
    app = make_celery(settings)
    app.set_current()
    # mingle/gossip sync revoked ids and clocks between workers; cancellation lives in the database,
    # and skipping them saves a broker round trip per start on the polling filesystem transport.
    try:
        app.worker_main([
            "worker", "--pool", "prefork", "-c", str(identity.concurrency), "-Q", ",".join(identity.queues),
            "-n", identity.worker_id, "-E", "--loglevel", settings.log_level.upper(), "--without-mingle",
            "--without-gossip",
        ])
    finally:
        metrics.stop(metrics_dir)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m kronos_jobs.runtime.worker", description=__doc__.split("\n")[0])
    parser.add_argument("--pool", choices=[p.value for p in Pool], default=Pool.CPU.value)
    parser.add_argument("--concurrency", type=int, default=None)
    args = parser.parse_args(argv)
    start_worker(Pool(args.pool), args.concurrency, get_settings())


if __name__ == "__main__":
    # Run the imported module, not __main__: tasks read the identity from `kronos_jobs.runtime.worker`.
    from kronos_jobs.runtime.worker import main as module_main

    sys.exit(module_main())
