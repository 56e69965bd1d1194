"""The lifecycle every job kind shares: the attempt cap and the exception ladder of one delivery."""

from __future__ import annotations

import pytest
from celery.exceptions import SoftTimeLimitExceeded
from sqlalchemy.exc import OperationalError

from kronos_jobs.core.errors import JobCancelled, JobGivenBack, LeaseLost, ModelUnavailable
from kronos_jobs.core.names import JobState
from kronos_jobs.jobs import lifecycle


def delivery(attempt: int = 1) -> lifecycle.Delivery:
    return lifecycle.Delivery(job_id="j1", owner=lifecycle.new_owner(), tenant_id="default", queue="forecast.cpu",
                              device_requested="cpu", attempt=attempt, queued_at=None, started_at=None, t0=0.0)


def run(settings, raised: BaseException | None, attempt: int = 1):
    outcomes = []

    def work():
        if raised is not None:
            raise raised
        return JobState.SUCCEEDED

    state = lifecycle.run_delivery(
        delivery(attempt), settings, work,
        fail=lambda error: outcomes.append(("failed", error["code"])) or JobState.FAILED,
        cancelled=lambda exc: outcomes.append(("cancelled", str(exc))) or JobState.CANCELLED,
        time_limit_message="too slow")
    return state, outcomes


def test_owners_differ_per_delivery():
    assert lifecycle.new_owner() != lifecycle.new_owner()


def test_a_job_whose_deliveries_keep_dying_fails_without_running(settings):
    assert lifecycle.attempts_exhausted(delivery(settings.max_retries + 1), settings) is None
    state, outcomes = run(settings, None, attempt=settings.max_retries + 2)
    assert state is JobState.FAILED and outcomes == [("failed", "too_many_attempts")]


@pytest.mark.parametrize("raised, outcome", [
    (None, []),
    (JobCancelled("by request"), [("cancelled", "by request")]),
    (SoftTimeLimitExceeded(), [("failed", "time_limit")]),
    (ModelUnavailable("hub down"), [("failed", "model_unavailable")]),
    (ValueError("a bug"), [("failed", "internal_error")]),
])
def test_what_the_work_raises_becomes_the_outcome(settings, raised, outcome):
    assert run(settings, raised)[1] == outcome


@pytest.mark.parametrize("raised", [LeaseLost("another delivery"), JobGivenBack("worker shutdown")])
def test_a_lost_or_given_back_job_is_the_tasks_to_handle(settings, raised):
    with pytest.raises(type(raised)):
        run(settings, raised)


def test_a_transient_error_releases_the_lease_and_propagates(settings, monkeypatch):
    released = []
    monkeypatch.setattr(lifecycle, "release_lease", lambda job_id, owner, _settings: released.append(job_id))
    with pytest.raises(OperationalError):
        run(settings, OperationalError("SELECT 1", {}, Exception("server closed the connection")))
    assert released == ["j1"]
