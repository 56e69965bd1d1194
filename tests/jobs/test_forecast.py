"""The forecast lifecycle run in-process (no broker, no worker) on a migrated test database."""

from __future__ import annotations

import time

import pandas as pd
import pytest

from kronos_jobs.core.errors import LeaseLost
from kronos_jobs.core.names import DEFAULT_TENANT, RESULT_COLUMNS, JobState, quantile_column
from kronos_jobs.crud import jobs as job_crud
from kronos_jobs.db.session import session_scope
from kronos_jobs.jobs import forecast, model_cache
from kronos_jobs.jobs.forecast import run_forecast_job
from kronos_jobs.jobs.recovery import requeue_stale_jobs
from kronos_jobs.testing.checkpoints import TINY_MAX_CONTEXT
from kronos_jobs.testing.factories import load_forecast_job as load
from kronos_jobs.testing.factories import make_bars, worker_identity
from kronos_jobs.testing.factories import submit_forecast_job as submit


def test_all_rows_and_metadata(job_settings, tiny_checkpoint):
    bars = make_bars({"AAA": 60, "BBB": 30, "CCC": 80})  # different context lengths in one job
    job_id = submit(job_settings, tiny_checkpoint, bars)

    assert run_forecast_job(job_id, settings=job_settings, identity=worker_identity(job_settings)) is JobState.SUCCEEDED
    job, rows = load(job_settings, job_id)

    assert job.state == JobState.SUCCEEDED.value and job.error is None and job.symbol_errors == []
    assert (job.progress_done, job.progress_total, job.attempts) == (3, 3, 1)
    assert list(rows.columns[:len(RESULT_COLUMNS)]) == list(RESULT_COLUMNS)
    assert {quantile_column(q, "close") for q in (0.1, 0.9)} <= set(rows.columns)
    assert len(rows) == 3 * 4 and rows[list(RESULT_COLUMNS[2:])].notna().all().all()
    for symbol, group in rows.groupby("symbol"):
        last = bars[bars.symbol == symbol].timestamp.max()
        expected = pd.date_range(last + pd.Timedelta("5min"), periods=4, freq="5min")
        assert list(group.timestamp) == list(expected)
    meta = job.execution_metadata
    assert meta["device_requested"] == "cpu" and meta["device_resolved"] == "cpu"
    assert meta["device_warning"] is None and meta["device_name"]
    assert meta["queue"] == "forecast.cpu" and meta["worker_pid"] > 0 and meta["worker_host"]
    assert meta["model"] == str(tiny_checkpoint) and meta["model_source"] == "local"
    assert meta["max_context"] == TINY_MAX_CONTEXT and len(meta["model_checksum"]) == 64
    assert meta["seed"] == 7 and meta["sampling"]["sample_count"] == 3 and meta["quantiles"] == [0.1, 0.9]
    assert meta["torch_version"] and "cuda_version" in meta and meta["torch_threads"] >= 1
    timings = meta["timings"]
    assert {"queued_at", "started_at", "finished_at", "model_load_seconds", "inference_seconds"} <= set(timings)
    assert timings["inference_seconds"] > 0


def test_same_seed_same_forecast(job_settings, tiny_checkpoint):
    bars = make_bars({"AAA": 40})
    first, second = submit(job_settings, tiny_checkpoint, bars), submit(job_settings, tiny_checkpoint, bars)
    for job_id in (first, second):
        run_forecast_job(job_id, settings=job_settings, identity=worker_identity(job_settings))
    pd.testing.assert_frame_equal(load(job_settings, first)[1], load(job_settings, second)[1])


def test_partial_success_keeps_good_series(job_settings, tiny_checkpoint):
    bars = make_bars({"GOOD": 40, "NANS": 40, "TINY": 1})
    bars.loc[bars.index[bars.symbol == "NANS"][-3], "close"] = float("nan")
    job_id = submit(job_settings, tiny_checkpoint, bars)

    assert run_forecast_job(job_id, settings=job_settings, identity=worker_identity(job_settings)) is JobState.PARTIALLY_SUCCEEDED
    job, rows = load(job_settings, job_id)
    assert set(rows.symbol) == {"GOOD"} and len(rows) == 4
    codes = {e["symbol"]: e["code"] for e in job.symbol_errors}
    assert codes == {"NANS": "nan_values", "TINY": "too_few_bars"}
    assert job.error["code"] == "some_series_failed" and job.progress_done == 3


def test_all_series_failing_fails_the_job(job_settings, tiny_checkpoint):
    job_id = submit(job_settings, tiny_checkpoint, make_bars({"TINY": 1}))
    assert run_forecast_job(job_id, settings=job_settings, identity=worker_identity(job_settings)) is JobState.FAILED
    job, rows = load(job_settings, job_id)
    assert job.error["code"] == "all_series_failed" and rows.empty


def test_given_future_timestamps_are_used(job_settings, tiny_checkpoint):
    bars = make_bars({"AAA": 40})
    future = pd.DataFrame({"symbol": "AAA",
                           "timestamp": pd.date_range(bars.timestamp.max() + pd.Timedelta("1h"), periods=4, freq="1h")})
    job_id = submit(job_settings, tiny_checkpoint, bars, future=future)
    run_forecast_job(job_id, settings=job_settings, identity=worker_identity(job_settings))
    assert list(load(job_settings, job_id)[1].timestamp) == list(future.timestamp)


class CancelDuringCall:
    """A predictor proxy: the user cancels the job while call number `at` runs."""

    def __init__(self, predictor, settings, job_id, at):
        self.predictor, self.settings, self.job_id, self.at, self.calls = predictor, settings, job_id, at, 0

    def predict_batch(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.at:
            with session_scope(self.settings) as session:
                job_crud.request_cancel(session, tenant_id=DEFAULT_TENANT, job_id=self.job_id)
        return self.predictor.predict_batch(*args, **kwargs)


def cancel_during_call(monkeypatch, settings, job_id, at):
    real = model_cache.get_predictor

    def patched(spec, device, settings_):
        entry, cached = real(spec, device, settings_)
        patched.proxy = CancelDuringCall(entry.predictor, settings, job_id, at)
        return type(entry)(**{**entry.__dict__, "predictor": patched.proxy}), cached

    monkeypatch.setattr(model_cache, "get_predictor", patched)
    return patched


@pytest.mark.parametrize(("symbols", "progress_done", "kept"), [
    ("ABCDE", 2, ["A", "B"]),  # noticed at the boundary after the first chunk of 2; its rows are kept
    ("A", 0, ["A"]),  # the only chunk is the last: noticed by the finish, which rolls back and cancels
], ids=["between-chunks", "during-the-last-chunk"])
def test_cancel_while_running(job_settings, tiny_checkpoint, monkeypatch, symbols, progress_done, kept):
    settings = job_settings.model_copy(update={"cancel_check_seconds": 3600.0})  # chunk boundaries only
    job_id = submit(settings, tiny_checkpoint, make_bars({s: 30 for s in symbols}))
    patched = cancel_during_call(monkeypatch, settings, job_id, at=1)
    assert run_forecast_job(job_id, settings=settings, identity=worker_identity(settings)) is JobState.CANCELLED
    job, rows = load(settings, job_id)
    assert job.state == "cancelled" and sorted(rows.symbol.unique()) == kept and patched.proxy.calls == 1
    assert job.progress_done == progress_done and job.error["code"] == "cancelled"


def test_progress_moves_within_a_chunk(job_settings, tiny_checkpoint, monkeypatch):
    """Decode steps are written as progress.detail while a chunk runs, not only at its end."""
    settings = job_settings.model_copy(update={"max_batch_size": 8, "progress_write_seconds": 1e-9})
    job_id = submit(settings, tiny_checkpoint, make_bars({"A": 30, "B": 30, "C": 30}))  # one chunk of three
    writes, real = [], job_crud.update_progress

    def recording(session, **kwargs):
        writes.append((kwargs["done"], dict(kwargs.get("detail") or {})))
        return real(session, **kwargs)

    monkeypatch.setattr(job_crud, "update_progress", recording)
    assert run_forecast_job(job_id, settings=settings, identity=worker_identity(settings)) is JobState.SUCCEEDED
    total = 3 * 4  # symbols x pred_len
    steps = [detail["series_steps_done"] for _, detail in writes]
    assert writes and all(done == 0 for done, _ in writes)  # no symbol finished yet: the chunk is still running
    assert all(detail["series_steps_total"] == total for _, detail in writes)
    assert steps == sorted(steps) and 0 < steps[0] and steps[-1] < total
    job, _ = load(settings, job_id)
    assert (job.progress_done, job.progress_total) == (3, 3)
    assert job.execution_metadata["series_steps"] == total


@pytest.mark.parametrize(("at", "kept"), [(1, []), (2, ["A", "B"])], ids=["first-chunk", "second-chunk"])
def test_cancel_stops_the_decode_within_a_step_and_keeps_finished_chunks(job_settings, tiny_checkpoint, monkeypatch,
                                                                        at, kept):
    settings = job_settings.model_copy(update={"cancel_check_seconds": 0.001})
    job_id = submit(settings, tiny_checkpoint, make_bars({s: 30 for s in "ABCDE"}), pred_len=TINY_MAX_CONTEXT - 30)
    patched = cancel_during_call(monkeypatch, settings, job_id, at=at)
    steps = []
    real_stop = forecast.CancelFlag.__call__
    monkeypatch.setattr(forecast.CancelFlag, "__call__", lambda self: steps.append(1) or real_stop(self))
    assert run_forecast_job(job_id, settings=settings, identity=worker_identity(settings)) is JobState.CANCELLED
    job, rows = load(settings, job_id)
    assert job.state == "cancelled" and sorted(rows.symbol.unique()) == kept
    assert patched.proxy.calls == at  # no chunk started after the cancel
    # Stopped within a step or two of the cancel, far from the chunk's last step.
    per_chunk = TINY_MAX_CONTEXT - 30 - 1
    assert len(steps) <= (at - 1) * per_chunk + 3 < at * per_chunk


def test_queued_cancel_never_starts(job_settings, tiny_checkpoint):
    job_id = submit(job_settings, tiny_checkpoint, make_bars({"A": 30}))
    with session_scope(job_settings) as session:
        job_crud.request_cancel(session, tenant_id=DEFAULT_TENANT, job_id=job_id)
    with pytest.raises(LeaseLost):  # already cancelled: this delivery does nothing
        run_forecast_job(job_id, settings=job_settings, identity=worker_identity(job_settings))
    job, _ = load(job_settings, job_id)
    assert job.state == "cancelled" and job.attempts == 0 and job.started_at is None


def test_second_delivery_while_lease_held_does_nothing(job_settings, tiny_checkpoint):
    job_id = submit(job_settings, tiny_checkpoint, make_bars({"A": 30}))
    with session_scope(job_settings) as session:
        job_crud.claim_job(session, job_id=job_id, owner="other-worker", lease_seconds=60)
    with pytest.raises(LeaseLost):
        run_forecast_job(job_id, settings=job_settings, identity=worker_identity(job_settings))
    job, rows = load(job_settings, job_id)
    assert job.state == "running" and job.lease_owner == "other-worker" and job.attempts == 1 and rows.empty


def test_delivery_after_lease_expiry_takes_over(job_settings, tiny_checkpoint):
    job_id = submit(job_settings, tiny_checkpoint, make_bars({"A": 30, "B": 30}))
    with session_scope(job_settings) as session:  # a worker claimed the job, then died
        job_crud.claim_job(session, job_id=job_id, owner="dead-worker", lease_seconds=0.01)
    time.sleep(0.05)
    assert run_forecast_job(job_id, settings=job_settings, identity=worker_identity(job_settings)) is JobState.SUCCEEDED
    job, rows = load(job_settings, job_id)
    assert job.attempts == 2 and job.lease_owner is None and len(rows) == 8


def test_results_written_once(job_settings, tiny_checkpoint):
    job_id = submit(job_settings, tiny_checkpoint, make_bars({"A": 30, "B": 30}))
    run_forecast_job(job_id, settings=job_settings, identity=worker_identity(job_settings))
    first_job, first_rows = load(job_settings, job_id)
    with pytest.raises(LeaseLost):  # a duplicate message after the job finished
        run_forecast_job(job_id, settings=job_settings, identity=worker_identity(job_settings))
    job, rows = load(job_settings, job_id)
    assert job.finished_at == first_job.finished_at and job.attempts == 1
    pd.testing.assert_frame_equal(rows, first_rows)


def test_attempt_cap_ends_a_job_that_keeps_dying(job_settings, tiny_checkpoint):
    job_id = submit(job_settings, tiny_checkpoint, make_bars({"A": 30}))
    for _ in range(job_settings.max_retries + 1):  # each delivery claimed the job and died
        with session_scope(job_settings) as session:
            job_crud.claim_job(session, job_id=job_id, owner="dying", lease_seconds=0.001)
        time.sleep(0.01)
    assert run_forecast_job(job_id, settings=job_settings, identity=worker_identity(job_settings)) is JobState.FAILED
    job, _ = load(job_settings, job_id)
    assert job.error["code"] == "too_many_attempts"


def test_reconciler_resends_stale_jobs(job_settings, tiny_checkpoint, monkeypatch):
    from kronos_jobs.jobs import recovery

    sent = []
    monkeypatch.setattr(recovery, "send_job", lambda settings, job_id, queue, priority, start=None: sent.append((job_id, queue)))
    job_id = submit(job_settings, tiny_checkpoint, make_bars({"A": 30}))
    with session_scope(job_settings) as session:
        assert requeue_stale_jobs(session, job_settings, queued_older_than=3600) == []
    time.sleep(0.02)
    with session_scope(job_settings) as session:
        assert requeue_stale_jobs(session, job_settings, queued_older_than=0.01) == [job_id]
    assert sent == [(job_id, "forecast.cpu")]


def test_unknown_model_names_the_field(job_settings):
    from kronos_jobs.core.errors import InvalidRequest

    with pytest.raises(InvalidRequest) as caught:
        submit(job_settings, "no-such-model", make_bars({"A": 30}))
    assert caught.value.details[0]["field"] == "model" and "kronos-small" in caught.value.message


def test_soft_time_limit_fails_the_job_and_keeps_no_rows(job_settings, tiny_checkpoint, monkeypatch):
    from celery.exceptions import SoftTimeLimitExceeded

    from kronos_jobs.jobs import forecast

    def too_slow(*args, **kwargs):
        raise SoftTimeLimitExceeded()

    monkeypatch.setattr(forecast, "_predict_chunk", too_slow)
    job_id = submit(job_settings, tiny_checkpoint, make_bars({"A": 30}))
    assert run_forecast_job(job_id, settings=job_settings, identity=worker_identity(job_settings)) is JobState.FAILED
    job, rows = load(job_settings, job_id)
    assert job.error["code"] == "time_limit" and rows.empty and job.lease_owner is None


# --- time zones: the model sees the input's local wall-clock time, results stay UTC -------------------


def inline_series(settings, suffix: str, periods: int = 40):
    """make_bars values at local times 09:30, 09:35, ... given with `suffix` ("" naive, "+08:00")."""
    from kronos_jobs.inputs.parsing import parse_inline_series

    frame = make_bars({"AAA": periods})
    local = pd.date_range("2024-06-18 09:30", periods=periods, freq="5min")
    bars = [{"timestamp": t.isoformat() + suffix, **{c: float(frame[c].iloc[i]) for c in ("open", "high", "low", "close", "volume", "amount")}}
            for i, t in enumerate(local)]
    return parse_inline_series([{"symbol": "AAA", "bars": bars}], pred_len=4, settings=settings), local


def spy_model_timestamps(monkeypatch) -> list[tuple]:
    """Record the (x_timestamp, y_timestamp) lists every predict_batch call receives."""
    real, calls = model_cache.get_predictor, []

    class Spy:
        def __init__(self, predictor):
            self.predictor = predictor

        def predict_batch(self, df_list, x_list, y_list, **kwargs):
            calls.append((list(x_list), list(y_list)))
            return self.predictor.predict_batch(df_list, x_list, y_list, **kwargs)

    def patched(spec, device, settings):
        entry, cached = real(spec, device, settings)
        return type(entry)(**{**entry.__dict__, "predictor": Spy(entry.predictor)}), cached

    monkeypatch.setattr(model_cache, "get_predictor", patched)
    return calls


def test_offset_input_reaches_the_model_in_local_hours(job_settings, tiny_checkpoint, monkeypatch):
    series, local = inline_series(job_settings, "+08:00")
    calls = spy_model_timestamps(monkeypatch)
    job_id = submit(job_settings, tiny_checkpoint, series.bars)
    assert run_forecast_job(job_id, settings=job_settings, identity=worker_identity(job_settings)) is JobState.SUCCEEDED
    [([x], [y])] = calls
    assert list(x) == list(local) and list(x.hour)[:6] == [9] * 6  # 09:30 +08:00, not 01:30 UTC
    assert list(y) == list(pd.date_range(local[-1] + pd.Timedelta("5min"), periods=4, freq="5min"))
    _, rows = load(job_settings, job_id)
    assert list(rows.timestamp) == list((y - pd.Timedelta(hours=8)).tz_localize("UTC"))  # results in UTC


def test_naive_local_and_offset_input_forecast_identically(job_settings, tiny_checkpoint):
    naive, _ = inline_series(job_settings, "")
    offset, _ = inline_series(job_settings, "+08:00")
    first, second = submit(job_settings, tiny_checkpoint, naive.bars), submit(job_settings, tiny_checkpoint, offset.bars)
    for job_id in (first, second):
        assert run_forecast_job(job_id, settings=job_settings, identity=worker_identity(job_settings)) is JobState.SUCCEEDED
    a, b = load(job_settings, first)[1], load(job_settings, second)[1]
    pd.testing.assert_frame_equal(a.drop(columns="timestamp"), b.drop(columns="timestamp"))  # identical values
    assert list(b.timestamp) == list(a.timestamp - pd.Timedelta(hours=8))
    assert str(b.timestamp.dt.tz) == "UTC" and b.timestamp.iloc[0] == pd.Timestamp("2024-06-18 04:50", tz="UTC")
