"""Per-key request rate limits and per-tenant in-flight job quotas: both answer 429 with Retry-After.

Rates are counted by the `limits` package (sliding window counter) in Redis when the broker is
Redis, so every API process shares one count, and in process memory otherwise (the embedded default
runs one API process). If Redis does not answer, the request is let through and a warning logged:
a broker outage must not also stop reads and the submits the service accepts while it lasts.
"""

from __future__ import annotations

import logging
import math
import time

from limits import RateLimitItem, parse_many
from limits.storage import MemoryStorage, Storage, storage_from_string
from limits.strategies import SlidingWindowCounterRateLimiter
from starlette.exceptions import HTTPException

from kronos_jobs.core.settings import Settings

logger = logging.getLogger(__name__)

STORAGE_WARNING_SECONDS = 60.0  # at most one "rate-limit storage down" warning per this many seconds
# A Redis that hangs (not refusing, just silent) must not hold every request: give up quickly.
REDIS_TIMEOUT_SECONDS = 0.5


class TooManyRequests(HTTPException):
    """429 with the seconds to wait in Retry-After (api/errors.py keeps the headers)."""

    def __init__(self, message: str, retry_after: float):
        super().__init__(429, message, headers={"Retry-After": str(max(1, math.ceil(retry_after)))})


def rate_limit_storage(settings: Settings) -> Storage:
    broker = settings.effective_broker_url
    if broker.startswith(("redis://", "rediss://")):
        return storage_from_string(broker, socket_timeout=REDIS_TIMEOUT_SECONDS,
                                   socket_connect_timeout=REDIS_TIMEOUT_SECONDS)
    return MemoryStorage()


class KeyRateLimiter:
    """KRONOS_RATE_LIMIT per API key."""

    def __init__(self, rate: str, storage: Storage):
        self.items: list[RateLimitItem] = parse_many(rate)
        self.rate = rate
        self.limiter = SlidingWindowCounterRateLimiter(storage)
        self._warned_at = 0.0

    @classmethod
    def from_settings(cls, settings: Settings) -> "KeyRateLimiter | None":
        return cls(settings.rate_limit, rate_limit_storage(settings)) if settings.rate_limit else None

    def hit(self, key_id: str) -> None:
        """Count one request of `key_id`; TooManyRequests when one of the rates is used up."""
        for item in self.items:
            try:
                allowed = self.limiter.hit(item, "key", key_id)
            except Exception as exc:  # storage (Redis) unreachable: serve, and say so in the log
                now = time.monotonic()
                if now - self._warned_at > STORAGE_WARNING_SECONDS:
                    self._warned_at = now
                    logger.warning("rate limits not enforced: their storage does not answer (%s)", type(exc).__name__)
                return
            if not allowed:
                reset = self.limiter.get_window_stats(item, "key", key_id).reset_time
                raise TooManyRequests(f"rate limit of {item} for this API key reached (KRONOS_RATE_LIMIT={self.rate})",
                                      retry_after=reset - time.time())
