"""The outbox: a job committed while the broker was down is sent by beat's recovery sweep; a job
whose send succeeded is never sent twice by it; a lapsed lease is re-sent at most once per lease."""

from __future__ import annotations

import time

from kronos_jobs.core.names import DEFAULT_TENANT
from kronos_jobs.crud import jobs as job_crud
from kronos_jobs.db.session import session_scope
from kronos_jobs.jobs import recovery, submit
from kronos_jobs.testing.factories import make_bars, submit_forecast_job


def _broker_down(*_args, **_kwargs):
    raise ConnectionRefusedError("broker down")


def test_a_job_committed_while_the_broker_is_down_is_sent_by_the_sweep(job_settings, tiny_checkpoint, monkeypatch):
    settings = job_settings.model_copy(update={"dispatch_after_seconds": 0.05})
    monkeypatch.setattr(submit, "send_job", _broker_down)
    job_id = submit_forecast_job(settings, tiny_checkpoint, make_bars({"A": 60}))
    with session_scope(settings) as session:
        job = job_crud.get_job(session, tenant_id=DEFAULT_TENANT, job_id=job_id)
        assert job.state == "queued" and job.sent_at is None

    # Still down: the sweep tries, fails, and leaves the job in the outbox.
    monkeypatch.setattr(recovery, "send_job", _broker_down)
    time.sleep(0.1)
    assert recovery.sweep(settings)["sent"] == []

    sent = []
    monkeypatch.setattr(recovery, "send_job", lambda s, job_id, queue, **options: sent.append((job_id, queue)))
    assert recovery.sweep(settings)["sent"] == [job_id]
    assert recovery.sweep(settings)["sent"] == []  # drained: sent once
    assert sent == [(job_id, "forecast.cpu")]
    with session_scope(settings) as session:
        assert job_crud.get_job(session, tenant_id=DEFAULT_TENANT, job_id=job_id).sent_at is not None


def test_a_job_sent_at_submit_is_not_sent_again(job_settings, tiny_checkpoint, monkeypatch):
    settings = job_settings.model_copy(update={"dispatch_after_seconds": 0.0})
    monkeypatch.setattr(submit, "send_job", lambda *a, **k: None)
    job_id = submit_forecast_job(settings, tiny_checkpoint, make_bars({"A": 60}))
    with session_scope(settings) as session:
        assert job_crud.get_job(session, tenant_id=DEFAULT_TENANT, job_id=job_id).sent_at is not None
    monkeypatch.setattr(recovery, "send_job", _broker_down)  # would fail the test's expectation if called
    assert recovery.sweep(settings) == {"sent": [], "resent": [], "settled": []}


def test_a_lapsed_lease_is_resent_once_per_lease(job_settings, tiny_checkpoint, monkeypatch):
    monkeypatch.setattr(submit, "send_job", lambda *a, **k: None)
    job_id = submit_forecast_job(job_settings, tiny_checkpoint, make_bars({"A": 60}))
    with session_scope(job_settings) as session:
        job_crud.claim_job(session, job_id=job_id, owner="dead-worker", lease_seconds=0.01)
    time.sleep(0.05)
    sent = []
    monkeypatch.setattr(recovery, "send_job", lambda s, job_id, queue, **options: sent.append(job_id))
    settings = job_settings.model_copy(update={"lease_seconds": 2})
    time.sleep(2.1)  # a lease since the claim (its last touch)
    assert recovery.sweep(settings)["resent"] == [job_id]
    assert recovery.sweep(settings)["resent"] == []  # touched: not again within a lease
    assert sent == [job_id]
