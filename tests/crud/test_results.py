"""crud.results: job inputs as Parquet, forecast rows written in bulk and idempotently."""

from __future__ import annotations

import time

import pandas as pd
import pytest

from kronos_jobs.core.errors import NotFound
from kronos_jobs.core.names import RESULT_COLUMNS
from kronos_jobs.crud import results as result_crud
from kronos_jobs.testing.factories import make_bars, make_forecast_rows, make_job


def test_job_input_round_trip(session):
    job = make_job(session)
    bars = make_bars({"AAA": 16, "BBB": 16})
    future = pd.DataFrame({"symbol": ["AAA", "AAA"],
                           "timestamp": pd.date_range("2024-06-18 03:00", periods=2, freq="5min", tz="UTC")})
    stored = result_crud.save_job_input(session, job_id=job.id, tenant_id="default", bars=bars, future=future,
                                        source="inline")
    session.commit()
    assert (stored.n_series, stored.n_bars, stored.source) == (2, 32, "inline")
    loaded_bars, loaded_future = result_crud.load_job_input(session, job_id=job.id)
    pd.testing.assert_frame_equal(loaded_bars, bars, check_dtype=False)
    pd.testing.assert_frame_equal(loaded_future, future, check_dtype=False)
    assert str(loaded_bars["timestamp"].dt.tz) == "UTC"


def test_job_input_without_future_and_non_utc_bars(session):
    job = make_job(session)
    bars = make_bars({"AAA": 4})
    bars["timestamp"] = bars["timestamp"].dt.tz_convert("Asia/Shanghai")  # +08:00, as users send it
    result_crud.save_job_input(session, job_id=job.id, tenant_id="default", bars=bars, future=None, source="csv")
    loaded, future = result_crud.load_job_input(session, job_id=job.id)
    assert future is None
    assert str(loaded["timestamp"].dt.tz) == "UTC"
    assert (loaded["timestamp"] == bars["timestamp"]).all()


def test_missing_input_is_not_found(session):
    with pytest.raises(NotFound):
        result_crud.load_job_input(session, job_id=make_job(session).id)


def test_forecast_round_trip_with_quantiles(session):
    job = make_job(session)
    rows = make_forecast_rows(("BBB", "AAA"), steps=3, quantiles=(0.9, 0.1, 0.5))
    assert result_crud.write_forecasts(session, job_id=job.id, tenant_id="default", rows=rows) == 6
    session.commit()
    out = result_crud.read_forecasts(session, job_id=job.id)
    levels = ["q0.1", "q0.5", "q0.9"]
    expected_quantiles = [f"{q}_{c}" for c in ("open", "high", "low", "close", "volume", "amount") for q in levels]
    assert list(out.columns) == [*RESULT_COLUMNS, *expected_quantiles]
    assert str(out["timestamp"].dt.tz) == "UTC"
    expected = rows.sort_values(["symbol", "timestamp"]).reset_index(drop=True)[list(out.columns)]
    pd.testing.assert_frame_equal(out, expected, check_dtype=False)


def test_forecast_without_quantiles_has_exactly_the_result_columns(session):
    job = make_job(session)
    result_crud.write_forecasts(session, job_id=job.id, tenant_id="default", rows=make_forecast_rows())
    assert list(result_crud.read_forecasts(session, job_id=job.id).columns) == list(RESULT_COLUMNS)


def test_no_rows_is_an_empty_frame_with_the_columns(session):
    out = result_crud.read_forecasts(session, job_id=make_job(session).id)
    assert out.empty and list(out.columns) == list(RESULT_COLUMNS)


def test_rewrite_replaces_instead_of_duplicating(session):
    job = make_job(session)
    result_crud.write_forecasts(session, job_id=job.id, tenant_id="default", rows=make_forecast_rows(seed=1))
    session.commit()
    second = make_forecast_rows(("AAA",), steps=4, seed=2)  # a redelivery that produced other values
    result_crud.write_forecasts(session, job_id=job.id, tenant_id="default", rows=second)
    session.commit()
    out = result_crud.read_forecasts(session, job_id=job.id)
    pd.testing.assert_frame_equal(out, second, check_dtype=False)


def test_rows_of_other_jobs_are_untouched(session):
    a, b = make_job(session), make_job(session)
    result_crud.write_forecasts(session, job_id=a.id, tenant_id="default", rows=make_forecast_rows())
    result_crud.write_forecasts(session, job_id=b.id, tenant_id="default", rows=make_forecast_rows(("CCC",)))
    result_crud.write_forecasts(session, job_id=a.id, tenant_id="default", rows=make_forecast_rows(("AAA",)))
    assert set(result_crud.read_forecasts(session, job_id=b.id)["symbol"]) == {"CCC"}


def test_explicit_steps_are_kept(session):
    job = make_job(session)
    rows = make_forecast_rows(("AAA",), steps=3)
    rows["step"] = [0, 1, 2]
    result_crud.write_forecasts(session, job_id=job.id, tenant_id="default", rows=rows.iloc[::-1])
    assert list(result_crud.read_forecasts(session, job_id=job.id)["timestamp"]) == list(rows["timestamp"])


@pytest.mark.parametrize("broken", ["drop_close", "nan_close"])
def test_invalid_rows_are_refused_with_the_column_named(session, broken):
    rows = make_forecast_rows()
    if broken == "drop_close":
        rows = rows.drop(columns="close")
    else:
        rows.loc[1, "close"] = float("nan")
    with pytest.raises(ValueError, match="close"):
        result_crud.write_forecasts(session, job_id=make_job(session).id, tenant_id="default", rows=rows)


def test_quantile_column_order_is_stable():
    columns = ["q0.9_close", "symbol", "q0.1_open", "q0.1_close", "q0.05_close", "close"]
    assert result_crud.quantile_columns(columns) == ["q0.1_open", "q0.05_close", "q0.1_close", "q0.9_close"]


def test_ten_thousand_rows_write_in_bulk(session):
    job = make_job(session)
    rows = make_forecast_rows([f"S{i:04d}" for i in range(500)], steps=20, quantiles=(0.1, 0.9))
    started = time.perf_counter()
    for _ in range(2):  # the second write is the idempotent replace
        assert result_crud.write_forecasts(session, job_id=job.id, tenant_id="default", rows=rows) == 10_000
        session.commit()
    elapsed = time.perf_counter() - started
    assert len(result_crud.read_forecasts(session, job_id=job.id)) == 10_000
    # Generous: one-row-at-a-time ORM inserts take far longer on these 2 shared cores.
    assert elapsed < 20, f"writing 2 x 10k rows took {elapsed:.1f} s"
