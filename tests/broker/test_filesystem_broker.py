"""The embedded broker publishes atomically: a consumer never sees a half-written message."""

from __future__ import annotations

import threading

import kombu

from kronos_jobs.broker.celery_app import broker_folders, make_celery
from kronos_jobs.broker.filesystem_broker import Transport


def test_the_embedded_default_uses_the_atomic_transport(settings):
    with make_celery(settings).connection_for_write() as connection:
        assert isinstance(connection.transport, Transport)


def test_partial_files_are_never_delivered(settings):
    app = make_celery(settings)
    with app.connection_for_write() as connection:
        queue = connection.SimpleQueue("kt.partial")
        (broker_folders(settings)["data"] / ".deadbeef.partial").write_bytes(b"")  # a publish in progress
        queue.put({"n": 1})
        assert queue.get(timeout=2).payload == {"n": 1}
        assert queue.qsize() == 0


def test_concurrent_publish_and_consume_deliver_every_message_whole(settings):
    app = make_celery(settings)
    total, received, errors = 1000, [], []  # kombu's stock transport tears one within a few hundred

    def consume():
        with app.connection_for_read() as connection:
            queue = connection.SimpleQueue("kt.stress")
            try:
                while len(received) < total:
                    message = queue.get(timeout=10)
                    received.append(message.payload["n"])
                    message.ack()
            except Exception as exc:  # an empty or torn message shows up here
                errors.append(exc)

    consumer = threading.Thread(target=consume)
    consumer.start()
    with app.connection_for_write() as connection:
        producer = connection.Producer()
        for n in range(total):
            producer.publish({"n": n, "pad": "x" * 4096}, routing_key="kt.stress", exchange="",
                             declare=[kombu.Queue("kt.stress")])
    consumer.join(timeout=60)
    assert not errors and sorted(received) == list(range(total))
