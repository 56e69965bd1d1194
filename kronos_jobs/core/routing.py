"""Which queue a job goes to, and why: a pure function of the request and the live workers.

The API, the CLI and `jobs/submit.py` all call `choose_queue`; the reason is stored on the job so a
user can see why a job went where it went. No broker and no database here: the caller passes the
live workers (rows of `crud.workers.live_workers`, or anything with a `queues` attribute).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from kronos_jobs.core.names import DevicePreference, JobKind, Pool, Queue, queue_for


def _queues_of(worker: Any) -> set[str]:
    """The queue names a worker actually consumes (a fallen-back GPU worker lists CPU queues only)."""
    queues = worker.get("queues") if isinstance(worker, dict) else getattr(worker, "queues", None)
    return {Queue(q).value if isinstance(q, Queue) else str(q) for q in (queues or ())}


def consumers_of(queue: Queue, live_workers: Iterable[Any]) -> int:
    """How many live workers consume `queue`."""
    return sum(1 for worker in live_workers if queue.value in _queues_of(worker))


def slots_of(queue: Queue, live_workers: Iterable[Any]) -> int:
    """How many tasks of `queue` the live workers can run at once (their prefork concurrency)."""
    total = 0
    for worker in live_workers:
        if queue.value in _queues_of(worker):
            concurrency = worker.get("concurrency") if isinstance(worker, dict) else getattr(worker, "concurrency", None)
            total += max(1, int(concurrency or 1))
    return total


def choose_queue(kind: JobKind | str, device: DevicePreference | str, live_workers: Iterable[Any]) -> tuple[Queue, str]:
    """Return the queue for a job of `kind` asking for `device`, and a one-sentence reason.

    `gpu` and `cpu` are obeyed even when nobody consumes the queue (the job waits; the reason
    warns). `auto` takes the GPU queue only when a live worker consumes it — a GPU-pool worker that
    fell back to CPU consumes CPU queues only and does not count — else the CPU queue.
    """
    kind, device = JobKind(kind), DevicePreference(device)
    workers = list(live_workers)
    gpu_queue, cpu_queue = queue_for(kind, Pool.GPU), queue_for(kind, Pool.CPU)
    gpu_consumers, cpu_consumers = consumers_of(gpu_queue, workers), consumers_of(cpu_queue, workers)

    if device is DevicePreference.GPU:
        reason = "requested gpu"
        if not gpu_consumers:
            reason += f"; warning: no live worker consumes {gpu_queue.value}, the job waits until one starts"
        return gpu_queue, reason
    if device is DevicePreference.CPU:
        reason = "requested cpu"
        if not cpu_consumers:
            reason += f"; warning: no live worker consumes {cpu_queue.value}, the job waits until one starts"
        return cpu_queue, reason
    if gpu_consumers:
        return gpu_queue, f"auto: {gpu_consumers} live GPU worker(s) consume {gpu_queue.value}"
    reason = f"auto: no live worker consumes {gpu_queue.value}, using CPU"
    if not cpu_consumers:
        reason += f"; warning: no live worker consumes {cpu_queue.value} either, the job waits until one starts"
    return cpu_queue, reason
