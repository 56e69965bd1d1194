"""Per-symbol model inputs (kronos_jobs/jobs/series.py): the model sees the bars' local wall-clock
time, results keep UTC. Pure functions: no database, no model."""

from __future__ import annotations

from types import SimpleNamespace

import pandas as pd
import pytest

from kronos_jobs.core.names import UTC_OFFSET_COLUMN
from kronos_jobs.inputs.parsing import parse_inline_series
from kronos_jobs.jobs.series import build_inputs, result_rows, rows_frame


def bar(stamp: str, close: float = 10.0) -> dict:
    return {"timestamp": stamp, "open": close, "high": close + 0.1, "low": close - 0.1, "close": close}


def params(pred_len: int = 3, freq: str | None = None, calendar: dict | None = None, lookback: int = 64):
    return SimpleNamespace(lookback=lookback, pred_len=pred_len, freq={"X": freq} if freq else {}, calendar=calendar or {})


def one_input(settings, stamps: list[str], p, future: list[str] | None = None):
    item = {"symbol": "X", "bars": [bar(s, 10 + i * 0.01) for i, s in enumerate(stamps)]}
    if future is not None:
        item["future_timestamps"] = future
    series = parse_inline_series([item], pred_len=p.pred_len, settings=settings)
    inputs, errors = build_inputs(series.bars, series.future, p)
    assert errors == []
    return inputs[0]


def test_offset_input_reaches_the_model_as_local_wall_clock(settings):
    stamps = [f"2024-06-18T11:{m:02d}:00+08:00" for m in range(0, 30, 5)]
    item = one_input(settings, stamps, params())
    assert list(item.x_timestamp.hour) == [11] * 6 and item.x_timestamp.tz is None  # not 03 (UTC)
    assert list(item.x_timestamp.minute) == [0, 5, 10, 15, 20, 25]
    assert list(item.y_timestamp) == list(pd.date_range("2024-06-18 11:30", periods=3, freq="5min"))
    assert list(item.y_utc) == list(pd.date_range("2024-06-18 03:30", periods=3, freq="5min", tz="UTC"))
    rows = rows_frame([result_rows(item, pd.DataFrame(0.0, index=range(3), columns=list(item.context.columns)
                                                      + ["volume", "amount"]), None)])
    assert list(rows.timestamp) == list(item.y_utc)  # the API contract: results in UTC


def test_naive_input_is_utc_wall_clock_as_before(settings):
    stamps = [f"2024-06-18T11:{m:02d}:00" for m in range(0, 30, 5)]
    item = one_input(settings, stamps, params())
    assert list(item.x_timestamp.hour) == [11] * 6
    assert list(item.y_utc) == list(pd.date_range("2024-06-18 11:30", periods=3, freq="5min", tz="UTC"))


def test_daily_bars_at_local_midnight_keep_local_days_and_skip_local_weekends(settings):
    # Mon 2024-06-10 .. Fri 2024-06-14 at 00:00 +08:00, i.e. 16:00 UTC the day before (Sun .. Thu).
    stamps = [f"2024-06-{d}T00:00:00+08:00" for d in range(10, 15)]
    item = one_input(settings, stamps, params(pred_len=3))
    assert list(item.x_timestamp.day_of_week) == [0, 1, 2, 3, 4]
    assert list(item.y_timestamp) == [pd.Timestamp(f"2024-06-{d}") for d in (17, 18, 19)]  # Mon..Wed local
    assert list(item.y_utc) == [pd.Timestamp(f"2024-06-{d} 16:00", tz="UTC") for d in (16, 17, 18)]


def test_new_york_offsets_across_dst_keep_local_hours(settings):
    # Hourly bars across the 2024-11-03 fall-back: 01:00 happens twice, -04:00 then -05:00.
    utc = pd.date_range("2024-11-02T22:00Z", periods=12, freq="1h")
    local = utc.tz_convert("America/New_York")
    stamps = [s.isoformat() for s in local]
    assert stamps[0].endswith("-04:00") and stamps[-1].endswith("-05:00")
    item = one_input(settings, stamps, params(pred_len=2))
    assert list(item.x_timestamp.hour) == list(local.hour)  # 18 .. 23, 0, 1, 1, 2, 3, 4
    assert list(item.y_timestamp.hour) == [5, 6] and list(item.y_utc) == list(utc[-1] + pd.to_timedelta([1, 2], "h"))


def test_calendar_zone_for_bars_without_offsets(settings):
    # Store-sourced bars carry no offsets: the calendar's zone gives the local time, DST included.
    series = parse_inline_series([{"symbol": "X", "bars": [bar(s.isoformat()) for s in
                                   pd.date_range("2024-03-08 14:30", periods=4, freq="D", tz="UTC")]}],
                                 pred_len=2, settings=settings)
    bars = series.bars.drop(columns=UTC_OFFSET_COLUMN)
    (item,), _ = build_inputs(bars, None, params(pred_len=2, calendar={"timezone": "America/New_York"}))
    assert list(item.x_timestamp.hour) == [9, 9, 10, 10]  # EST, then EDT from 2024-03-10
    assert list(item.y_timestamp.hour) == [10, 10] and list(item.y_timestamp.day_of_week) == [1, 2]  # Tue, Wed


def test_calendar_zone_that_the_bars_are_in(settings):
    utc = pd.date_range("2024-06-18T13:30Z", periods=6, freq="5min")  # 09:30 New York (EDT)
    cal = {"timezone": "America/New_York", "open": "09:30", "close": "09:55"}
    item = one_input(settings, [s.tz_convert("America/New_York").isoformat() for s in utc], params(pred_len=2, calendar=cal))
    assert [t.strftime("%H:%M") for t in item.x_timestamp] == ["09:30", "09:35", "09:40", "09:45", "09:50", "09:55"]
    assert [str(t) for t in item.y_timestamp] == ["2024-06-19 09:30:00", "2024-06-19 09:35:00"]
    assert list(item.y_utc) == [pd.Timestamp("2024-06-19 13:30", tz="UTC"), pd.Timestamp("2024-06-19 13:35", tz="UTC")]


def test_given_future_timestamps_use_their_own_offsets(settings):
    stamps = [f"2024-06-18T11:{m:02d}:00+08:00" for m in range(0, 30, 5)]
    future = ["2024-06-18T13:00:00+08:00", "2024-06-18T05:05:00Z"]
    item = one_input(settings, stamps, params(pred_len=2), future=future)
    assert [str(t) for t in item.y_timestamp] == ["2024-06-18 13:00:00", "2024-06-18 05:05:00"]
    assert list(item.y_utc) == [pd.Timestamp("2024-06-18 05:00", tz="UTC"), pd.Timestamp("2024-06-18 05:05", tz="UTC")]


@pytest.mark.parametrize("given", [None, ["2024-06-18T12:00:00+08:00", "2024-06-18T12:05:00+08:00"]])
def test_naive_local_and_offset_input_give_the_model_the_same_timestamps(settings, given):
    local = [f"2024-06-18T11:{m:02d}:00" for m in range(0, 30, 5)]
    naive_future = None if given is None else [g.removesuffix("+08:00") for g in given]
    a = one_input(settings, local, params(pred_len=2), future=naive_future)
    b = one_input(settings, [s + "+08:00" for s in local], params(pred_len=2), future=given)
    pd.testing.assert_index_equal(a.x_timestamp, b.x_timestamp)
    pd.testing.assert_index_equal(a.y_timestamp, b.y_timestamp)
    pd.testing.assert_frame_equal(a.context, b.context)
    assert list(b.y_utc) == list(a.y_utc - pd.Timedelta(hours=8))


def test_per_symbol_calendar_zones_for_bars_without_offsets(settings):
    utc = pd.date_range("2024-06-18 01:30", periods=4, freq="5min", tz="UTC")
    series = parse_inline_series([{"symbol": s, "bars": [bar(t.isoformat()) for t in utc]} for s in ("NY", "SH", "UTC")],
                                 pred_len=2, settings=settings)
    calendar = {"default": {"timezone": "America/New_York"}, "symbols": {"SH": {"timezone": "Asia/Shanghai"}, "UTC": {}}}
    inputs, errors = build_inputs(series.bars.drop(columns=UTC_OFFSET_COLUMN), None,
                                  SimpleNamespace(lookback=64, pred_len=2, freq={}, calendar=calendar))
    hours = {i.symbol: (i.x_timestamp[0].hour, i.y_timestamp[0].hour) for i in inputs}
    assert errors == [] and hours == {"NY": (21, 21), "SH": (9, 9), "UTC": (1, 1)}
