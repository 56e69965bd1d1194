"""jobs.lease: one keeper thread per process renews every running job's lease until it stops."""

from __future__ import annotations

import time

from kronos_jobs.crud import jobs as job_crud
from kronos_jobs.db.models import Job
from kronos_jobs.db.session import session_scope
from kronos_jobs.jobs.lease import LeaseHeartbeat
from kronos_jobs.testing.factories import make_job


def _claimed(settings, owner: str, lease_seconds: float = 60) -> str:
    with session_scope(settings) as session:
        job_id = make_job(session).id
        job_crud.claim_job(session, job_id=job_id, owner=owner, lease_seconds=lease_seconds)
    return job_id


def _expires(settings, job_id: str):
    with session_scope(settings) as session:
        return session.get(Job, job_id).lease_expires_at


def _wait_for(condition, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return False


def test_heartbeats_renew_until_stopped(db_settings):
    fast = db_settings.model_copy(update={"heartbeat_seconds": 0.05, "lease_seconds": 60})
    slow = db_settings.model_copy(update={"heartbeat_seconds": 0.2, "lease_seconds": 60})
    jobs = {owner: _claimed(db_settings, owner, lease_seconds=5) for owner in ("w1", "w2")}
    before = {owner: _expires(db_settings, job_id) for owner, job_id in jobs.items()}
    beats = [LeaseHeartbeat(fast, jobs["w1"], "w1"), LeaseHeartbeat(slow, jobs["w2"], "w2")]
    for beat in beats:
        beat.start()
    try:  # both jobs of this process are renewed, each on its own interval
        assert _wait_for(lambda: all(_expires(db_settings, jobs[o]) > before[o] for o in jobs))
    finally:
        for beat in beats:
            beat.stop()
    time.sleep(0.2)  # a renewal already under way when stop() came may still land
    stopped = _expires(db_settings, jobs["w1"])
    time.sleep(0.3)
    assert _expires(db_settings, jobs["w1"]) == stopped and not any(beat.lost for beat in beats)


def test_a_lease_taken_over_is_noticed(db_settings):
    settings = db_settings.model_copy(update={"heartbeat_seconds": 0.05})
    job_id = _claimed(settings, "w1", lease_seconds=0.001)
    time.sleep(0.01)
    with session_scope(settings) as session:  # w1 looked dead; w2 took the job over
        job_crud.claim_job(session, job_id=job_id, owner="w2", lease_seconds=60)
    beat = LeaseHeartbeat(settings, job_id, "w1")
    beat.start()
    try:
        assert _wait_for(lambda: beat.lost)
    finally:
        beat.stop()
