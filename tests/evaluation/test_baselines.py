"""Baselines on hand-made series: persistence, the previous session's / week's bar, drift."""

from __future__ import annotations

import numpy as np
import pandas as pd

from kronos_jobs.evaluation.baselines import DAILY_SEASON, INTRADAY_SEASON, drift, naive, season_of, seasonal_naive


def test_naive_and_drift():
    context = np.array([[1.0, 10.0], [2.0, 10.0], [4.0, 13.0]])
    np.testing.assert_array_equal(naive(context, 2), [[4.0, 13.0], [4.0, 13.0]])
    # slope (4 - 1) / 2 = 1.5 and (13 - 10) / 2 = 1.5 per bar
    np.testing.assert_array_equal(drift(context, 3), [[5.5, 14.5], [7.0, 16.0], [8.5, 17.5]])


def test_intraday_seasonal_naive_is_the_previous_sessions_same_bar():
    # Two sessions of four hourly bars (09:00-12:00); the origin is day 2 at 10:00.
    day1 = pd.date_range("2024-06-17 09:00", periods=4, freq="1h", tz="UTC")
    day2 = pd.date_range("2024-06-18 09:00", periods=2, freq="1h", tz="UTC")
    stamps = day1.append(day2)
    values = np.arange(len(stamps), dtype=float)[:, None]  # value = position
    assert season_of(stamps) == INTRADAY_SEASON
    targets = pd.DatetimeIndex(["2024-06-18 11:00", "2024-06-18 12:00", "2024-06-19 09:00"], tz="UTC")
    # 11:00 and 12:00 of day 1 (positions 2 and 3); day 3 09:00 -> day 2 09:00 (position 4), the latest known
    np.testing.assert_array_equal(seasonal_naive(stamps, values, targets, INTRADAY_SEASON)[:, 0], [2, 3, 4])


def test_daily_seasonal_naive_is_the_previous_weeks_bar_and_skips_a_holiday():
    stamps = pd.bdate_range("2024-06-03", "2024-06-14", tz="UTC")  # two weeks of weekdays
    stamps = stamps.delete(stamps.get_loc(pd.Timestamp("2024-06-12", tz="UTC")))  # a Wednesday holiday
    values = np.arange(len(stamps), dtype=float)[:, None]
    assert season_of(stamps) == DAILY_SEASON
    targets = pd.DatetimeIndex(["2024-06-17", "2024-06-19"], tz="UTC")  # next Monday, next Wednesday
    got = seasonal_naive(stamps, values, targets, DAILY_SEASON)[:, 0]
    monday = stamps.get_loc(pd.Timestamp("2024-06-10", tz="UTC"))
    wednesday_before = stamps.get_loc(pd.Timestamp("2024-06-05", tz="UTC"))  # 06-12 missing: two weeks back
    np.testing.assert_array_equal(got, [monday, wednesday_before])
