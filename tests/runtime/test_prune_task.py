"""Beat runs retention: the prune task is in the static schedule at KRONOS_PRUNE_INTERVAL_SECONDS,
and the task itself deletes what is due."""

from __future__ import annotations

from datetime import timedelta

from kronos_jobs.broker.celery_app import make_celery
from kronos_jobs.core.names import TASK_PRUNE, JobState, Queue
from kronos_jobs.core.settings import get_settings
from kronos_jobs.db.migrate import upgrade
from kronos_jobs.db.models import utcnow
from kronos_jobs.db.session import session_scope
from kronos_jobs.runtime.tasks import prune_retention
from kronos_jobs.testing.factories import make_job


def test_beat_schedules_the_prune_task_and_the_task_prunes(monkeypatch, tmp_path):
    monkeypatch.setenv("KRONOS_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("KRONOS_PRUNE_INTERVAL_SECONDS", "120")
    get_settings.cache_clear()
    settings = get_settings()
    entry = make_celery(settings).conf.beat_schedule["prune-retention"]
    assert entry["task"] == TASK_PRUNE and entry["schedule"] == 120.0
    assert entry["options"] == {"queue": Queue.FORECAST_CPU.value, "expires": 120.0}

    upgrade(settings)
    with session_scope(settings) as session:
        old = make_job(session, commit=False)
        old.state, old.finished_at = JobState.SUCCEEDED.value, utcnow() - timedelta(days=400)
        make_job(session, commit=False)  # queued: never pruned
    report = prune_retention()
    assert report["jobs"] == 1 and report["dry_run"] is False
