"""Per-symbol inputs of a forecast job: the context bars and the timestamps to forecast.

A series that cannot be forecast (too few bars, a NaN, future timestamps that do not fit, no
frequency to generate them from) becomes a per-symbol error; the other series go on.

Time zones. Bars are stored and results returned in UTC, but Kronos' temporal embedding (minute,
hour, weekday, day, month) must see the bars' LOCAL wall-clock time, as upstream users pass it
(`2024-06-18T11:15:00+08:00` is hour 11, not 3). So the model gets naive local timestamps:
- past bars: by the rule in kronos_jobs/inputs/wall_clock.py, shared with fine-tune training and evaluation:
  UTC + each row's `utc_offset_minutes` (kept by kronos_jobs/inputs/parsing.py; 0 for naive input, so naive
  input is UTC = wall clock as before). Bars without that column (the series store keeps UTC only;
  job inputs stored before the column existed) are shown in the symbol's calendar `timezone` when
  its calendar names one, else in UTC.
- future timestamps: given ones use their own offsets. Generated ones are found by the trading
  calendar in its `timezone` when it names one, otherwise in the last bar's fixed offset (a calendar
  without `timezone` then means the bars' local days and hours; naive input: UTC, as before). The
  model sees them in the calendar's zone when the bars are in it (their last offset is the zone's,
  or they carry no offsets), else shifted by the last bar's offset: the same local frame as the
  past. The results keep the UTC instants (`SeriesInput.y_utc`).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pandas as pd

from kronos_jobs.core.names import BAR_COLUMNS, PRICE_COLUMNS, UTC_OFFSET_COLUMN, JobState, quantile_column
from kronos_jobs.inputs import calendar as trading
from kronos_jobs.inputs.checks import MAX_YEAR
from kronos_jobs.inputs.frequency import infer_offset
from kronos_jobs.inputs.wall_clock import (
    as_utc,
    calendar_zone,
    row_offsets,
    wall_clock,
    wall_clock_all,
    zone_offset_minutes,
)

MIN_CONTEXT_BARS = 2  # one bar has no spread to normalise by; any longer context is the user's call


@dataclasses.dataclass
class SeriesInput:
    symbol: str
    context: pd.DataFrame  # (L, 4..6) open, high, low, close[, volume, amount]
    x_timestamp: pd.DatetimeIndex  # (L,) naive local wall-clock time: what the model sees
    y_timestamp: pd.DatetimeIndex  # (pred_len,) naive local wall-clock time: what the model sees
    y_utc: pd.DatetimeIndex | None = None  # (pred_len,) tz-aware UTC: the result timestamps

    def __post_init__(self) -> None:
        if self.y_utc is None:  # built by hand (tests): timestamps are UTC already
            self.y_utc = as_utc(self.y_timestamp)


def _error(symbol: str, code: str, message: str) -> dict[str, str]:
    return {"symbol": symbol, "code": code, "message": message}


def future_for_symbol(symbol: str, last: pd.Timestamp, pred_len: int, freq: str | None,
                      timestamps: pd.Series | pd.DatetimeIndex,
                      calendar: dict[str, Any] | None = None) -> pd.DatetimeIndex | dict[str, str]:
    """`pred_len` trading timestamps after `last`, stepping by `freq` (or the inferred frequency);
    the trading calendar (kronos_jobs/inputs/calendar.py) skips weekends, holidays and out-of-session times."""
    offset = pd.tseries.frequencies.to_offset(freq) if freq else infer_offset(timestamps)
    if offset is None:
        return _error(symbol, "no_freq", "cannot infer the bar frequency from fewer than two distinct "
                                         "timestamps; give freq or future_timestamps")
    spec = trading.calendar_for(calendar, symbol)
    try:
        stamps = trading.future_timestamps(last, pred_len, offset, trading.TradingCalendar.from_spec(spec) if spec else None)
    except (ValueError, OverflowError) as exc:  # pandas' OutOfBounds* errors are ValueErrors
        return _error(symbol, "calendar", str(exc))
    stamps = pd.DatetimeIndex(stamps, name="timestamp")
    if len(stamps) and stamps[-1].year > MAX_YEAR:
        return _error(symbol, "future_out_of_range", f"the forecast would reach {stamps[-1].isoformat()}, "
                      f"beyond the year {MAX_YEAR}; check freq")
    return stamps


def build_one(symbol: str, stamps: pd.DatetimeIndex, values: np.ndarray, columns: list[str],
              given: pd.DataFrame | None, params: Any, offsets: np.ndarray | None = None,
              wall: pd.DatetimeIndex | None = None) -> SeriesInput | dict:
    """One symbol's input from its UTC timestamps (N,), bar values (N, len(columns)) and, when the
    input kept them, the timestamps' UTC offsets in minutes (N,) (see the module docstring).
    `wall` (N,): the local wall-clock times when the caller computed them for many symbols at once."""
    if stamps.tz is None:
        stamps = stamps.tz_localize("UTC")  # naive is UTC (kronos_jobs/inputs/parsing.py)
    if not stamps.is_monotonic_increasing:  # stored input is sorted; this is the rare path
        order = np.argsort(stamps.asi8, kind="stable")
        stamps, values = stamps[order], values[order]
        offsets = None if offsets is None else np.asarray(offsets)[order]
        wall = None if wall is None else wall[order]
    if len(stamps) < MIN_CONTEXT_BARS:
        return _error(symbol, "too_few_bars", f"{len(stamps)} bar(s); a forecast needs at least {MIN_CONTEXT_BARS}")
    # A column absent for this symbol (all NaN in the long format) is treated as not given (spec §5.2).
    keep = [i for i, c in enumerate(columns) if c in PRICE_COLUMNS or not np.isnan(values[:, i]).all()]
    context = values[-params.lookback:, keep]  # (L, 4..6)
    nan = np.isnan(context)
    if nan.any():
        row, col = nan.nonzero()
        return _error(symbol, "nan_values", f"{int(nan.sum())} missing value(s) in the last {len(context)} bars, "
                      f"first in {columns[keep[col[0]]]!r} at {stamps[-len(context):][row[0]]}")
    calendar = getattr(params, "calendar", None)
    zone = calendar_zone(calendar, symbol)
    if wall is None:
        wall = wall_clock(stamps, offsets, zone)  # (N,) naive local
    x_timestamp = wall[-params.lookback:]
    last = stamps[-1]
    # The future's frame: the calendar's zone when the bars are in it, else the last bar's offset.
    last_offset = 0 if offsets is None else int(offsets[-1])
    use_zone = zone is not None and (offsets is None or zone_offset_minutes(zone, last) == last_offset)
    shift = pd.Timedelta(minutes=last_offset)
    if given is not None and len(given):
        y_utc = pd.DatetimeIndex(given["timestamp"])
        y_utc = y_utc.tz_localize("UTC") if y_utc.tz is None else y_utc
        order = np.argsort(y_utc.asi8, kind="stable")
        y_utc = y_utc[order]
        if len(y_utc) != params.pred_len:
            return _error(symbol, "future_timestamps", f"{len(y_utc)} future timestamps given, pred_len is {params.pred_len}")
        if y_utc[0] <= last:
            return _error(symbol, "future_timestamps", f"future timestamp {y_utc[0]} is not after the last bar {last}")
        if UTC_OFFSET_COLUMN in given:
            y = wall_clock(y_utc, given[UTC_OFFSET_COLUMN].to_numpy()[order], None)
        else:
            y = wall_clock(y_utc, None, zone) if use_zone else y_utc.tz_convert("UTC").tz_localize(None) + shift
    elif zone is not None:  # the calendar finds session times in its zone
        y_utc = future_for_symbol(symbol, last, params.pred_len, params.freq.get(symbol), wall, calendar)
        if isinstance(y_utc, dict):
            return y_utc
        y = wall_clock(y_utc, None, zone) if use_zone else y_utc.tz_convert("UTC").tz_localize(None) + shift
    else:  # step in the last bar's local frame: local days, weekends and session hours
        local = future_for_symbol(symbol, last + shift if last_offset else last, params.pred_len,
                                  params.freq.get(symbol), wall, calendar)
        if isinstance(local, dict):
            return local
        y = local.tz_localize(None)  # `local` is the wall clock written as UTC
        y_utc = local - shift if last_offset else local
    return SeriesInput(symbol=symbol, context=pd.DataFrame(context, columns=[columns[i] for i in keep]),
                       x_timestamp=x_timestamp, y_timestamp=y, y_utc=y_utc)


def build_inputs(bars: pd.DataFrame, future: pd.DataFrame | None, params: Any) -> tuple[list[SeriesInput], list[dict]]:
    """Split long-format bars into per-symbol inputs (in first-seen order) and per-symbol errors.

    The frame is converted to arrays once and sliced per symbol: per-symbol pandas operations cost
    more than the whole forecast of a short series."""
    inputs: list[SeriesInput] = []
    errors: list[dict] = []
    given = dict(tuple(future.groupby("symbol", sort=False))) if future is not None and len(future) else {}
    columns = [c for c in BAR_COLUMNS if c in bars.columns]
    values = bars[columns].to_numpy(dtype="float64")  # (N, len(columns))
    stamps = as_utc(bars["timestamp"])
    offsets = row_offsets(bars)
    codes, symbols = pd.factorize(bars["symbol"].astype(str), sort=False)  # first-seen order
    wall = wall_clock_all(stamps, offsets, codes, symbols, getattr(params, "calendar", None))
    order = np.argsort(codes, kind="stable")
    bounds = np.searchsorted(codes[order], np.arange(len(symbols) + 1))
    for k, symbol in enumerate(symbols):
        rows = order[bounds[k]:bounds[k + 1]]
        item = build_one(str(symbol), stamps[rows], values[rows], columns, given.get(symbol), params,
                         None if offsets is None else offsets[rows], wall[rows])
        (errors if isinstance(item, dict) else inputs).append(item)
    return inputs, errors


def result_rows(item: SeriesInput, output: Any, quantiles: list[float] | None) -> dict[str, Any]:
    """Flat result columns of one series: symbol, step, timestamp, open..amount, q<level>_<column>.

    Plain arrays, not a DataFrame: building one frame per series costs more than the tiny
    forecasts it holds; the caller concatenates the columns of a whole job once (`rows_frame`)."""
    mean = output.mean if hasattr(output, "mean") and isinstance(output.mean, pd.DataFrame) else output
    n = len(mean)
    columns: dict[str, Any] = {"symbol": np.full(n, item.symbol, dtype=object), "step": np.arange(n),
                               "timestamp": pd.DatetimeIndex(item.y_utc)}
    columns.update((c, mean[c].to_numpy(dtype="float64")) for c in BAR_COLUMNS)
    for level in quantiles or ():
        frame = output.quantiles[float(level)]
        columns.update((quantile_column(level, c), frame[c].to_numpy(dtype="float64")) for c in BAR_COLUMNS)
    return columns


def rows_frame(parts: list[dict[str, Any]]) -> pd.DataFrame:
    """One DataFrame from the `result_rows` of many series."""
    columns = {name: np.concatenate([p[name] for p in parts]) for name in parts[0] if name != "timestamp"}
    # Epoch nanoseconds (UTC for tz-aware stamps) so parts with different units or zones concatenate.
    stamps = np.concatenate([p["timestamp"].as_unit("ns").asi8 for p in parts])
    return pd.DataFrame({"symbol": columns.pop("symbol"), "step": columns.pop("step"),
                         "timestamp": pd.DatetimeIndex(stamps.view("datetime64[ns]")).tz_localize("UTC"), **columns})


def series_outcome(total: int, succeeded: int, symbol_errors: list[dict[str, Any]]) -> tuple[JobState, dict[str, Any] | None]:
    """A forecast's final state and error from how many of its `total` series succeeded: every one,
    some (`partially_succeeded`) or none (`failed`, quoting the first series' error)."""
    if succeeded == total:
        return JobState.SUCCEEDED, None
    if succeeded > 0:
        return JobState.PARTIALLY_SUCCEEDED, {"code": "some_series_failed",
                                              "message": f"{total - succeeded} of {total} series failed"}
    first = symbol_errors[0] if symbol_errors else {"message": "no series"}
    return JobState.FAILED, {"code": "all_series_failed",
                             "message": f"all {total} series failed; first: {first['message']}"}
