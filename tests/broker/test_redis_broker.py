"""Our Redis transport: handing unacknowledged messages back while Redis is down fails softly
instead of stopping the worker (the close path Celery takes on a lost connection)."""

from __future__ import annotations

import logging

import pytest
import redis as redis_py
from kombu.transport import redis as kombu_redis

from kronos_jobs.broker.redis_broker import QoS


@pytest.mark.parametrize("error", [redis_py.exceptions.ConnectionError("Connection refused"),
                                   AttributeError("'NoneType' object has no attribute 'pipeline'"),
                                   OSError(111, "Connection refused")])
def test_restoring_unacked_messages_while_redis_is_down_is_logged_not_raised(monkeypatch, caplog, error):
    def fail(self, stderr=None):
        raise error

    monkeypatch.setattr(kombu_redis.QoS, "restore_unacked_once", fail)
    qos = QoS.__new__(QoS)
    qos._delivered = {"tag-1": object(), "tag-2": object()}
    with caplog.at_level(logging.WARNING, logger="kronos_jobs.broker.redis_broker"):
        assert qos.restore_unacked_once() is None
    assert "could not hand 2 unacknowledged message(s) back" in caplog.text


def test_other_errors_still_surface(monkeypatch):
    def fail(self, stderr=None):
        raise ValueError("a bug, not an outage")

    monkeypatch.setattr(kombu_redis.QoS, "restore_unacked_once", fail)
    qos = QoS.__new__(QoS)
    qos._delivered = {}
    with pytest.raises(ValueError):
        qos.restore_unacked_once()
