"""Message priorities: both brokers hand out the highest job priority first, in sending order
within one priority, and report what waits per priority (the queue depth of /metrics)."""

from __future__ import annotations

import uuid

import pytest
import redis

from kronos_jobs.broker.celery_app import make_celery
from kronos_jobs.broker.depth import queue_depths
from kronos_jobs.core.names import TASK_RUN_FORECAST, Queue
from kronos_jobs.core.workload import broker_priority
from kronos_jobs.testing.services import TEST_REDIS_URL_ENV, claim_redis_db, require_service

# (task id, job priority) in sending order: bulk first, as a nightly run queued before a person.
SENT = [("bulk-1", 3), ("bulk-2", 3), ("inter-1", 6), ("bulk-3", 3), ("urgent", 9), ("inter-2", 6), ("low", 0)]
EXPECTED = ["urgent", "inter-1", "inter-2", "bulk-1", "bulk-2", "bulk-3", "low"]


def _send_and_drain(settings, queue: str) -> list[str]:
    app = make_celery(settings)
    for task_id, priority in SENT:
        app.send_task(TASK_RUN_FORECAST, args=[task_id], task_id=task_id, queue=queue,
                      priority=broker_priority(priority))
    received = []
    with app.connection_for_read() as connection:
        simple = connection.SimpleQueue(queue)
        for _ in SENT:
            message = simple.get(timeout=5)
            received.append(message.headers["id"])
            message.ack()
    return received


@pytest.fixture
def redis_settings(settings):
    url = claim_redis_db(require_service(TEST_REDIS_URL_ENV))
    yield settings.model_copy(update={"broker_url": url})
    redis.Redis.from_url(url).flushdb()


def test_filesystem_broker_serves_by_priority_then_sending_order(settings):
    assert _send_and_drain(settings, f"kt.pri.{uuid.uuid4().hex[:8]}") == EXPECTED


@pytest.mark.integration
def test_redis_serves_by_priority_then_sending_order(redis_settings):
    assert _send_and_drain(redis_settings, f"kt.pri.{uuid.uuid4().hex[:8]}") == EXPECTED


def _send(settings, queue: Queue, priorities: list[int]) -> None:
    app = make_celery(settings)
    for priority in priorities:
        task_id = uuid.uuid4().hex
        app.send_task(TASK_RUN_FORECAST, args=[task_id], task_id=task_id, queue=queue.value,
                      priority=broker_priority(priority))


def test_filesystem_queue_depth_by_priority(settings):
    _send(settings, Queue.FORECAST_CPU, [3, 3, 6])
    _send(settings, Queue.FORECAST_GPU, [9])
    assert queue_depths(settings) == {("forecast.cpu", 3): 2, ("forecast.cpu", 6): 1, ("forecast.gpu", 9): 1}


@pytest.mark.integration
def test_redis_queue_depth_by_priority(redis_settings):
    _send(redis_settings, Queue.FORECAST_CPU, [3, 3, 6, 0])
    assert queue_depths(redis_settings) == {("forecast.cpu", 3): 2, ("forecast.cpu", 6): 1, ("forecast.cpu", 0): 1}
