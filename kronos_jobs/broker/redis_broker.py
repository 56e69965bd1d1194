"""kombu's Redis transport, surviving the loss of Redis while messages are unacknowledged.

When the connection to Redis drops, Celery's consumer closes the connection before reconnecting,
and closing a channel first tries to push its unacknowledged messages back to Redis. With Redis
gone, kombu (5.7) fails there with an AttributeError from a connection it has already torn down
(the same family as celery#10205 and kombu#2007), which escapes Celery's reconnect path and stops
the whole worker: seen in tests/e2e/test_outage_e2e.py about one run in three. Here that restore
fails softly: the messages stay in Redis's unacked set (restored after the visibility timeout),
their jobs stay in the database, and the reconciler re-sends them (kronos_jobs/jobs/recovery.py).
"""

from __future__ import annotations

import logging

from kombu.transport import redis

logger = logging.getLogger(__name__)

# Used as `broker_transport` with redis:// and rediss:// broker URLs (celery_app.py).
TRANSPORT_PATH = "kronos_jobs.broker.redis_broker:Transport"


class QoS(redis.QoS):
    def restore_unacked_once(self, stderr=None):
        try:
            return super().restore_unacked_once(stderr)
        except (AttributeError, *redis.get_redis_error_classes().connection_errors) as exc:
            logger.warning("could not hand %d unacknowledged message(s) back to the broker while its connection "
                           "is down (%s: %s); their jobs are re-sent by the reconciler",
                           len(self._delivered), type(exc).__name__, exc)
            return None


class Channel(redis.Channel):
    QoS = QoS


class Transport(redis.Transport):
    Channel = Channel
