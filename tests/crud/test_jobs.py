"""crud.jobs on SQLite and PostgreSQL: creation, idempotency, listing, leases, cancellation."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from sqlalchemy import update

from kronos_jobs.core.errors import (
    IdempotencyConflict,
    InvalidRequest,
    InvalidTransition,
    JobCancelled,
    LeaseLost,
    NotFound,
)
from kronos_jobs.core.names import JobState
from kronos_jobs.crud import jobs as job_crud
from kronos_jobs.db.models import Job, utcnow
from kronos_jobs.db.session import get_sessionmaker
from kronos_jobs.testing.factories import make_job

LEASE = 30


def _expire_lease(session, job_id: str) -> None:
    """Time passing, without waiting for it."""
    session.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=utcnow() - timedelta(seconds=1)))
    session.commit()


def _in_thread(fn: Callable[[], Any]) -> tuple[threading.Thread, dict[str, Any]]:
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            outcome["value"] = fn()
        except Exception as exc:  # handed to the test thread
            outcome["error"] = exc

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread, outcome


# --- create, get, idempotency ------------------------------------------------------------------


def test_create_and_get(session):
    job = make_job(session, tenant_id="acme", params={"pred_len": 24}, progress_total=3)
    session.expunge_all()
    stored = job_crud.get_job(session, tenant_id="acme", job_id=job.id)
    assert (stored.state, stored.kind, stored.params, stored.progress_total) == ("queued", "forecast", {"pred_len": 24}, 3)
    assert (stored.attempts, stored.cancel_requested, stored.lease_owner) == (0, False, None)
    assert stored.created_at.tzinfo is not None and stored.created_at.utcoffset() == timedelta(0)


def test_get_is_tenant_scoped(session):
    job = make_job(session, tenant_id="acme")
    with pytest.raises(NotFound) as err:
        job_crud.get_job(session, tenant_id="other", job_id=job.id)
    assert job.id in err.value.message


def test_idempotency_key_same_body_returns_existing_job(session):
    first = make_job(session, idempotency_key="k1", request_hash="h1")
    again = make_job(session, idempotency_key="k1", request_hash="h1")
    assert again.id == first.id
    assert job_crud.find_by_idempotency_key(session, tenant_id="default", key="k1").id == first.id
    assert job_crud.find_by_idempotency_key(session, tenant_id="default", key="nope") is None


def test_idempotency_key_different_body_conflicts(session):
    make_job(session, idempotency_key="k1", request_hash="h1")
    with pytest.raises(IdempotencyConflict) as err:
        make_job(session, idempotency_key="k1", request_hash="h2")
    assert err.value.details[0]["field"] == "Idempotency-Key"


def test_idempotency_keys_are_per_tenant(session):
    a = make_job(session, tenant_id="a", idempotency_key="k1", request_hash="h1")
    b = make_job(session, tenant_id="b", idempotency_key="k1", request_hash="h2")
    assert a.id != b.id


def test_idempotency_race_returns_the_winner(db_settings):
    factory = get_sessionmaker(db_settings)
    with factory() as first, factory() as second:
        winner = make_job(first, commit=False, idempotency_key="race", request_hash="h")
        # The second request inserts while the first is uncommitted: it waits, then loses.
        thread, outcome = _in_thread(lambda: make_job(second, idempotency_key="race", request_hash="h").id)
        time.sleep(0.2)
        first.commit()
        thread.join(30)
    assert outcome == {"value": winner.id}


# --- listing --------------------------------------------------------------------------------------


def _jobs_at(session, count: int, **overrides) -> list[str]:
    """`count` jobs with distinct created_at, oldest first; the last two share a timestamp."""
    base = utcnow() - timedelta(hours=1)
    ids = []
    for i in range(count):
        job = make_job(session, **overrides)
        stamp = base + timedelta(minutes=min(i, count - 2))
        session.execute(update(Job).where(Job.id == job.id).values(created_at=stamp))
        ids.append(job.id)
    session.commit()
    return ids


def _newest_first(session, ids: list[str]) -> list[str]:
    rows = [session.get(Job, i) for i in ids]
    return [j.id for j in sorted(rows, key=lambda j: (j.created_at, j.id), reverse=True)]


@pytest.mark.parametrize("limit, expected_pages", [(1, 7), (3, 3)])  # limit 1 puts a page break inside the tie
def test_cursor_pages_cover_every_job_once_newest_first(session, limit, expected_pages):
    ids = _jobs_at(session, 7)
    seen, cursor, pages = [], None, 0
    while True:
        page, cursor = job_crud.list_jobs(session, tenant_id="default", cursor=cursor, limit=limit)
        seen += [j.id for j in page]
        pages += 1
        if cursor is None:
            break
        assert "=" not in cursor and "/" not in cursor and "+" not in cursor  # URL-safe
    assert pages == expected_pages
    assert seen == _newest_first(session, ids)


def test_exact_page_has_no_next_cursor(session):
    _jobs_at(session, 3)
    page, cursor = job_crud.list_jobs(session, tenant_id="default", limit=3)
    assert len(page) == 3 and cursor is None


def test_list_filters(session):
    old, mid, new = _jobs_at(session, 5)[:3]  # the last two share a later timestamp
    make_job(session, tenant_id="other")
    job_crud.claim_job(session, job_id=mid, owner="w", lease_seconds=LEASE)
    session.commit()
    finetune = make_job(session, kind="finetune").id

    def ids(**filters) -> set[str]:
        return {j.id for j in job_crud.list_jobs(session, tenant_id="default", **filters)[0]}

    assert ids(state="running") == {mid}
    assert ids(state=["running", "queued"]) >= {old, mid, new, finetune}
    assert ids(kind="finetune") == {finetune}
    created = {i: session.get(Job, i).created_at for i in (old, mid, new)}
    assert ids(created_before=created[mid]) == {old}
    assert ids(created_after=created[mid], created_before=created[new] + timedelta(microseconds=1)) == {mid, new}
    assert len(job_crud.list_jobs(session, tenant_id="other")[0]) == 1


@pytest.mark.parametrize("cursor", ["not-a-cursor!", "Zm9v", job_crud.encode_cursor(utcnow(), "x")[:-3] + "___",
                                    "MjAyNC0wMS0wMVQwMDowMDowMHxhYmM"])  # the last: naive time
def test_invalid_cursor_names_the_field(session, cursor):
    with pytest.raises(InvalidRequest) as err:
        job_crud.list_jobs(session, tenant_id="default", cursor=cursor)
    assert err.value.field == "cursor"


@pytest.mark.parametrize("filters, field", [({"limit": 0}, "limit"), ({"limit": 10_000}, "limit"),
                                            ({"state": "sleeping"}, "state"), ({"kind": "train"}, "kind")])
def test_invalid_filters_name_the_field(session, filters, field):
    with pytest.raises(InvalidRequest) as err:
        job_crud.list_jobs(session, tenant_id="default", **filters)
    assert err.value.field == field


# --- leases ----------------------------------------------------------------------------------------


def test_count_by_state_per_kind_and_tenant(session):
    first = make_job(session)
    make_job(session)
    make_job(session, kind="finetune", queue="finetune.cpu")
    make_job(session, tenant_id="other")
    job_crud.claim_job(session, job_id=first.id, owner="w", lease_seconds=60)
    session.commit()
    assert job_crud.count_by_state(session) == {("forecast", "queued"): 2, ("forecast", "running"): 1,
                                                ("finetune", "queued"): 1}
    assert job_crud.count_by_state(session, tenant_id="other") == {("forecast", "queued"): 1}
    assert job_crud.count_by_state(session, tenant_id="nobody") == {}


def test_claim_renew_progress_finish(session):
    job = make_job(session)
    claimed = job_crud.claim_job(session, job_id=job.id, owner="w1", lease_seconds=LEASE)
    assert (claimed.state, claimed.lease_owner, claimed.attempts) == ("running", "w1", 1)
    assert claimed.lease_expires_at > utcnow() + timedelta(seconds=LEASE - 5)
    assert job_crud.renew_lease(session, job_id=job.id, owner="w1", lease_seconds=LEASE)
    assert job_crud.update_progress(session, job_id=job.id, owner="w1", done=1, total=2, detail={"phase": "x"}) is False
    done = job_crud.finish_job(session, job_id=job.id, owner="w1", state=JobState.SUCCEEDED,
                               symbol_errors=[], execution_metadata={"device": "cpu"})
    session.commit()
    assert (done.state, done.lease_owner, done.progress_done, done.progress_total) == ("succeeded", None, 1, 2)
    assert done.progress_detail == {"phase": "x"} and done.execution_metadata == {"device": "cpu"}
    assert done.finished_at is not None
    with pytest.raises(LeaseLost):  # a finished job cannot be claimed again
        job_crud.claim_job(session, job_id=job.id, owner="w2", lease_seconds=LEASE)


def test_claim_of_a_live_lease_is_lost(session):
    job = make_job(session)
    job_crud.claim_job(session, job_id=job.id, owner="w1", lease_seconds=LEASE)
    session.commit()
    with pytest.raises(LeaseLost):
        job_crud.claim_job(session, job_id=job.id, owner="w2", lease_seconds=LEASE)


def test_claim_unknown_job(session):
    with pytest.raises(NotFound):
        job_crud.claim_job(session, job_id=uuid.uuid4().hex, owner="w", lease_seconds=LEASE)


def test_expired_lease_lets_another_owner_claim(session):
    job = make_job(session)
    job_crud.claim_job(session, job_id=job.id, owner="w1", lease_seconds=LEASE)
    session.commit()
    _expire_lease(session, job.id)
    assert [j.id for j in job_crud.expired_running_jobs(session)] == [job.id]
    taken = job_crud.claim_job(session, job_id=job.id, owner="w2", lease_seconds=LEASE)
    session.commit()
    assert (taken.lease_owner, taken.attempts) == ("w2", 2)
    # The first owner, back from a pause, has lost every right to the job.
    assert job_crud.renew_lease(session, job_id=job.id, owner="w1", lease_seconds=LEASE) is False
    with pytest.raises(LeaseLost):
        job_crud.update_progress(session, job_id=job.id, owner="w1", done=1)
    with pytest.raises(LeaseLost):
        job_crud.finish_job(session, job_id=job.id, owner="w1", state="succeeded")
    assert job_crud.get_job(session, tenant_id="default", job_id=job.id).state == "running"


def test_finish_needs_a_terminal_state(session):
    job = make_job(session)
    job_crud.claim_job(session, job_id=job.id, owner="w1", lease_seconds=LEASE)
    with pytest.raises(ValueError, match="terminal"):
        job_crud.finish_job(session, job_id=job.id, owner="w1", state="queued")


def test_second_delivery_waits_for_the_first_then_loses(db_settings):
    """The first claim is uncommitted; the racing one blocks on it and then matches no row."""
    factory = get_sessionmaker(db_settings)
    with factory() as setup:
        job_id = make_job(setup).id
    with factory() as first, factory() as second:
        job_crud.claim_job(first, job_id=job_id, owner="w1", lease_seconds=LEASE)
        thread, outcome = _in_thread(lambda: job_crud.claim_job(second, job_id=job_id, owner="w2", lease_seconds=LEASE))
        time.sleep(0.2)
        assert thread.is_alive(), "the second claim should wait for the first transaction"
        first.commit()
        thread.join(30)
        second.rollback()
    assert isinstance(outcome.get("error"), LeaseLost)


def test_racing_claims_have_exactly_one_winner(db_settings):
    factory = get_sessionmaker(db_settings)
    with factory() as setup:
        job_ids = [make_job(setup).id for _ in range(5)]
    for job_id in job_ids:
        barrier = threading.Barrier(2)

        def claim(owner: str, job_id: str = job_id, barrier: threading.Barrier = barrier) -> str:
            with factory() as session:
                barrier.wait(10)
                job_crud.claim_job(session, job_id=job_id, owner=owner, lease_seconds=LEASE)
                session.commit()
                return owner

        runs = [_in_thread(lambda owner=owner: claim(owner)) for owner in ("w1", "w2")]
        for thread, _ in runs:
            thread.join(30)
        outcomes = [outcome for _, outcome in runs]
        winners = [o["value"] for o in outcomes if "value" in o]
        assert len(winners) == 1, outcomes
        assert all(isinstance(o["error"], LeaseLost) for o in outcomes if "error" in o)
        with factory() as check:
            job = check.get(Job, job_id)
            assert (job.lease_owner, job.attempts) == (winners[0], 1)


# --- cancellation ------------------------------------------------------------------------------------


def test_cancel_queued_job_is_immediate_and_it_never_starts(session):
    job = make_job(session)
    cancelled = job_crud.request_cancel(session, tenant_id="default", job_id=job.id)
    session.commit()
    assert (cancelled.state, cancelled.cancel_requested) == ("cancelled", True)
    assert cancelled.finished_at is not None
    with pytest.raises(LeaseLost):
        job_crud.claim_job(session, job_id=job.id, owner="w1", lease_seconds=LEASE)


def test_cancel_running_job_flags_it_for_the_worker(session):
    job = make_job(session)
    job_crud.claim_job(session, job_id=job.id, owner="w1", lease_seconds=LEASE)
    session.commit()
    flagged = job_crud.request_cancel(session, tenant_id="default", job_id=job.id)
    assert (flagged.state, flagged.cancel_requested) == ("running", True)
    assert job_crud.update_progress(session, job_id=job.id, owner="w1", done=1) is True
    assert job_crud.finish_job(session, job_id=job.id, owner="w1", state="cancelled").state == "cancelled"


def test_cancel_of_a_dead_workers_job_wins_over_redelivery(session):
    job = make_job(session)
    job_crud.claim_job(session, job_id=job.id, owner="w1", lease_seconds=LEASE)
    session.commit()
    job_crud.request_cancel(session, tenant_id="default", job_id=job.id)
    session.commit()
    _expire_lease(session, job.id)
    with pytest.raises(JobCancelled):
        job_crud.claim_job(session, job_id=job.id, owner="w2", lease_seconds=LEASE)
    session.commit()
    assert job_crud.get_job(session, tenant_id="default", job_id=job.id).state == "cancelled"


@pytest.mark.parametrize("state", ["succeeded", "failed", "cancelled"])
def test_cancel_finished_job_is_an_invalid_transition(session, state):
    job = make_job(session)
    job_crud.claim_job(session, job_id=job.id, owner="w1", lease_seconds=LEASE)
    job_crud.finish_job(session, job_id=job.id, owner="w1", state=state)
    session.commit()
    with pytest.raises(InvalidTransition):
        job_crud.request_cancel(session, tenant_id="default", job_id=job.id)


def test_cancel_unknown_or_foreign_job_is_not_found(session):
    job = make_job(session, tenant_id="acme")
    with pytest.raises(NotFound):
        job_crud.request_cancel(session, tenant_id="other", job_id=job.id)
    assert job_crud.get_job(session, tenant_id="acme", job_id=job.id).state == "queued"


# --- reconciler scans ---------------------------------------------------------------------------------


def test_stale_queued_jobs_and_touch(session):
    stale, fresh = make_job(session), make_job(session)
    session.execute(update(Job).where(Job.id == stale.id).values(updated_at=utcnow() - timedelta(minutes=10)))
    session.commit()
    assert [j.id for j in job_crud.stale_queued_jobs(session, older_than_seconds=60)] == [stale.id]
    assert job_crud.touch_jobs(session, job_ids=[stale.id]) == 1
    assert job_crud.touch_jobs(session, job_ids=[]) == 0
    assert job_crud.stale_queued_jobs(session, older_than_seconds=60) == []
    assert fresh.state == "queued"
