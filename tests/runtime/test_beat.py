"""The beat's DatabaseScheduler ticks OUR schedules table: a schedule created after the beat
started is picked up on its next tick, without a restart."""

from __future__ import annotations

import time
from datetime import datetime, timedelta, timezone

from kronos_jobs.broker.celery_app import make_celery
from kronos_jobs.core.names import DEFAULT_TENANT
from kronos_jobs.core.settings import get_settings
from kronos_jobs.crud import schedules as schedule_crud
from kronos_jobs.db.migrate import upgrade
from kronos_jobs.db.session import session_scope
from kronos_jobs.jobs import schedules
from kronos_jobs.runtime.beat import DatabaseScheduler


def test_beat_picks_up_a_new_schedule_without_restart(monkeypatch, tmp_path):
    monkeypatch.setenv("KRONOS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("KRONOS_SCHEDULER_INTERVAL", "0.01")
    get_settings.cache_clear()
    settings = get_settings()
    upgrade(settings)
    app = make_celery(settings)
    assert app.conf.beat_scheduler == "kronos_jobs.runtime.beat:DatabaseScheduler"
    beat = DatabaseScheduler(app=app, schedule_filename=str(tmp_path / "beat-schedule"))
    try:
        beat.tick()  # nothing scheduled yet
        with session_scope(settings) as session:
            schedule = schedules.create_schedule(session, tenant_id=DEFAULT_TENANT, fields=dict(
                name="every-minute", cron="* * * * *", timezone="UTC", symbols=["NONE"], model="random:mini"))
            schedule_crud.update_schedule(session, tenant_id=DEFAULT_TENANT, schedule_id=schedule.id, changes={
                "anchor_at": datetime.now(timezone.utc) - timedelta(minutes=5)})
        # The database is ticked at most every KRONOS_SCHEDULER_INTERVAL; let one interval pass so
        # the next tick is due however fast the lines above ran.
        time.sleep(0.02)
        delay = beat.tick()
        assert 0 <= delay <= 0.01 + 1e-6
        with session_scope(settings) as session:
            runs = schedule_crud.list_runs(session, tenant_id=DEFAULT_TENANT, schedule_id=schedule.id)
            assert len(runs) == 1 and runs[0].trigger == "schedule"
            assert runs[0].symbol_errors[0]["code"] == "not_in_store"
    finally:
        beat.close()


def test_beat_itself_sends_a_job_whose_task_never_reached_the_broker(monkeypatch, tmp_path):
    # The recovery sweep runs in beat's own tick, not as a task queued behind jobs.
    from kronos_jobs.crud import jobs as job_crud
    from kronos_jobs.jobs import recovery

    monkeypatch.setenv("KRONOS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("KRONOS_DISPATCH_AFTER_SECONDS", "0")
    get_settings.cache_clear()
    settings = get_settings()
    upgrade(settings)
    with session_scope(settings) as session:
        job_crud.create_job(session, job_id="unsent1", tenant_id=DEFAULT_TENANT, kind="forecast", device_requested="cpu",
                            queue="forecast.cpu", routing_reason="test", model="random:mini", params={}, progress_total=1)
    sent = []
    monkeypatch.setattr(recovery, "send_job", lambda s, job_id, queue, **options: sent.append((job_id, queue)))
    beat = DatabaseScheduler(app=make_celery(settings), schedule_filename=str(tmp_path / "beat-schedule"))
    try:
        time.sleep(0.01)
        beat.tick()
    finally:
        beat.close()
    assert sent == [("unsent1", "forecast.cpu")]
    with session_scope(settings) as session:
        assert job_crud.get_job(session, tenant_id=DEFAULT_TENANT, job_id="unsent1").sent_at is not None


def test_beat_scores_stored_forecasts_every_score_interval(monkeypatch, tmp_path):
    # Live scoring (kronos_jobs/evaluation/scoring.py) runs in beat's own tick, once per KRONOS_SCORE_INTERVAL.
    from kronos_jobs.runtime import beat as beat_module

    monkeypatch.setenv("KRONOS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("KRONOS_SCORE_INTERVAL", "3600")
    get_settings.cache_clear()
    settings = get_settings()
    upgrade(settings)
    calls = []
    monkeypatch.setattr(beat_module, "score_new_forecasts", lambda session: calls.append(session) or 0)
    beat = DatabaseScheduler(app=make_celery(settings), schedule_filename=str(tmp_path / "beat-schedule"))
    try:
        beat.tick()
        beat.tick()  # within the interval: not again
    finally:
        beat.close()
    assert len(calls) == 1
