"""What the end-to-end tests share: the worker stack they run against and how they submit and wait.

A helper module, not a test module: the `stack` fixture (tests/e2e/conftest.py) builds a `Stack`;
the tests import these functions.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

from kronos_jobs.cli.sample_data import sample_bars
from kronos_jobs.core.names import DEFAULT_TENANT, JobState
from kronos_jobs.core.settings import Settings
from kronos_jobs.crud import jobs as job_crud
from kronos_jobs.crud import workers as worker_crud
from kronos_jobs.db.migrate import upgrade
from kronos_jobs.db.session import dispose_engines, make_engine, session_scope
from kronos_jobs.jobs.finetune_submit import submit_finetune
from kronos_jobs.jobs.submit import submit_forecast
from kronos_jobs.testing.checkpoints import save_tiny_checkpoint
from kronos_jobs.testing.services import TEST_DATABASE_URL_ENV, TEST_REDIS_URL_ENV, claim_redis_db, require_service

REPO = Path(__file__).resolve().parents[2]
WORKER_ENV = {  # short leases so a killed child's job is taken over within seconds
    "KRONOS_LEASE_SECONDS": "3", "KRONOS_HEARTBEAT_SECONDS": "0.5", "KRONOS_WORKER_STALE_SECONDS": "15",
    "KRONOS_MAX_BATCH_SIZE": "2", "KRONOS_TORCH_THREADS": "1", "KRONOS_LOG_LEVEL": "INFO",
    # One job's lifecycle (a cancel mid-run, kill -9 of the child running it) is followed whole
    # here; tests/e2e/test_fleet_e2e.py lowers it to see large jobs split over the worker's processes.
    "KRONOS_SPLIT_MIN_SERIES": "100000",
}


def fresh_schema(server_url: str) -> tuple[str, callable]:
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
            [sys.executable, "-m", "kronos_jobs.runtime.worker", "--pool", "cpu", "--concurrency", str(concurrency)],
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


def running_stack(kind: str, tmp_path_factory, extra_env: dict[str, str] | None = None):
    """Yield a Stack with its worker running: "embedded" (SQLite + filesystem broker) or
    "redis+postgresql" (a claimed Redis DB and a fresh schema); `extra_env` adds KRONOS_* settings."""
    root = tmp_path_factory.mktemp(f"e2e-{kind.replace('+', '-')}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KRONOS_") or k.startswith("KRONOS_TEST_")}
    env.update(WORKER_ENV, KRONOS_DATA_DIR=str(root / "kronos-data"), KRONOS_MODEL_DIRS=str(root / "models"),
               PYTHONPATH=str(REPO), **(extra_env or {}))  # the worker resolves the local checkpoint again: same roots
    cleanup = []
    if kind == "redis+postgresql":
        redis_url = claim_redis_db(require_service(TEST_REDIS_URL_ENV))
        database_url, drop = fresh_schema(require_service(TEST_DATABASE_URL_ENV))
        env.update(KRONOS_BROKER_URL=redis_url, KRONOS_DATABASE_URL=database_url)
        cleanup += [drop, lambda: __import__("redis").Redis.from_url(redis_url).flushdb()]
    settings = Settings(**{k[len("KRONOS_"):].lower(): v for k, v in env.items()
                           if k.startswith("KRONOS_") and not k.startswith("KRONOS_TEST_")})
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



CHECKPOINT_EVERY = 5


def submit_finetune_job(stack, **overrides) -> str:
    request = {"model": str(stack.checkpoint), "device": "cpu", "train": "predictor", "epochs": 3, "batch_size": 8,
               "lookback": 24, "predict_window": 4, "predictor_learning_rate": 3e-3, "validation_split": 0.2,
               "log_interval": 2, "checkpoint_every_steps": CHECKPOINT_EVERY, "eval_windows": 8, "seed": 3, **overrides}
    with session_scope(stack.settings) as session:
        job, _ = submit_finetune(session, stack.settings, tenant_id=DEFAULT_TENANT, request=request,
                                 bars=sample_bars(3, 400, seed=9), source="csv")
        return job.id


# --- the `kronos-jobs` console script as a user runs it ---------------------------------------------

KRONOS_JOBS = Path(sys.executable).with_name("kronos-jobs")  # the console script of pyproject.toml


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def port_is_closed(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


def kronos_env(tmp_path: Path, port: int) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("KRONOS_")}
    env.update(KRONOS_DATA_DIR=str(tmp_path / "kronos-data"), KRONOS_API_PORT=str(port),
               KRONOS_TORCH_THREADS="1", HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"))
    return env


# --- a real API process beside the stack's worker (the client and console tests) -----------------


class ApiProcess:
    """`kronos-jobs api` (uvicorn) on a free port with the stack's environment; a context manager."""

    def __init__(self, stack: Stack, log: Path, **env: str):
        self.stack, self.log, self.port, self.extra_env = stack, log, free_port(), env
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen | None = None

    def make_key(self, *scopes: str) -> str:
        """A new API key of the default tenant (admin unless scopes are given)."""
        from kronos_jobs.crud import api_keys

        with session_scope(self.stack.settings) as session:
            return api_keys.create_key(session, tenant_id=DEFAULT_TENANT, scopes=scopes or ("admin",))[1]

    def __enter__(self) -> "ApiProcess":
        import httpx

        env = {**self.stack.env, "KRONOS_API_PORT": str(self.port), "KRONOS_API_HOST": "127.0.0.1", **self.extra_env}
        self.proc = subprocess.Popen([sys.executable, "-m", "kronos_jobs.cli", "api"], cwd=REPO, env=env,
                                     stdout=open(self.log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, f"API exited early:\n{self.log.read_text()[-3000:]}"
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        pytest.fail(f"API did not answer:\n{self.log.read_text()[-3000:]}")

    def __exit__(self, *exc) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
