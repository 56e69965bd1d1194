"""A scheduled run over 500 stored symbols completes on real worker processes.

Reuses the forecast e2e stacks (embedded SQLite + filesystem broker; Redis + PostgreSQL when
configured) and their `python -m kronos_jobs.runtime.worker --pool cpu --concurrency 2` worker. The beat's
work is driven by calling `schedules.tick(settings, now)` with a chosen clock.
"""

from __future__ import annotations

import time
from datetime import datetime, timezone

import pandas as pd
import pytest

from kronos_jobs.core.names import DEFAULT_TENANT
from kronos_jobs.crud import forecasts as forecast_crud
from kronos_jobs.crud import schedules as schedule_crud
from kronos_jobs.crud import series as series_crud
from kronos_jobs.db.session import session_scope
from kronos_jobs.jobs import schedules
from kronos_jobs.testing.factories import make_bars

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(400)]

N_SYMBOLS = 500


def test_nightly_run_over_500_symbols(stack):
    settings = stack.settings
    symbols = {f"S{i:03d}": 40 for i in range(N_SYMBOLS)} | {"SHORT": 5}
    bars = make_bars(symbols, freq="1h")
    with session_scope(settings) as session:
        series_crud.upsert_bars(session, tenant_id=DEFAULT_TENANT, bars=bars, freqs={s: "1h" for s in symbols})
        schedule = schedules.create_schedule(session, tenant_id=DEFAULT_TENANT, fields=dict(
            name="nightly-e2e", cron="0 18 * * 1-5", timezone="America/New_York", symbols=None, freq="1h",
            model=str(stack.checkpoint), device="cpu", lookback=32, pred_len=4, sampling={"seed": 5}, quantiles=None,
            calendar={"timezone": "America/New_York", "open": "09:30", "close": "16:00"}, min_history=None, enabled=True),
            model_dirs=settings.effective_model_dirs)
        schedule_crud.update_schedule(session, tenant_id=DEFAULT_TENANT, schedule_id=schedule.id,
                                      changes={"anchor_at": datetime(2024, 6, 19, tzinfo=timezone.utc)})
        schedule_id = schedule.id

    now = datetime(2024, 6, 19, 22, 0, 10, tzinfo=timezone.utc)  # Wednesday 18:00:10 in New York
    (run_id,) = schedules.tick(settings, now)
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        schedules.tick(settings, now)  # the beat's tick also finishes runs whose jobs ended
        with session_scope(settings) as session:
            run = schedule_crud.get_run(session, tenant_id=DEFAULT_TENANT, run_id=run_id)
            state, done, total, errors = run.state, run.progress_done, run.progress_total, run.symbol_errors
            n_jobs = len(schedule_crud.run_jobs(session, run_id=run_id))
        if state not in ("queued", "running"):
            break
        time.sleep(0.5)
    else:
        pytest.fail(f"run {run_id} stuck in {state} ({done}/{total}):\n{stack.log.read_text()[-4000:]}")

    assert state == "partially_succeeded", errors
    assert (done, total) == (N_SYMBOLS + 1, N_SYMBOLS + 1)
    assert [(e["symbol"], e["code"]) for e in errors] == [("SHORT", "too_little_history")]
    assert n_jobs == -(-N_SYMBOLS // settings.schedule_batch_symbols)
    with session_scope(settings) as session:
        rows = forecast_crud.latest_forecasts(session, tenant_id=DEFAULT_TENANT, schedule_id=schedule_id)
    assert rows["symbol"].nunique() == N_SYMBOLS and len(rows) == N_SYMBOLS * 4
    # The last bar is 12:30 New York; the session ends at 16:00, so the 4th step is the next morning.
    first = rows[rows.symbol == "S000"]["timestamp"].tolist()
    assert first == list(pd.to_datetime(["2024-06-19 17:30", "2024-06-19 18:30", "2024-06-19 19:30",
                                         "2024-06-20 13:30"], utc=True))


def test_beat_process_runs_a_schedule_created_after_it_started(tmp_path):
    """A real `kronos-jobs beat`: a schedule written to the database while it runs fires, no restart."""
    import os
    import signal
    import subprocess
    import sys
    from datetime import timedelta

    from kronos_jobs.core.settings import Settings
    from kronos_jobs.db.migrate import upgrade
    from tests.e2e.harness import REPO

    env = {k: v for k, v in os.environ.items() if not k.startswith("KRONOS_")}
    env.update(KRONOS_DATA_DIR=str(tmp_path / "data"), KRONOS_SCHEDULER_INTERVAL="0.5", PYTHONPATH=str(REPO))
    settings = Settings(data_dir=tmp_path / "data")
    upgrade(settings)
    log = tmp_path / "beat.log"
    proc = subprocess.Popen([sys.executable, "-m", "kronos_jobs.cli", "beat"], cwd=REPO, env=env,
                            stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True)
    try:
        time.sleep(2)
        assert proc.poll() is None, log.read_text()[-3000:]
        with session_scope(settings) as session:
            schedule = schedules.create_schedule(session, tenant_id=DEFAULT_TENANT, fields=dict(
                name="every-minute", cron="* * * * *", timezone="UTC", symbols=["NONE"], model="random:mini"))
            schedule_crud.update_schedule(session, tenant_id=DEFAULT_TENANT, schedule_id=schedule.id, changes={
                "anchor_at": datetime.now(timezone.utc) - timedelta(minutes=3)})
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with session_scope(settings) as session:
                runs = schedule_crud.list_runs(session, tenant_id=DEFAULT_TENANT, schedule_id=schedule.id)
                if runs:
                    break
            time.sleep(0.3)
        assert len(runs) == 1 and runs[0].trigger == "schedule", log.read_text()[-3000:]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=30)
