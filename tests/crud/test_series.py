"""The series store's data access on SQLite and PostgreSQL: idempotent upsert, range and latest-N
reads, listing, deletion, tenants kept apart."""

from __future__ import annotations

import pandas as pd
import pytest

from kronos_jobs.core.errors import InvalidRequest, NotFound
from kronos_jobs.crud import series as series_crud
from kronos_jobs.testing.factories import make_bars


def test_upsert_is_idempotent_and_replaces(session):
    bars = make_bars({"AAA": 10, "BBB": 5})
    freqs = {"AAA": "5min", "BBB": "5min"}
    assert series_crud.upsert_bars(session, tenant_id="t1", bars=bars, freqs=freqs) == 15
    changed = bars.copy()
    changed.loc[0, ["close", "high"]] = [99.0, 100.0]
    series_crud.upsert_bars(session, tenant_id="t1", bars=changed.drop(columns=["volume", "amount"]), freqs=freqs)
    session.commit()
    listed = series_crud.list_symbols(session, tenant_id="t1")
    assert [(s["symbol"], s["rows"]) for s in listed] == [("AAA", 10), ("BBB", 5)]
    assert listed[0]["first_timestamp"] == bars.timestamp.min().to_pydatetime()
    aaa = series_crud.read_bars(session, tenant_id="t1", symbol="AAA")
    assert aaa["close"].iloc[0] == 99.0 and "volume" not in aaa.columns  # replaced whole, volume now absent
    assert series_crud.list_symbols(session, tenant_id="t2") == []  # another tenant sees nothing


def test_range_and_latest_reads(session):
    bars = make_bars({"AAA": 20, "BBB": 3})
    series_crud.upsert_bars(session, tenant_id="t", bars=bars, freqs={"AAA": "5min", "BBB": "5min"})
    start, end = bars.timestamp.iloc[5], bars.timestamp.iloc[8]
    window = series_crud.read_bars(session, tenant_id="t", symbol="AAA", start=start, end=end)
    assert list(window.timestamp) == list(bars.timestamp.iloc[5:9])
    assert list(series_crud.read_bars(session, tenant_id="t", symbol="AAA", limit=2).timestamp) == list(bars.timestamp.iloc[18:20])
    latest = series_crud.latest_bars(session, tenant_id="t", keys=[("BBB", "5min"), ("AAA", "5min")], lookback=4)
    assert latest.groupby("symbol").size().to_dict() == {"AAA": 4, "BBB": 3}
    expected = bars[bars.symbol == "AAA"].tail(4).reset_index(drop=True)
    got = latest[latest.symbol == "AAA"].reset_index(drop=True)
    pd.testing.assert_frame_equal(got.drop(columns="freq"), expected, check_dtype=False)
    assert str(latest.timestamp.dtype).endswith("UTC]")


def test_frequencies_and_delete(session):
    bars = make_bars({"AAA": 3})
    series_crud.upsert_bars(session, tenant_id="t", bars=bars, freqs={"AAA": "5min"})
    series_crud.upsert_bars(session, tenant_id="t", bars=bars, freqs={"AAA": "1D"})
    with pytest.raises(InvalidRequest) as err:
        series_crud.read_bars(session, tenant_id="t", symbol="AAA")
    assert err.value.field == "freq"
    assert series_crud.delete_symbol(session, tenant_id="t", symbol="AAA", freq="1D") == 3
    assert series_crud.symbol_freqs(session, tenant_id="t", symbol="AAA") == ["5min"]
    assert series_crud.delete_symbol(session, tenant_id="t", symbol="AAA") == 3
    with pytest.raises(NotFound):
        series_crud.delete_symbol(session, tenant_id="t", symbol="AAA")
    with pytest.raises(NotFound):
        series_crud.read_bars(session, tenant_id="t", symbol="AAA")


def test_a_bar_given_twice_in_one_upsert_keeps_the_last(session):
    bars = make_bars({"AAA": 3})
    again = bars.iloc[[1]].assign(close=bars.close.iloc[1] + 0.001, high=bars.high.iloc[1] + 0.001)
    series_crud.upsert_bars(session, tenant_id="t", bars=pd.concat([bars, again], ignore_index=True), freqs={"AAA": "5min"})
    stored = series_crud.read_bars(session, tenant_id="t", symbol="AAA")
    assert len(stored) == 3 and stored.close.iloc[1] == again.close.iloc[0]
