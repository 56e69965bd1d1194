"""Secrets never reach an output or a log: the API, a worker and beat run as `kronos-jobs` processes
on a PostgreSQL URL whose password holds `/` and `:` and a Redis that requires a password, at DEBUG
log level; a user creates a key, submits, waits and reads a result with it (and a stranger tries a
wrong key). Every line any process wrote is then searched for each secret, in every spelling."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from pathlib import Path
from urllib.parse import quote

import httpx
import pytest
from sqlalchemy.engine import make_url

from kronos_jobs.cli.sample_data import sample_bars
from kronos_jobs.testing.checkpoints import save_tiny_checkpoint
from kronos_jobs.testing.services import TEST_DATABASE_URL_ENV, TEST_REDIS_URL_ENV, require_service
from tests.e2e.harness import KRONOS_JOBS, REPO, fresh_schema, free_port

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.timeout(300)]

DB_PASSWORD = "pg/Pa55:w0rd-S3CRET"  # trust auth on the test server: any password connects
REDIS_PASSWORD = "r3d/is:S3CRET-pw"


@pytest.fixture
def redis_with_password(tmp_path: Path):
    require_service(TEST_REDIS_URL_ENV)  # the same rule as every Redis test (CI fails when Redis is missing)
    port = free_port()
    proc = subprocess.Popen(["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--requirepass", REDIS_PASSWORD, "--dir", str(tmp_path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    url = f"redis://:{quote(REDIS_PASSWORD, safe='')}@127.0.0.1:{port}/0"
    import redis

    while True:
        try:
            redis.Redis.from_url(url).ping()
            break
        except redis.exceptions.ConnectionError:
            assert time.monotonic() < deadline, "redis-server did not start"
            time.sleep(0.1)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


def test_no_secret_in_any_output_or_log(tmp_path: Path, redis_with_password: str) -> None:
    schema_url, drop = fresh_schema(require_service(TEST_DATABASE_URL_ENV))
    url = make_url(schema_url)
    # Written by hand: SQLAlchemy would percent-encode the `/`, and the raw form is the one log
    # redaction used to miss.
    database_url = schema_url.replace(f"{url.username}@", f"{url.username}:{DB_PASSWORD}@", 1)
    assert make_url(database_url).password == DB_PASSWORD
    port = free_port()
    models = tmp_path / "models"
    checkpoint = save_tiny_checkpoint(models / "tiny-model")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KRONOS_")}
    env.update(KRONOS_DATABASE_URL=database_url, KRONOS_BROKER_URL=redis_with_password, KRONOS_AUTH="on",
               KRONOS_DATA_DIR=str(tmp_path / "data"), KRONOS_MODEL_DIRS=str(models), KRONOS_API_PORT=str(port),
               KRONOS_LOG_LEVEL="DEBUG", KRONOS_TORCH_THREADS="1", KRONOS_HEARTBEAT_SECONDS="0.5",
               KRONOS_LEASE_SECONDS="3", KRONOS_SCHEDULER_INTERVAL="0.5", PYTHONPATH=str(REPO), HF_HUB_OFFLINE="1")
    outputs: list[str] = []  # everything a process wrote where a user or a log collector sees it
    logs: list[Path] = []
    procs: list[subprocess.Popen] = []

    def cli(*args: str, key: str | None = None, check: bool = True) -> subprocess.CompletedProcess:
        result = subprocess.run([str(KRONOS_JOBS), *args], env={**env, **({"KRONOS_API_KEY": key} if key else {})},
                                capture_output=True, text=True, timeout=180, cwd=tmp_path)
        outputs.append(result.stderr)
        if args[:2] != ("keys", "create"):  # that stdout is the token itself, shown once on purpose
            outputs.append(result.stdout)
        assert not check or result.returncode == 0, result.stdout + result.stderr
        return result

    def start(name: str, *args: str) -> None:
        log = tmp_path / f"{name}.log"
        logs.append(log)
        procs.append(subprocess.Popen([str(KRONOS_JOBS), *args], env=env, cwd=tmp_path, stdout=open(log, "wb"),
                                      stderr=subprocess.STDOUT, start_new_session=True))

    try:
        upgraded = cli("db", "upgrade")
        assert "***" in upgraded.stdout
        token = cli("keys", "create", "--tenant", "acme", "--scope", "read", "--scope", "submit").stdout.strip()
        start("api", "api")
        start("worker", "worker", "--pool", "cpu", "--concurrency", "1")
        start("beat", "beat")
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200 and \
                        httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).json()["workers"]["cpu"]:
                    break
            except httpx.HTTPError:
                pass
            assert time.monotonic() < deadline, "\n".join(p.read_text()[-2000:] for p in logs)
            time.sleep(0.3)

        bars = tmp_path / "bars.csv"
        sample_bars(2, 80, seed=1).to_csv(bars, index=False)
        job_id = cli("submit", str(bars), "--model", str(checkpoint), "--pred-len", "2", "--freq", "5min",
                     "--lookback", "32", key=token).stdout.strip()
        cli("wait", job_id, "--timeout", "120", key=token)
        assert "SYM" in cli("result", job_id, key=token).stdout or cli("status", job_id, key=token).stdout
        assert httpx.get(f"http://127.0.0.1:{port}/v1/jobs", headers={"Authorization": "Bearer kj_bad_guess"}).status_code == 401
        stranger = cli("status", job_id, key=token[:-4] + "AAAA", check=False)
        assert stranger.returncode != 0 and "401" in stranger.stderr
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        drop()

    written = [*outputs, *(log.read_text(errors="replace") for log in logs)]
    everything = "\n".join(written)
    assert "registered" in everything and job_id in everything  # the logs were captured, and say things
    secrets = {DB_PASSWORD, quote(DB_PASSWORD, safe=""), REDIS_PASSWORD, quote(REDIS_PASSWORD, safe=""),
               token, token.split("_", 2)[2]}
    for secret in secrets:
        leaks = [line for line in everything.splitlines() if secret in line]
        assert not leaks, f"{secret!r} appears in:\n" + "\n".join(leaks[:5])
    for part in ("S3CRET",):  # any fragment of either password (a split on `/` or `:` would leave these)
        leaks = [line for line in everything.splitlines() if part in line]
        assert not leaks, f"{part!r} appears in:\n" + "\n".join(leaks[:5])
