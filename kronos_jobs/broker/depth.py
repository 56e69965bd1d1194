"""Messages waiting on the broker, by queue and priority: what /metrics reports as queue depth.

Read straight from the broker on each scrape, so it counts what workers will actually take next
(a bulk job's next chunk included), not what the database believes. kombu's Redis transport keeps
one list per priority step (`<queue>` for step 0, `<queue>\\x06\\x16<step>` for the others); our
filesystem broker names each message file after its step (broker/filesystem_broker.py).
Messages a worker has already reserved are not waiting and are not counted.
"""

from __future__ import annotations

import os
from collections import Counter

from kronos_jobs.core.names import Queue
from kronos_jobs.core.settings import Settings
from kronos_jobs.core.workload import PRIORITY_MAX

REDIS_PRIORITY_SEP = "\x06\x16"  # kombu's Redis transport default `sep`
TIMEOUT_SECONDS = 2.0


def step_priority(step: int) -> int:
    """The job priority a broker step carries (core/workload.py broker_priority, inverted)."""
    return PRIORITY_MAX - step


def queue_depths(settings: Settings) -> dict[tuple[str, int], int]:
    """{(queue, job priority): waiting messages} for every queue in names.Queue; raises when the
    broker cannot be read."""
    url = settings.effective_broker_url
    if url.startswith("filesystem://"):
        return _filesystem_depths(settings)
    if url.startswith(("redis://", "rediss://")):
        return _redis_depths(url)
    raise ValueError(f"queue depth is not available for broker {url.split(':', 1)[0]!r}")


def _filesystem_depths(settings: Settings) -> dict[tuple[str, int], int]:
    from kronos_jobs.broker.celery_app import broker_folders
    from kronos_jobs.broker.filesystem_broker import message_step

    folder = broker_folders(settings)["data"]
    names = {q.value for q in Queue}
    counts: Counter[tuple[str, int]] = Counter()
    for filename in os.listdir(folder) if folder.is_dir() else ():
        step = message_step(filename)
        queue = filename.partition(".")[2][:-len(".msg")]
        if step is not None and queue in names:
            counts[(queue, step_priority(step))] += 1
    return dict(counts)


def _redis_depths(url: str) -> dict[tuple[str, int], int]:
    import redis  # only where Redis is the broker

    client = redis.Redis.from_url(url, socket_timeout=TIMEOUT_SECONDS, socket_connect_timeout=TIMEOUT_SECONDS)
    try:
        keys = [(q.value, step) for q in Queue for step in range(PRIORITY_MAX + 1)]
        with client.pipeline(transaction=False) as pipe:
            for queue, step in keys:
                pipe.llen(queue if step == 0 else f"{queue}{REDIS_PRIORITY_SEP}{step}")
            lengths = pipe.execute()
    finally:
        client.close()
    return {(queue, step_priority(step)): int(n) for (queue, step), n in zip(keys, lengths) if n}
