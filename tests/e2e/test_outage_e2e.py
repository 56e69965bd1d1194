"""Outages of the broker and of the database, on a Redis and a PostgreSQL this test starts itself.

A real CPU worker and a real beat run against them. Each test cuts one service for 20 s while jobs
are on their way, brings it back, and requires every job to finish within 30 s of its return (the
target of the recovery design: the outbox dispatcher in beat, outage retries capped at
KRONOS_RETRY_BACKOFF_MAX), none lost and none run twice. Slow (about a minute each): few of them.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest

from kronos_jobs.cli.sample_data import sample_bars
from kronos_jobs.core.names import JobState
from kronos_jobs.core.settings import Settings
from kronos_jobs.crud import results as result_crud
from kronos_jobs.db.migrate import upgrade
from kronos_jobs.db.session import dispose_engines, session_scope
from kronos_jobs.testing.checkpoints import save_tiny_checkpoint
from kronos_jobs.testing.outage import OwnPostgres, OwnRedis
from tests.e2e.harness import REPO, WORKER_ENV, Stack, finished, read, submit, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

OUTAGE_SECONDS = 20.0
RECOVERY_SECONDS = 30.0
PRED_LEN = 4


@pytest.fixture
def outage_stack(tmp_path) -> Iterator[tuple[Stack, OwnRedis, OwnPostgres]]:
    with OwnRedis(tmp_path / "redis") as redis_server, OwnPostgres() as postgres:
        env = {k: v for k, v in os.environ.items() if not k.startswith("KRONOS_")}
        env.update(WORKER_ENV, KRONOS_DATA_DIR=str(tmp_path / "kronos-data"), KRONOS_MODEL_DIRS=str(tmp_path / "models"),
                   KRONOS_BROKER_URL=redis_server.url, KRONOS_DATABASE_URL=postgres.url,
                   KRONOS_DISPATCH_INTERVAL="1", KRONOS_DISPATCH_AFTER_SECONDS="2", PYTHONPATH=str(REPO))
        settings = Settings(**{k[len("KRONOS_"):].lower(): v for k, v in env.items() if k.startswith("KRONOS_")})
        upgrade(settings)
        stack = Stack(settings, env, tmp_path / "worker.log")
        stack.checkpoint = save_tiny_checkpoint(tmp_path / "models" / "tiny-model")
        stack.start_worker(concurrency=2)
        beat = subprocess.Popen([sys.executable, "-m", "kronos_jobs.cli", "beat"], cwd=REPO, env=env,
                                stdout=open(tmp_path / "beat.log", "ab"), stderr=subprocess.STDOUT,
                                start_new_session=True)
        try:
            yield stack, redis_server, postgres
        finally:
            beat.terminate()
            beat.wait(timeout=30)
            stack.stop_worker()
            dispose_engines()


def submit_jobs(stack: Stack, count: int, seed: int) -> list[str]:
    return [submit(stack, sample_bars(2, 60, seed=seed + i), pred_len=PRED_LEN) for i in range(count)]


def wait_until(stack: Stack, job_ids: list[str], deadline: float) -> None:
    for job_id in job_ids:
        wait_for(stack, job_id, finished, timeout=max(0.5, deadline - time.monotonic()))


def assert_each_ran_once(stack: Stack, job_ids: list[str]) -> None:
    log = stack.log.read_text()
    for job_id in job_ids:
        job = read(stack, job_id)
        assert job.state == JobState.SUCCEEDED.value, (job_id, job.state, job.error)
        with session_scope(stack.settings) as session:
            rows = result_crud.read_forecasts(session, job_id=job_id)
        assert len(rows) == 2 * PRED_LEN and not rows.duplicated(["symbol", "timestamp"]).any()
        # One finish per job: the lease let no second delivery run it to the end.
        assert len(re.findall(rf"job {job_id} succeeded elapsed=", log)) == 1, job_id


def test_a_broker_outage_delays_jobs_by_seconds_and_loses_none(outage_stack):
    stack, redis_server, _ = outage_stack
    before = submit_jobs(stack, 3, seed=0)
    wait_until(stack, before, time.monotonic() + 120)  # the model is loaded and warm

    redis_server.stop()
    cut = time.monotonic()
    during = submit_jobs(stack, 6, seed=10)  # committed; their sends fail: the outbox keeps them
    assert all(read(stack, job_id).sent_at is None for job_id in during)
    time.sleep(max(0.0, cut + OUTAGE_SECONDS - time.monotonic()))
    redis_server.start()
    back = time.monotonic()

    wait_until(stack, during, back + RECOVERY_SECONDS)
    assert_each_ran_once(stack, before + during)
    assert all(read(stack, job_id).sent_at is not None for job_id in during)


def test_a_database_outage_is_ridden_out_by_retries_and_loses_none(outage_stack):
    stack, _, postgres = outage_stack
    before = submit_jobs(stack, 3, seed=0)
    wait_until(stack, before, time.monotonic() + 120)

    during = submit_jobs(stack, 8, seed=20)  # sent; the worker meets them with the database gone
    postgres.stop()
    cut = time.monotonic()
    time.sleep(max(0.0, cut + OUTAGE_SECONDS - time.monotonic()))
    postgres.start()
    back = time.monotonic()

    wait_until(stack, during, back + RECOVERY_SECONDS)
    assert_each_ran_once(stack, before + during)
