"""The synthetic bars used by the demo, the tests and the benchmarks."""

from __future__ import annotations

import pandas as pd
import pytest

from kronos_jobs.cli.sample_data import SESSION_TZ, sample_bars, session_timestamps, symbols
from kronos_jobs.core.names import BAR_COLUMNS


def test_long_format_columns_and_order():
    bars = sample_bars(4, 200)
    assert list(bars.columns) == ["symbol", "timestamp", *BAR_COLUMNS]
    assert str(bars["timestamp"].dt.tz) == "UTC"
    assert bars.groupby("symbol").size().to_dict() == {s: 200 for s in symbols(4)}
    assert bars.equals(bars.sort_values(["symbol", "timestamp"], kind="stable").reset_index(drop=True))


def test_deterministic_and_prefix_stable():
    assert sample_bars(3, 100, seed=5).equals(sample_bars(3, 100, seed=5))
    assert not sample_bars(3, 100, seed=5).equals(sample_bars(3, 100, seed=6))
    one = sample_bars(1, 100, seed=5)
    assert one.equals(sample_bars(3, 100, seed=5).head(100))


def test_bars_are_consistent():
    bars = sample_bars(12, 600)
    assert (bars["low"] > 0).all()
    assert (bars["low"] <= bars[["open", "close"]].min(axis=1)).all()
    assert (bars["high"] >= bars[["open", "close"]].max(axis=1)).all()
    assert (bars["volume"] > 0).all()
    # amount = volume x a price inside the bar
    price = bars["amount"] / bars["volume"]
    assert ((price >= bars["low"] - 0.01) & (price <= bars["high"] + 0.01)).all()
    # a random walk, not a constant
    assert (bars.groupby("symbol")["close"].std() > 0).all()


def test_bars_lie_inside_weekday_sessions():
    local = sample_bars(2, 500)["timestamp"].dt.tz_convert(SESSION_TZ)
    assert (local.dt.day_of_week < 5).all()
    minutes = local.dt.hour * 60 + local.dt.minute
    morning = (minutes > 9 * 60 + 30) & (minutes <= 11 * 60 + 30)
    afternoon = (minutes > 13 * 60) & (minutes <= 15 * 60)
    assert (morning | afternoon).all()
    assert local.dt.strftime("%H:%M").nunique() == 48  # 5-minute bars: 24 per session


def test_future_timestamps_continue_after_the_close():
    last = pd.Timestamp("2024-06-28 15:00", tz=SESSION_TZ)  # a Friday close
    future = session_timestamps(3, start_after=last).tz_convert(SESSION_TZ)
    assert [t.strftime("%a %H:%M") for t in future] == ["Mon 09:35", "Mon 09:40", "Mon 09:45"]


@pytest.mark.parametrize("kwargs", [{"n_symbols": 0}, {"n_bars": 1}, {"freq": "3h"}])
def test_bad_arguments_name_themselves(kwargs):
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name):
        sample_bars(**kwargs)
