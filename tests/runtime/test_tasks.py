"""Task outcome mapping (no broker: the service is replaced and `retry` is captured)."""

from __future__ import annotations

import pytest
from celery.exceptions import TimeLimitExceeded
from sqlalchemy.exc import OperationalError

from kronos_jobs.core.errors import JobGivenBack, LeaseHeld, LeaseLost, NotFound
from kronos_jobs.core.names import JobState
from kronos_jobs.runtime import tasks


class Retried(Exception):
    def __init__(self, **kwargs):
        super().__init__(kwargs)
        self.kwargs = kwargs


@pytest.fixture
def task(monkeypatch):
    def retry(**kwargs):
        return Retried(**kwargs)  # deliver() raises what retry returns, as Celery's retry raises

    monkeypatch.setattr(tasks.run_forecast, "retry", retry)
    return tasks.run_forecast


def service_raising(exc):
    def service(job_id, *, settings, **context):
        raise exc
    return service


def test_success_returns_the_state(task):
    assert tasks.deliver(task, "j1", lambda job_id, settings: JobState.SUCCEEDED) == "succeeded"


def test_the_worker_identity_and_drain_flag_are_handed_to_the_service(task):
    seen = {}

    def service(job_id, *, settings, **context):
        seen.update(context)
        return JobState.SUCCEEDED

    assert tasks.deliver(task, "j1", service, identity="the-identity", draining=tasks.drain.draining) == "succeeded"
    assert seen == {"identity": "the-identity", "draining": tasks.drain.draining}


@pytest.mark.parametrize("exc", [LeaseLost("finished"), NotFound("gone")])
def test_other_delivery_or_missing_job_stops_quietly(task, exc):
    assert tasks.deliver(task, "j1", service_raising(exc)) is None


def test_lease_held_looks_again_when_it_would_lapse(task):
    with pytest.raises(Retried) as caught:
        tasks.deliver(task, "j1", service_raising(LeaseHeld("held", retry_after=7.0)))
    assert 7.2 <= caught.value.kwargs["countdown"] <= 8.0 and caught.value.kwargs["max_retries"] is None


def test_transient_errors_retry_with_celerys_capped_jittered_backoff(task, monkeypatch):
    error = OperationalError("SELECT 1", {}, Exception("server closed the connection"))
    monkeypatch.setattr("kronos_jobs.jobs.forecast.run_forecast_job", service_raising(error))
    monkeypatch.setattr(tasks.worker, "current_identity", lambda: None)
    with pytest.raises(Retried) as caught:
        task.run("j1")  # Celery's autoretry wrapper around the task body
    assert caught.value.kwargs["exc"] is error
    assert 0 <= caught.value.kwargs["countdown"] <= 1  # first retry: full jitter over [0, 2**0] s


def test_outage_retries_span_minutes_with_a_backoff_capped_by_settings(task, monkeypatch, settings):
    tuned = settings.model_copy(update={"transient_retries": 50, "retry_backoff_max": 12})
    monkeypatch.setattr(tasks, "get_settings", lambda: tuned)
    error = OperationalError("SELECT 1", {}, Exception("connection refused"))
    monkeypatch.setattr(task.request, "retries", 30, raising=False)
    countdowns = set()
    for _ in range(50):
        with pytest.raises(Retried) as caught:
            tasks.deliver(task, "j1", service_raising(error))
        assert caught.value.kwargs["exc"] is error and caught.value.kwargs["max_retries"] == 50
        countdowns.add(caught.value.kwargs["countdown"])
    assert max(countdowns) <= 12 and len(countdowns) > 1  # capped, jittered
    # The defaults: retries at most a few seconds apart once capped, minutes of them in all.
    assert settings.retry_backoff_max <= 20 and settings.transient_retries * settings.retry_backoff_max / 2 >= 240


def test_hard_time_limit_fails_the_running_job(db_settings, monkeypatch):
    from kronos_jobs.crud import jobs as job_crud
    from kronos_jobs.db.session import session_scope

    monkeypatch.setattr(tasks, "get_settings", lambda: db_settings)
    with session_scope(db_settings) as session:
        job_crud.create_job(session, job_id="hard1", tenant_id="default", kind="forecast", device_requested="cpu",
                            queue="forecast.cpu", routing_reason="test", model="random:mini", params={},
                            progress_total=1)
        job_crud.claim_job(session, job_id="hard1", owner="killed-child", lease_seconds=60)
    tasks.run_forecast.on_failure(TimeLimitExceeded(90), "hard1", ("hard1",), {}, None)
    with session_scope(db_settings) as session:
        job = job_crud.get_job(session, tenant_id="default", job_id="hard1")
        assert job.state == "failed" and job.error["code"] == "hard_time_limit" and job.lease_owner is None


def test_a_given_back_job_is_sent_again_at_once(task):
    with pytest.raises(Retried) as caught:
        tasks.deliver(task, "j1", service_raising(JobGivenBack("checkpointed for worker shutdown at step 5")))
    assert caught.value.kwargs == {"countdown": 0, "max_retries": None}
