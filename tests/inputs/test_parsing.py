"""kronos_jobs.inputs.parsing: inline series and uploaded files into the long-format frame, or a named error."""

from __future__ import annotations

import io

import pandas as pd
import pytest

from kronos_jobs.core.errors import InvalidRequest, PayloadTooLarge
from kronos_jobs.core.settings import Settings
from kronos_jobs.inputs.checks import SYMBOL_MAX_LENGTH
from kronos_jobs.inputs.parsing import parse_inline_series, parse_upload
from kronos_jobs.testing.factories import bar_records, bars_frame, make_csv, make_parquet


def inline(*series: dict, pred_len: int = 2, settings: Settings | None = None):
    return parse_inline_series(list(series), pred_len=pred_len, settings=settings or Settings())


def field_of(exc: pytest.ExceptionInfo) -> str:
    return exc.value.details[0]["field"]


def test_offsets_become_utc_and_naive_is_utc() -> None:
    bars = bar_records(3)
    bars[0]["timestamp"] = "2024-06-18T09:30:00+08:00"
    bars[1]["timestamp"] = "2024-06-18T01:35:00"
    bars[2]["timestamp"] = "2024-06-18T01:40:00Z"
    frame = inline({"symbol": "A", "freq": "5min", "bars": bars}).bars
    assert list(frame["timestamp"]) == list(pd.date_range("2024-06-18 01:30", periods=3, freq="5min", tz="UTC"))


def test_each_rows_utc_offset_is_kept_for_the_models_wall_clock() -> None:
    bars = bar_records(4)
    for b, stamp in zip(bars, ["2024-06-18T09:30:00+08:00", "2024-06-18T01:35:00", "2024-06-18T01:40:00Z",
                               "2024-06-17T21:45:00-0400"]):
        b["timestamp"] = stamp
    frame = inline({"symbol": "A", "freq": "5min", "bars": bars},
                   {"symbol": "B", "bars": bar_records(2), "future_timestamps": ["2024-06-18T12:00:00+05:30", "2024-06-18T06:35Z"]}).bars
    a = frame[frame.symbol == "A"]
    assert list(a["utc_offset_minutes"]) == [480, 0, 0, -240] and a["utc_offset_minutes"].dtype == "int32"
    assert list(a["timestamp"]) == list(pd.date_range("2024-06-18 01:30", periods=4, freq="5min", tz="UTC"))
    future = inline({"symbol": "B", "bars": bar_records(2), "future_timestamps": ["2024-06-18T12:00:00+05:30", "2024-06-18T06:35Z"]}).future
    assert list(future["utc_offset_minutes"]) == [330, 0]
    assert list(frame.loc[frame.symbol == "B", "utc_offset_minutes"]) == [0, 0]


def test_file_offsets_per_row_csv_text_and_parquet_zone() -> None:
    frame = bars_frame(n_symbols=1, n_bars=3)
    frame["timestamp"] = ["2024-06-18T09:30:00+08:00", "2024-06-18 09:35:00+08:00", "2024-06-18 01:40:00"]
    csv = parse_upload(make_csv(frame=frame), filename="x.csv", content_type=None, freq="5min", settings=Settings()).bars
    assert list(csv["utc_offset_minutes"]) == [480, 480, 0]
    zoned = frame.assign(timestamp=pd.date_range("2024-11-03 05:30", periods=3, freq="1h", tz="UTC").tz_convert("America/New_York"))
    buffer = io.BytesIO()
    zoned.to_parquet(buffer, index=False)
    parquet = parse_upload(buffer.getvalue(), filename=None, content_type=None, freq="1h", settings=Settings()).bars
    assert list(parquet["utc_offset_minutes"]) == [-240, -300, -300]  # EDT, then EST (DST per row)
    assert str(parquet["timestamp"].dt.tz) == "UTC"


def test_frame_is_sorted_typed_and_keeps_optional_columns() -> None:
    result = inline({"symbol": "B", "bars": bar_records(5)[::-1]}, {"symbol": "A", "bars": bar_records(5)})
    frame = result.bars
    assert list(frame.columns) == ["symbol", "timestamp", "open", "high", "low", "close", "volume", "amount", "utc_offset_minutes"]
    assert list(frame["symbol"].unique()) == ["A", "B"]
    assert frame.groupby("symbol")["timestamp"].apply(lambda s: s.is_monotonic_increasing).all()
    assert all(frame[c].dtype == "float64" for c in ("open", "close", "volume"))
    assert result.freqs == {"B": None, "A": None} and result.future is None and result.source == "inline"


def test_volume_and_amount_may_be_absent_everywhere() -> None:
    bars = [{k: v for k, v in bar.items() if k not in ("volume", "amount")} for bar in bar_records(4)]
    assert list(inline({"symbol": "A", "freq": "5min", "bars": bars}).bars.columns) == ["symbol", "timestamp", "open", "high", "low", "close", "utc_offset_minutes"]


def test_freq_is_optional_and_checked_when_given() -> None:
    assert inline({"symbol": "A", "bars": bar_records(2)}).freqs == {"A": None}  # the worker infers it
    with pytest.raises(InvalidRequest) as exc:
        inline({"symbol": "A", "freq": "5T", "bars": bar_records(2)})
    assert field_of(exc) == "series[0].freq"
    given = inline({"symbol": "A", "bars": bar_records(2), "future_timestamps": ["2024-06-18T02:00Z", "2024-06-18T02:05Z"]})
    assert given.future["timestamp"].tolist() == list(pd.to_datetime(["2024-06-18T02:00Z", "2024-06-18T02:05Z"], utc=True))


def test_future_must_follow_the_last_bar() -> None:
    with pytest.raises(InvalidRequest) as exc:
        inline({"symbol": "A", "freq": "5min", "bars": bar_records(4), "future_timestamps": ["2024-06-18T01:00Z", "2024-06-18T01:05Z"]})
    assert field_of(exc) == "series[0].future_timestamps[0]"


@pytest.mark.parametrize("symbol", ["600519.SH", "BRK.B", "BTC-USD", "ES=F", "^GSPC", "EUR/USD", "A" * SYMBOL_MAX_LENGTH])
def test_symbol_forms_accepted(symbol: str) -> None:
    assert inline({"symbol": symbol, "freq": "5min", "bars": bar_records(2)}).symbols == [symbol]


def test_limits_from_settings() -> None:
    small = Settings(max_series_per_job=2, max_bars_per_series=4)
    with pytest.raises(InvalidRequest) as exc:
        inline(*({"symbol": f"S{i}", "bars": bar_records(3)} for i in range(3)), settings=small)
    assert field_of(exc) == "series"
    with pytest.raises(InvalidRequest) as exc:
        inline({"symbol": "A", "bars": bar_records(5)}, settings=small)
    assert field_of(exc) == "series[0].bars"
    with pytest.raises(InvalidRequest) as exc:
        parse_upload(make_csv(n_symbols=3, n_bars=3), filename="x.csv", content_type=None, freq="5min", settings=small)
    assert field_of(exc) == "file"


def test_many_problems_are_listed_and_capped() -> None:
    bars = bar_records(40)
    for bar in bars:
        bar["high"] = 0.0
    with pytest.raises(InvalidRequest) as exc:
        inline({"symbol": "A", "freq": "5min", "bars": bars})
    assert len(exc.value.details) == 20 and "more problems" in exc.value.message


@pytest.mark.parametrize("make", [make_csv, make_parquet])
def test_csv_and_parquet_give_the_same_frame(make) -> None:
    result = parse_upload(make(n_symbols=2), filename=None, content_type=None, freq="5min", settings=Settings())
    expected = inline({"symbol": "SYM0.SH", "bars": bar_records(8, price=10.0)}, {"symbol": "SYM1.SH", "bars": bar_records(8, price=11.0)})
    pd.testing.assert_frame_equal(result.bars, expected.bars, check_dtype=False)
    assert result.freqs == {"SYM0.SH": "5min", "SYM1.SH": "5min"}


def test_file_columns_case_timestamps_alias_and_freq_column() -> None:
    frame = bars_frame(n_symbols=2).rename(columns={"timestamp": "Timestamps", "close": "CLOSE"})
    frame["freq"] = "5min"
    result = parse_upload(make_csv(frame=frame), filename="x.csv", content_type="text/csv", freq=None, settings=Settings())
    assert result.freqs == {"SYM0.SH": "5min", "SYM1.SH": "5min"} and result.source == "csv"
    frame.loc[0, "freq"] = "1h"
    with pytest.raises(InvalidRequest) as exc:
        parse_upload(make_csv(frame=frame), filename="x.csv", content_type=None, freq=None, settings=Settings())
    assert field_of(exc) == "freq (symbol SYM0.SH)"


def test_file_rows_are_named_from_one() -> None:
    frame = bars_frame(n_symbols=3)  # 24 rows
    frame.loc[16, "low"] = 99.0
    with pytest.raises(InvalidRequest) as exc:
        parse_upload(make_csv(frame=frame), filename="x.csv", content_type=None, freq="5min", settings=Settings())
    assert field_of(exc) == "file row 17: low"


def test_duplicate_timestamps_in_a_file_name_the_later_row() -> None:
    frame = pd.concat([bars_frame(n_symbols=1), bars_frame(n_symbols=1).iloc[[2]]], ignore_index=True)
    with pytest.raises(InvalidRequest) as exc:
        parse_upload(make_csv(frame=frame), filename="x.csv", content_type=None, freq="5min", settings=Settings())
    assert field_of(exc) == "file row 9: timestamp"


def test_upload_size_is_capped() -> None:
    with pytest.raises(PayloadTooLarge):
        parse_upload(b"x" * 2048, filename="x.csv", content_type=None, freq=None, settings=Settings(max_upload_bytes=1024))


@pytest.mark.parametrize("data", [b"PAR1\x00\x00PAR1", b"PAR1" + b"\xff" * 300])
def test_corrupt_parquet_is_invalid_request(data: bytes) -> None:
    with pytest.raises(InvalidRequest) as exc:
        parse_upload(data, filename="x.parquet", content_type=None, freq=None, settings=Settings())
    assert field_of(exc) == "file"
