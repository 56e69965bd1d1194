"""Schedules driven through `tick(settings, now)` with chosen clocks: due occurrences, exactly one
run per (schedule, time) under concurrent triggers, daylight-saving days, catch-up after downtime,
fan-out into forecast jobs and the run's final state. No worker runs: jobs are finished through
the crud functions, as a worker would."""

from __future__ import annotations

import threading
from datetime import datetime, timedelta, timezone

import pytest
from sqlalchemy import func, select

from kronos_jobs.core.errors import InvalidRequest
from kronos_jobs.core.names import DEFAULT_TENANT, JobState
from kronos_jobs.crud import jobs as job_crud
from kronos_jobs.crud import schedules as schedule_crud
from kronos_jobs.crud import series as series_crud
from kronos_jobs.db.models import Job, ScheduleRun
from kronos_jobs.db.session import session_scope
from kronos_jobs.jobs import schedules
from kronos_jobs.testing.factories import make_bars

UTC = timezone.utc
NY = "America/New_York"


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


@pytest.fixture
def store(db_settings):
    """Three symbols with 40 five-minute bars and one with 5 (too little history for lookback 32)."""
    settings = db_settings.model_copy(update={"schedule_batch_symbols": 2})
    bars = make_bars({"AAA": 40, "BBB": 40, "CCC": 40, "TINY": 5})
    with session_scope(settings) as session:
        series_crud.upsert_bars(session, tenant_id=DEFAULT_TENANT, bars=bars,
                                freqs={s: "5min" for s in bars.symbol.unique()})
    return settings


def make_schedule(settings, anchor: datetime, **overrides):
    fields = dict(name="nightly", cron="0 18 * * 1-5", timezone=NY, symbols=None, freq=None, model="random:mini",
                  device="cpu", lookback=32, pred_len=4, sampling={"seed": 1}, quantiles=None, calendar={},
                  min_history=None, enabled=True)
    fields.update(overrides)
    with session_scope(settings) as session:
        schedule = schedules.create_schedule(session, tenant_id=DEFAULT_TENANT, fields=fields)
        schedule_crud.update_schedule(session, tenant_id=DEFAULT_TENANT, schedule_id=schedule.id,
                                      changes={"anchor_at": anchor})
        return schedule.id


def runs_of(settings, schedule_id):
    with session_scope(settings) as session:
        runs = schedule_crud.list_runs(session, tenant_id=DEFAULT_TENANT, schedule_id=schedule_id)
        for run in runs:
            session.expunge(run)
        return runs


def finish_jobs(settings, state=JobState.SUCCEEDED):
    with session_scope(settings) as session:
        for job in session.scalars(select(Job).where(Job.state == JobState.QUEUED.value)):
            job_crud.claim_job(session, job_id=job.id, owner="test", lease_seconds=60)
            job_crud.finish_job(session, job_id=job.id, owner="test", state=state)


# --- cron in a zone (pure) ---------------------------------------------------------------------------


@pytest.mark.parametrize("now, expected", [
    (utc(2024, 3, 8, 23, 30), utc(2024, 3, 8, 23, 0)),     # Friday before the change: EST, 18:00 = 23:00Z
    (utc(2024, 3, 11, 22, 30), utc(2024, 3, 11, 22, 0)),   # Monday after spring-forward: EDT, 18:00 = 22:00Z
    (utc(2024, 11, 1, 22, 30), utc(2024, 11, 1, 22, 0)),   # Friday before fall-back: EDT
    (utc(2024, 11, 4, 23, 30), utc(2024, 11, 4, 23, 0)),   # Monday after: EST
    (utc(2024, 3, 11, 22, 0), utc(2024, 3, 11, 22, 0)),    # an occurrence exactly at now counts
])
def test_previous_occurrence_follows_new_york_wall_clock(now, expected):
    assert schedules.previous_occurrence("0 18 * * 1-5", NY, now) == expected


def test_nonexistent_and_ambiguous_wall_times():
    # 02:30 does not exist on 2024-03-10 in New York: it runs just after the jump, 03:30 EDT.
    assert schedules.next_occurrence("30 2 * * *", NY, utc(2024, 3, 10, 5)) == utc(2024, 3, 10, 7, 30)
    # 01:30 happens twice on 2024-11-03: once, at the first (EDT) one, then the next day.
    first = schedules.next_occurrence("30 1 * * *", NY, utc(2024, 11, 3, 4))
    assert first == utc(2024, 11, 3, 5, 30)
    assert schedules.next_occurrence("30 1 * * *", NY, first) == utc(2024, 11, 4, 6, 30)


@pytest.mark.parametrize("cron", ["", "0 18 * *", "0 18 * * 1-5 0", "61 * * * *", "every night"])
def test_bad_cron_names_the_field(cron):
    with pytest.raises(InvalidRequest) as err:
        schedules.check_cron(cron)
    assert err.value.field == "cron"


# --- ticks -------------------------------------------------------------------------------------------


def test_tick_creates_one_run_fans_out_and_finishes(store):
    schedule_id = make_schedule(store, anchor=utc(2024, 6, 17, 12))
    assert schedules.tick(store, utc(2024, 6, 17, 21, 59)) == []  # 17:59 New York: not yet
    (run_id,) = schedules.tick(store, utc(2024, 6, 17, 22, 0, 30))
    assert schedules.tick(store, utc(2024, 6, 17, 22, 5)) == []  # the same occurrence: no second run

    (run,) = runs_of(store, schedule_id)
    assert run.id == run_id and run.scheduled_for == utc(2024, 6, 17, 22) and run.trigger == "schedule"
    assert run.state == "running" and (run.progress_done, run.progress_total) == (1, 4)
    assert [e["symbol"] for e in run.symbol_errors] == ["TINY"]
    assert run.symbol_errors[0]["code"] == "too_little_history"
    with session_scope(store) as session:
        jobs = schedule_crud.run_jobs(session, run_id=run_id)
        assert [j.params["n_series"] for j in jobs] == [2, 1]  # batches of KRONOS_SCHEDULE_BATCH_SYMBOLS
        assert all(j.params["freq"] == {s: "5min" for s in j.params["freq"]} for j in jobs)
        assert {j.params["source"] for j in jobs} == {"store"}
        from kronos_jobs.crud import results

        bars, _ = results.load_job_input(session, job_id=jobs[0].id)
        assert list(bars.symbol.unique()) == ["AAA", "BBB"] and len(bars) == 64  # latest lookback=32 each

    finish_jobs(store)
    schedules.tick(store, utc(2024, 6, 17, 22, 6))
    (run,) = runs_of(store, schedule_id)
    assert run.state == "partially_succeeded" and run.progress_done == 4 and run.finished_at is not None
    assert run.error["code"] == "some_symbols_failed"


def test_all_symbols_ok_ends_succeeded(store):
    schedule_id = make_schedule(store, anchor=utc(2024, 6, 17, 12), symbols=["AAA", "BBB"])
    schedules.tick(store, utc(2024, 6, 17, 22, 1))
    finish_jobs(store)
    schedules.tick(store, utc(2024, 6, 17, 22, 2))
    (run,) = runs_of(store, schedule_id)
    assert run.state == "succeeded" and (run.progress_done, run.progress_total) == (2, 2) and run.error is None


def test_catch_up_runs_only_the_latest_missed_occurrence(store):
    schedule_id = make_schedule(store, anchor=utc(2024, 6, 17, 0), symbols=["AAA"])
    # The beat was down Monday to Thursday noon: Mon, Tue and Wed 18:00 were missed.
    assert len(schedules.tick(store, utc(2024, 6, 20, 16))) == 1
    assert [r.scheduled_for for r in runs_of(store, schedule_id)] == [utc(2024, 6, 19, 22)]
    assert schedules.tick(store, utc(2024, 6, 20, 17)) == []
    assert len(schedules.tick(store, utc(2024, 6, 20, 22, 1))) == 1  # Thursday's own occurrence
    assert [r.scheduled_for for r in runs_of(store, schedule_id)] == [utc(2024, 6, 20, 22), utc(2024, 6, 19, 22)]


@pytest.mark.parametrize("start", [utc(2024, 3, 8, 12), utc(2024, 11, 1, 12)], ids=["march", "november"])
def test_ticks_across_a_dst_change_make_one_run_per_weekday(db_settings, start):
    schedule_id = make_schedule(db_settings, anchor=start, symbols=["NONE"])
    now = start
    while now < start + timedelta(days=4):  # Friday noon to Tuesday noon, a tick every 20 minutes
        schedules.tick(db_settings, now)
        now += timedelta(minutes=20)
    fired = sorted(r.scheduled_for for r in runs_of(db_settings, schedule_id))
    local = [f.astimezone(__import__("zoneinfo").ZoneInfo(NY)) for f in fired]
    assert [(t.strftime("%a"), t.hour, t.minute) for t in local] == [("Fri", 18, 0), ("Mon", 18, 0)]
    assert fired[0].hour != fired[1].hour  # the UTC hour moved with daylight saving


def test_disabled_schedule_does_not_fire_and_reenabling_skips_the_past(store):
    schedule_id = make_schedule(store, anchor=utc(2024, 6, 17, 0), symbols=["AAA"], enabled=False)
    assert schedules.tick(store, utc(2024, 6, 17, 22, 1)) == []
    with session_scope(store) as session:
        schedules.update_schedule(session, tenant_id=DEFAULT_TENANT, schedule_id=schedule_id, changes={"enabled": True})
    assert schedules.tick(store, utc(2024, 6, 17, 22, 2)) == []  # before the re-enable: not due


# --- exactly one run ---------------------------------------------------------------------------------


def _race(target, n=2):
    barrier = threading.Barrier(n)
    results, errors = [], []

    def body():
        try:
            barrier.wait()
            results.append(target())
        except Exception as exc:  # surfaced by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=body) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    return results


def test_two_concurrent_ticks_create_one_run(store):
    schedule_id = make_schedule(store, anchor=utc(2024, 6, 17, 12), symbols=["AAA", "BBB", "CCC"])
    created = _race(lambda: schedules.tick(store, utc(2024, 6, 17, 22, 0, 5)))
    assert sorted(len(c) for c in created) == [0, 1]
    assert len(runs_of(store, schedule_id)) == 1
    with session_scope(store) as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 2  # 3 symbols, batches of 2


def test_two_concurrent_manual_triggers_create_one_run(store):
    schedule_id = make_schedule(store, anchor=utc(2024, 6, 17, 12), symbols=["AAA"])
    when = utc(2024, 6, 18, 9, 30)
    results = _race(lambda: schedules.trigger_run(store, tenant_id=DEFAULT_TENANT, schedule_id=schedule_id,
                                                  scheduled_for=when))
    assert sorted(created for _, created in results) == [False, True]
    assert len({run.id for run, _ in results}) == 1
    fanned = _race(lambda: schedules.fan_out(store, results[0][0].id))
    assert sum(r is not None for r in fanned) == 1  # the fan-out is claimed once
    with session_scope(store) as session:
        assert session.scalar(select(func.count()).select_from(ScheduleRun)) == 1
        assert session.scalar(select(func.count()).select_from(Job)) == 1


def test_a_fan_out_that_died_is_retried_without_duplicate_jobs(store, monkeypatch):
    schedule_id = make_schedule(store, anchor=utc(2024, 6, 17, 12), symbols=["AAA", "BBB", "CCC"], enabled=False)
    run, _ = schedules.trigger_run(store, tenant_id=DEFAULT_TENANT, schedule_id=schedule_id,
                                   scheduled_for=utc(2024, 6, 18, 9))
    real = schedules._submit_batch

    def dies_on_second_batch(session, settings, schedule, run_id, batch, *args):
        if batch == 1:
            raise RuntimeError("process killed")
        return real(session, settings, schedule, run_id, batch, *args)

    monkeypatch.setattr(schedules, "_submit_batch", dies_on_second_batch)
    with pytest.raises(RuntimeError):
        schedules.fan_out(store, run.id)
    monkeypatch.setattr(schedules, "_submit_batch", real)
    now = datetime.now(UTC)
    schedules.tick(store, now)  # the fan-out is fresh: not taken over yet
    assert runs_of(store, schedule_id)[0].state == "queued"
    with session_scope(store) as session:
        session.get(ScheduleRun, run.id).updated_at = now - timedelta(seconds=schedules.FANOUT_STALL_SECONDS + 1)
    schedules.tick(store, now)
    (after,) = runs_of(store, schedule_id)
    assert after.state == "running" and after.progress_total == 3
    with session_scope(store) as session:
        assert session.scalar(select(func.count()).select_from(Job)) == 2  # batch 0 was not submitted twice
        assert len(schedule_crud.run_jobs(session, run_id=run.id)) == 2


def test_a_stored_cron_that_never_fires_is_skipped_without_stopping_the_others(job_settings):
    # Such a cron is refused by the API now (check_cron); one stored before must not stall every schedule.
    from datetime import datetime, timezone

    from kronos_jobs.crud import schedules as schedule_crud
    from kronos_jobs.db.session import session_scope
    from kronos_jobs.jobs import schedules

    with session_scope(job_settings) as session:
        never = schedules.create_schedule(session, tenant_id="default", fields=dict(
            name="never", cron="0 18 * * *", timezone="UTC", symbols=["NONE"], model="random:mini"))
        fine = schedules.create_schedule(session, tenant_id="default", fields=dict(
            name="fine", cron="* * * * *", timezone="UTC", symbols=["NONE"], model="random:mini"))
        schedule_crud.update_schedule(session, tenant_id="default", schedule_id=never.id, changes={"cron": "0 0 30 2 *"})
        schedule_crud.update_schedule(session, tenant_id="default", schedule_id=fine.id, changes={
            "anchor_at": datetime(2026, 1, 1, tzinfo=timezone.utc)})
    created = schedules.tick(job_settings, now=datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc))
    with session_scope(job_settings) as session:
        assert len(created) == 1
        assert [r.id for r in schedule_crud.list_runs(session, tenant_id="default", schedule_id=fine.id)] == created
        assert schedule_crud.list_runs(session, tenant_id="default", schedule_id=never.id) == []
