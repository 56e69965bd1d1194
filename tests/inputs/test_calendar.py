"""Trading calendars: future timestamps skip weekends for daily bars, keep intraday bars within
session hours (across daylight-saving changes), honour holidays; bad specs name the key."""

from __future__ import annotations

import pandas as pd
import pytest

from kronos_jobs.core.errors import InvalidRequest
from kronos_jobs.inputs.calendar import TradingCalendar, calendar_for, future_timestamps
from kronos_jobs.jobs.series import future_timestamps as pipeline_future_timestamps

off = pd.tseries.frequencies.to_offset
NY = {"timezone": "America/New_York", "open": "09:30", "close": "16:00"}


def utc(*stamps: str) -> list[pd.Timestamp]:
    return [pd.Timestamp(s, tz="UTC") for s in stamps]


def test_daily_bars_skip_the_weekend_by_default():
    got = future_timestamps(pd.Timestamp("2024-06-13", tz="UTC"), 3, off("1D"))  # a Thursday
    assert list(got) == utc("2024-06-14", "2024-06-17", "2024-06-18")


def test_daily_bars_with_holidays_and_a_seven_day_calendar():
    cal = TradingCalendar.from_spec({"holidays": ["2024-12-25"]})
    got = future_timestamps(pd.Timestamp("2024-12-24", tz="UTC"), 2, off("1D"), cal)
    assert list(got) == utc("2024-12-26", "2024-12-27")
    crypto = TradingCalendar.from_spec({"weekdays": [0, 1, 2, 3, 4, 5, 6]})
    assert list(future_timestamps(pd.Timestamp("2024-06-14", tz="UTC"), 2, off("1D"), crypto)) == utc("2024-06-15", "2024-06-16")


def test_daily_bars_keep_local_midnight_across_dst():
    cal = TradingCalendar.from_spec({"timezone": "America/New_York"})
    last = pd.Timestamp("2024-03-08 00:00", tz="America/New_York")  # Friday, EST
    got = future_timestamps(last, 2, off("1D"), cal)
    assert list(got) == utc("2024-03-11 04:00", "2024-03-12 04:00")  # Monday and Tuesday 00:00 EDT


@pytest.mark.parametrize("last, expected", [
    # Friday 15:50 EST -> 15:55, 16:00, then Monday 09:30 EDT (the clocks moved on Sunday).
    ("2024-03-08 20:50", ("2024-03-08 20:55", "2024-03-08 21:00", "2024-03-11 13:30", "2024-03-11 13:35")),
    # Friday 15:50 EDT -> Monday 09:30 EST after the November change.
    ("2024-11-01 19:50", ("2024-11-01 19:55", "2024-11-01 20:00", "2024-11-04 14:30", "2024-11-04 14:35")),
])
def test_intraday_bars_keep_to_session_hours_across_dst(last, expected):
    got = future_timestamps(pd.Timestamp(last, tz="UTC"), 4, off("5min"), TradingCalendar.from_spec(NY))
    assert list(got) == utc(*expected)


def test_intraday_without_a_calendar_runs_around_the_clock():
    got = future_timestamps(pd.Timestamp("2024-06-14 23:55", tz="UTC"), 2, off("5min"))  # Friday night
    assert list(got) == utc("2024-06-15 00:00", "2024-06-15 00:05")


def test_forecast_pipeline_uses_the_calendar_per_symbol():
    spec = {"default": {"timezone": "UTC"}, "symbols": {"AAPL": NY}}
    assert calendar_for(spec, "AAPL") == NY and calendar_for(spec, "BTC") == {"timezone": "UTC"}
    stamps = pd.Series(pd.date_range("2024-03-08 20:35", periods=4, freq="5min", tz="UTC"))
    got = pipeline_future_timestamps("AAPL", stamps.iloc[-1], 3, "5min", stamps, spec)
    assert list(got) == utc("2024-03-08 20:55", "2024-03-08 21:00", "2024-03-11 13:30")
    daily = pd.Series(pd.date_range("2024-06-12", periods=3, freq="1D", tz="UTC"))
    assert list(pipeline_future_timestamps("X", daily.iloc[-1], 2, None, daily)) == utc("2024-06-17", "2024-06-18")


@pytest.mark.parametrize("spec, field", [
    ({"timezone": "Mars/Base"}, "calendar.timezone"),
    ({"weekdays": [7]}, "calendar.weekdays"),
    ({"weekdays": []}, "calendar.weekdays"),
    ({"open": "09:30"}, "calendar.close"),
    ({"open": "9h", "close": "16:00"}, "calendar.open"),
    ({"open": "16:00", "close": "09:30"}, "calendar.close"),
    ({"holidays": ["Christmas"]}, "calendar.holidays[0]"),
    ({"lunch": "12:00"}, "calendar.lunch"),
])
def test_bad_calendars_name_the_key(spec, field):
    with pytest.raises(InvalidRequest) as err:
        TradingCalendar.from_spec(spec)
    assert err.value.field == field
