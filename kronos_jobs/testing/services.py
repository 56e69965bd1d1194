"""The external services tests and benches use (PostgreSQL, Redis), by one rule.

A test that needs PostgreSQL or Redis reads its URL from KRONOS_TEST_DATABASE_URL /
KRONOS_TEST_REDIS_URL (`require_service`). Unset: the test is skipped, except under CI=true where it
fails (CI must never go green by skipping). Set but not answering: the test fails. Worker processes
get a Redis DB of their own from `claim_redis_db`.
"""

from __future__ import annotations

import os
import uuid

import psycopg
import pytest
import redis
from sqlalchemy.engine import make_url

TEST_DATABASE_URL_ENV = "KRONOS_TEST_DATABASE_URL"  # e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test
TEST_REDIS_URL_ENV = "KRONOS_TEST_REDIS_URL"  # e.g. redis://127.0.0.1:6379/15
REDIS_CLAIM_KEY = "kronos-test-claim"

_probed: dict[str, str | None] = {}  # url -> None when it answered, else why not


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def _probe(url: str) -> str | None:
    """None when the service at `url` answers within a few seconds, else the reason."""
    try:
        if url.startswith("postgres"):
            parsed = make_url(url)
            with psycopg.connect(host=parsed.host, port=parsed.port or 5432, user=parsed.username,
                                 password=parsed.password, dbname=parsed.database, connect_timeout=5):
                pass
        elif url.startswith(("redis://", "rediss://")):
            redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5).ping()
    except Exception as exc:  # any failure to answer counts; the message says which
        return f"{type(exc).__name__}: {exc}"
    return None


def require_service(url_env_var: str) -> str:
    """The URL in `url_env_var`, checked once per session to answer; skip or fail per the rule above."""
    url = os.environ.get(url_env_var, "").strip()
    if not url:
        if in_ci():
            pytest.fail(f"{url_env_var} is not set, and CI=true requires this service", pytrace=False)
        pytest.skip(f"{url_env_var} is not set")
    if url not in _probed:
        _probed[url] = _probe(url)
    if _probed[url] is not None:
        pytest.fail(f"{url_env_var}={url} does not answer: {_probed[url]}", pytrace=False)
    return url


def claim_redis_db(base_url: str, ttl_seconds: int = 3600) -> str:
    """A Redis URL on a DB number no one else uses, claimed atomically for this session.

    Test sessions of several engineers share one Redis server; a worker consuming another session's
    queue would take its messages (and drop them: no such job in its database). An empty DB is
    claimed with SET NX before any worker touches it, so two sessions never pick the same one; the
    DB of `base_url` itself is skipped because plain tests use it directly. Release with FLUSHDB.
    """
    base = make_url(base_url)
    token = uuid.uuid4().hex
    for number in range(14, 0, -1):
        if str(number) == str(base.database or "0"):
            continue
        url = str(base.set(database=str(number)))
        client = redis.Redis.from_url(url)
        if client.dbsize() == 0 and client.set(REDIS_CLAIM_KEY, token, nx=True, ex=ttl_seconds):
            if client.dbsize() == 1:
                return url
            client.delete(REDIS_CLAIM_KEY)  # someone else's keys arrived meanwhile; keep looking
    raise RuntimeError(f"no free Redis DB on {base_url}")
