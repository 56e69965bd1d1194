"""`kronos-jobs demo` end to end: real API, worker and beat processes on the embedded default.

No API is running, so the demo starts `up`'s processes itself, submits over HTTP, follows the job,
writes the Parquet and the chart, and stops what it started. `random:mini` keeps it offline and
fast; HF_HUB_OFFLINE=1 makes sure nothing reaches for the hub.
"""

from __future__ import annotations

import re
import subprocess

import pandas as pd
import pyarrow.parquet as pq
import pytest

from kronos_jobs.core.names import RESULT_COLUMNS
from kronos_jobs.jobs.registry import RANDOM_WEIGHTS_LABEL
from kronos_jobs.testing.services import TEST_REDIS_URL_ENV, claim_redis_db, require_service
from tests.e2e.harness import KRONOS_JOBS, free_port, kronos_env, port_is_closed

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]

SYMBOLS, LOOKBACK, PRED_LEN = 3, 64, 8


@pytest.fixture(params=["embedded", pytest.param("redis+postgresql", marks=pytest.mark.integration)])
def stack_env(request, tmp_path) -> dict[str, str]:
    """The embedded default (nothing configured), or production URLs: Redis and PostgreSQL."""
    if request.param == "embedded":
        yield {}
        return
    redis_url = claim_redis_db(require_service(TEST_REDIS_URL_ENV))  # atomically ours: no other session's queues
    yield {"KRONOS_BROKER_URL": redis_url, "KRONOS_DATABASE_URL": request.getfixturevalue("pg_url")}
    import redis

    redis.Redis.from_url(redis_url).flushdb()


def test_demo_with_random_weights(tmp_path, stack_env):
    assert KRONOS_JOBS.is_file(), f"{KRONOS_JOBS} missing: install the project (scripts/setup.sh)"
    port = free_port()
    run = subprocess.run(
        [str(KRONOS_JOBS), "demo", "--model", "random:mini", "--symbols", str(SYMBOLS),
         "--lookback", str(LOOKBACK), "--pred-len", str(PRED_LEN)],
        env={**kronos_env(tmp_path, port), **stack_env}, cwd=tmp_path, capture_output=True, text=True, timeout=280,
    )
    out_dir = tmp_path / "kronos-data" / "demo"
    services_log = (out_dir / "services.log").read_text() if (out_dir / "services.log").exists() else ""
    assert run.returncode == 0, f"stdout:\n{run.stdout}\nstderr:\n{run.stderr[-3000:]}\nservices:\n{services_log[-3000:]}"

    # What the user reads: the random-weights label, one summary line per symbol, how it ran.
    assert RANDOM_WEIGHTS_LABEL in run.stdout
    assert f"model random:mini ({RANDOM_WEIGHTS_LABEL})" in run.stdout
    for i in range(SYMBOLS):
        assert f"SIM{i:03d}.XS" in run.stdout
    assert "state=succeeded" in run.stdout
    assert "resolved cpu" in run.stdout
    assert "forecast: 100%" in run.stderr  # the progress bar reached the end

    # The API, the worker and beat really ran as processes, and were stopped.
    for name in ("api", "worker-cpu", "beat"):
        assert f"{name:>10} | " in services_log
    assert port_is_closed(port)
    sqlite_file = tmp_path / "kronos-data" / "kronos.db"
    if stack_env:  # production URLs: the same code, on Redis and PostgreSQL only
        # Celery names the transport class (ours wraps kombu's Redis transport), then the address.
        redis_address = stack_env["KRONOS_BROKER_URL"].split("://", 1)[1]
        assert re.search(rf"Connected to \S*redis_broker:Transport://\S*{re.escape(redis_address)}", services_log)
        assert "demo: the API requires keys; using a temporary key" in run.stdout
        assert not sqlite_file.exists()
    else:
        assert sqlite_file.exists()

    # The Parquet result: every symbol, pred_len rows each, finite prices, labelled.
    parquet = out_dir / "forecast.parquet"
    forecast = pd.read_parquet(parquet)
    assert list(forecast.columns[: len(RESULT_COLUMNS)]) == list(RESULT_COLUMNS)
    assert forecast.groupby("symbol").size().to_dict() == {f"SIM{i:03d}.XS": PRED_LEN for i in range(SYMBOLS)}
    assert forecast[["open", "high", "low", "close"]].notna().all().all()
    metadata = pq.read_schema(parquet).metadata
    assert metadata[b"kronos.label"].decode() == f"random:mini ({RANDOM_WEIGHTS_LABEL})"

    # The forecast starts after the last input bar of each symbol.
    bars = pd.read_parquet(out_dir / "input.parquet")
    assert bars.groupby("symbol").size().eq(LOOKBACK).all()
    last = bars.groupby("symbol")["timestamp"].max()
    first = forecast.groupby("symbol")["timestamp"].min()
    assert (first > last.reindex(first.index)).all()

    png = out_dir / "forecast.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert png.stat().st_size > 10_000
