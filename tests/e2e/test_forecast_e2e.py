"""End to end with real worker processes: submit through jobs/submit.py, poll the database.

Two stacks: the embedded default (SQLite file + kombu filesystem broker, always) and Redis +
PostgreSQL (when KRONOS_TEST_REDIS_URL and KRONOS_TEST_DATABASE_URL are set; required under CI=true).
Each stack gets a fresh data dir, a fresh PostgreSQL schema and an empty Redis DB number, and one
`python -m kronos_jobs.worker --pool cpu --concurrency 2` worker (a parent and two prefork children).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pandas as pd
import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from kronos_jobs.crud import jobs as job_crud, results as result_crud, workers as worker_crud
from kronos_jobs.db.session import dispose_engines, make_engine, session_scope
from kronos_jobs.jobs.submit import submit_forecast
from kronos_jobs.names import DEFAULT_TENANT, RESULT_COLUMNS, JobState
from kronos_jobs.settings import Settings
from tests.conftest import TEST_DATABASE_URL_ENV, TEST_REDIS_URL_ENV, claim_redis_db, require_service
from tests.jobs.conftest import make_bars, save_tiny_checkpoint

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

REPO = Path(__file__).resolve().parents[2]
WORKER_ENV = {  # short leases so a killed child's job is taken over within seconds
    "KRONOS_LEASE_SECONDS": "3", "KRONOS_HEARTBEAT_SECONDS": "0.5", "KRONOS_WORKER_STALE_SECONDS": "15",
    "KRONOS_MAX_BATCH_SIZE": "2", "KRONOS_TORCH_THREADS": "1", "KRONOS_LOG_LEVEL": "INFO",
}


def _fresh_schema(server_url: str) -> tuple[str, callable]:
    server = make_url(server_url)
    if server.drivername == "postgresql":
        server = server.set(drivername="postgresql+psycopg")
    schema = f"ke2e_{uuid.uuid4().hex[:8]}"
    admin = make_engine(server.render_as_string(hide_password=False), poolclass=NullPool)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))

    def drop():
        dispose_engines()
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()

    url = server.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)
    return url, drop


class Stack:
    """Settings shared by this test process and its worker subprocess, and the worker itself."""

    def __init__(self, settings: Settings, env: dict[str, str], log: Path):
        self.settings, self.env, self.log = settings, env, log
        self.proc: subprocess.Popen | None = None

    def start_worker(self, concurrency: int = 2) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kronos_jobs.worker", "--pool", "cpu", "--concurrency", str(concurrency)],
            cwd=REPO, env=self.env, stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"worker exited early:\n{self.log.read_text()[-3000:]}"
            with session_scope(self.settings) as session:
                if worker_crud.live_workers(session, stale_seconds=15):
                    return
            time.sleep(0.2)
        pytest.fail(f"worker did not register:\n{self.log.read_text()[-3000:]}")

    def stop_worker(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.kill(self.proc.pid, signal.SIGTERM)  # warm shutdown: the parent stops its children
        try:
            self.proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


@pytest.fixture(scope="module", params=["embedded", pytest.param("redis+postgresql", marks=pytest.mark.integration)])
def stack(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"e2e-{request.param.replace('+', '-')}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KRONOS_") or k.startswith("KRONOS_TEST_")}
    env.update(WORKER_ENV, KRONOS_DATA_DIR=str(root / "kronos-data"), KRONOS_MODEL_DIRS=str(root / "models"),
               PYTHONPATH=str(REPO))  # the worker resolves the local checkpoint again: it needs the same roots
    cleanup = []
    if request.param == "redis+postgresql":
        redis_url = claim_redis_db(require_service(TEST_REDIS_URL_ENV))
        database_url, drop = _fresh_schema(require_service(TEST_DATABASE_URL_ENV))
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


def submit(stack, bars, **overrides):
    request = {"model": str(stack.checkpoint), "device": "cpu", "lookback": 48, "pred_len": 4,
               "sampling": {"sample_count": 2, "seed": 3}, "quantiles": [0.5], **overrides}
    with session_scope(stack.settings) as session:
        return submit_forecast(session, stack.settings, tenant_id=DEFAULT_TENANT, request=request, bars=bars,
                               future=None, source="inline").id


def read(stack, job_id):
    with session_scope(stack.settings) as session:
        job = job_crud.get_job(session, tenant_id=DEFAULT_TENANT, job_id=job_id)
        session.expunge(job)
        return job


def wait_for(stack, job_id, predicate, timeout=90.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = read(stack, job_id)
        if predicate(job):
            return job
        time.sleep(0.05)
    pytest.fail(f"job {job_id} stuck in {job.state} ({job.progress_done}/{job.progress_total}):\n"
                f"{stack.log.read_text()[-4000:]}")


def finished(job) -> bool:
    return JobState(job.state).is_terminal


def test_multi_symbol_forecast(stack):
    bars = make_bars({"AAA": 50, "BBB": 70, "CCC": 40}, freq="1h")
    job_id = submit(stack, bars)
    job = wait_for(stack, job_id, finished)

    assert job.state == "succeeded", job.error
    assert (job.progress_done, job.progress_total, job.attempts) == (3, 3, 1)
    with session_scope(stack.settings) as session:
        rows = result_crud.read_forecasts(session, job_id=job_id)
        (registered,) = worker_crud.live_workers(session, stale_seconds=15)
    assert list(rows.columns) == [*RESULT_COLUMNS, "q0.5_open", "q0.5_high", "q0.5_low", "q0.5_close",
                                  "q0.5_volume", "q0.5_amount"]
    assert len(rows) == 12 and rows[list(RESULT_COLUMNS[2:])].notna().all().all()
    for symbol, group in rows.groupby("symbol"):
        last = bars[bars.symbol == symbol].timestamp.max()
        assert list(group.timestamp) == list(pd.date_range(last + pd.Timedelta("1h"), periods=4, freq="1h"))
    meta = job.execution_metadata
    assert meta["worker_id"] == registered.id and meta["worker_pid"] not in (os.getpid(), registered.pid)
    assert meta["device_resolved"] == "cpu" and meta["device_requested"] == "cpu" and meta["queue"] == "forecast.cpu"
    assert meta["torch_threads"] == 1 and meta["model_source"] == "local" and len(meta["model_checksum"]) == 64
    assert meta["seed"] == 3 and meta["timings"]["inference_seconds"] > 0
    assert registered.queues == ["forecast.cpu", "finetune.cpu"] and registered.torch_threads == 1


def test_cancel_queued_and_running(stack):
    # Nobody consumes forecast.gpu here, so this job stays queued until cancelled.
    queued = submit(stack, make_bars({"Q": 40}), device="gpu")
    assert read(stack, queued).routing_reason.startswith("requested gpu; warning")
    with session_scope(stack.settings) as session:
        assert job_crud.request_cancel(session, tenant_id=DEFAULT_TENANT, job_id=queued).state == "cancelled"

    running = submit(stack, make_bars({f"S{i:03d}": 60 for i in range(120)}), pred_len=8,
                     sampling={"sample_count": 4, "seed": 1})
    wait_for(stack, running, lambda j: j.progress_done >= 2)
    with session_scope(stack.settings) as session:
        job_crud.request_cancel(session, tenant_id=DEFAULT_TENANT, job_id=running)
    job = wait_for(stack, running, finished)
    assert job.state == "cancelled" and job.progress_done < job.progress_total
    with session_scope(stack.settings) as session:
        assert result_crud.read_forecasts(session, job_id=running).empty
    job = read(stack, queued)
    assert job.state == "cancelled" and job.attempts == 0 and job.started_at is None


def test_killed_child_job_is_redelivered_and_succeeds_once(stack):
    symbols = {f"K{i:03d}": 60 for i in range(120)}
    job_id = submit(stack, make_bars(symbols), pred_len=8, sampling={"sample_count": 4, "seed": 2})
    job = wait_for(stack, job_id, lambda j: j.state == "running" and j.progress_done >= 2)
    child_pid = int(job.lease_owner.split(":")[1])  # owner = host:pid:token of the child running it
    assert child_pid != stack.proc.pid
    os.kill(child_pid, signal.SIGKILL)

    job = wait_for(stack, job_id, finished, timeout=180)
    assert job.state == "succeeded", job.error
    assert job.attempts == 2 and job.execution_metadata["worker_pid"] != child_pid
    with session_scope(stack.settings) as session:
        rows = result_crud.read_forecasts(session, job_id=job_id)
    assert len(rows) == len(symbols) * 8 and not rows.duplicated(["symbol", "timestamp"]).any()
    assert stack.proc.poll() is None  # the worker parent survived and replaced its child


def test_reconciler_resends_a_message_the_broker_lost(stack):
    from kronos_jobs.celery_app import broker_folders
    from kronos_jobs.jobs.forecast import requeue_stale_jobs

    stack.stop_worker()
    job_id = submit(stack, make_bars({"LOST": 40}))
    # The broker loses the message: Redis restarted without AOF, or the filesystem folder wiped.
    if stack.settings.effective_broker_url.startswith("redis"):
        import redis

        client = redis.Redis.from_url(stack.settings.effective_broker_url)
        for key in client.scan_iter():  # everything but this session's claim on the DB
            if key != b"kronos-test-claim":
                client.delete(key)
    else:
        for message in broker_folders(stack.settings)["data"].glob("*.msg"):
            message.unlink()
    stack.start_worker()
    time.sleep(1.0)
    assert read(stack, job_id).state == "queued"  # nothing will ever deliver it on its own

    with session_scope(stack.settings) as session:
        assert requeue_stale_jobs(session, stack.settings, queued_older_than=0.5) == [job_id]
    job = wait_for(stack, job_id, finished)
    assert job.state == "succeeded" and job.attempts == 1
