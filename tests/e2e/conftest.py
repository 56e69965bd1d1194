"""The `stack` fixture of the end-to-end tests: one per test module, on each stack configured."""

from __future__ import annotations

import os

import pytest

from kronos_jobs.core.settings import Settings
from kronos_jobs.testing.checkpoints import save_tiny_checkpoint
from kronos_jobs.testing.services import TEST_DATABASE_URL_ENV, TEST_REDIS_URL_ENV, claim_redis_db, require_service
from tests.e2e.harness import REPO, WORKER_ENV, Stack, fresh_schema


@pytest.fixture(scope="module", params=["embedded", pytest.param("redis+postgresql", marks=pytest.mark.integration)])
def stack(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"e2e-{request.param.replace('+', '-')}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KRONOS_") or k.startswith("KRONOS_TEST_")}
    env.update(WORKER_ENV, KRONOS_DATA_DIR=str(root / "kronos-data"), KRONOS_MODEL_DIRS=str(root / "models"),
               PYTHONPATH=str(REPO))  # the worker resolves the local checkpoint again: it needs the same roots
    cleanup = []
    if request.param == "redis+postgresql":
        redis_url = claim_redis_db(require_service(TEST_REDIS_URL_ENV))
        database_url, drop = fresh_schema(require_service(TEST_DATABASE_URL_ENV))
        env.update(KRONOS_BROKER_URL=redis_url, KRONOS_DATABASE_URL=database_url)
        cleanup += [drop, lambda: __import__("redis").Redis.from_url(redis_url).flushdb()]
    settings = Settings(**{k[len("KRONOS_"):].lower(): v for k, v in env.items()
                           if k.startswith("KRONOS_") and not k.startswith("KRONOS_TEST_")})
    from kronos_jobs.db.migrate import upgrade

    upgrade(settings)
    stack = Stack(settings, env, root / "worker.log")
    stack.checkpoint = save_tiny_checkpoint(root / "models" / "tiny-model")
    stack.start_worker()
    yield stack
    stack.stop_worker()
    for step in reversed(cleanup):
        step()
