"""Per-symbol inputs of a forecast job: the context bars and the timestamps to forecast.

A series that cannot be forecast (too few bars, a NaN, future timestamps that do not fit, no
frequency to generate them from) becomes a per-symbol error; the other series go on.
"""

from __future__ import annotations

import dataclasses
import warnings
from typing import Any

import numpy as np
import pandas as pd

from kronos_jobs.names import BAR_COLUMNS, PRICE_COLUMNS, quantile_column

MIN_CONTEXT_BARS = 2  # one bar has no spread to normalise by; any longer context is the user's call
FREQ_SAMPLE_BARS = 64  # recent bars used to infer a series' frequency when none was given


@dataclasses.dataclass
class SeriesInput:
    symbol: str
    context: pd.DataFrame  # (L, 4..6) open, high, low, close[, volume, amount]
    x_timestamp: pd.Series  # (L,)
    y_timestamp: pd.Series  # (pred_len,)


def _error(symbol: str, code: str, message: str) -> dict[str, str]:
    return {"symbol": symbol, "code": code, "message": message}


def infer_offset(timestamps: pd.Series) -> pd.DateOffset | None:
    """The series' bar frequency: pandas' inference on recent bars, else the most common gap."""
    recent = pd.DatetimeIndex(timestamps.iloc[-FREQ_SAMPLE_BARS:])
    steps = np.diff(recent.as_unit("ns").asi8)
    if len(steps) >= 2 and steps[0] > 0 and (steps == steps[0]).all():
        # Evenly spaced (the common case): the step is the frequency, as pandas' slower inference says;
        # whole days stay calendar days (the trading calendar skips weekends for those).
        step = pd.Timedelta(int(steps[0]), unit="ns")
        if step % pd.Timedelta(days=1) == pd.Timedelta(0):
            return pd.offsets.Day(step.days)
        return pd.tseries.frequencies.to_offset(step)
    if len(recent) >= 3:
        with warnings.catch_warnings():  # pandas 3 warns that the return type becomes an offset
            warnings.simplefilter("ignore")
            alias = pd.infer_freq(recent)
        if alias:
            return pd.tseries.frequencies.to_offset(alias)
    gaps = recent.to_series().diff().dropna()
    gaps = gaps[gaps > pd.Timedelta(0)]
    if gaps.empty:
        return None
    return pd.tseries.frequencies.to_offset(gaps.mode().iloc[0])


def future_timestamps(symbol: str, last: pd.Timestamp, pred_len: int, freq: str | None,
                      timestamps: pd.Series, calendar: dict[str, Any] | None = None) -> pd.Series | dict[str, str]:
    """`pred_len` trading timestamps after `last`, stepping by `freq` (or the inferred frequency);
    the trading calendar (kronos_jobs/calendar.py) skips weekends, holidays and out-of-session times."""
    from kronos_jobs import calendar as trading

    offset = pd.tseries.frequencies.to_offset(freq) if freq else infer_offset(timestamps)
    if offset is None:
        return _error(symbol, "no_freq", "cannot infer the bar frequency from fewer than two distinct "
                                         "timestamps; give freq or future_timestamps")
    spec = trading.calendar_for(calendar, symbol)
    try:
        stamps = trading.future_timestamps(last, pred_len, offset, trading.TradingCalendar.from_spec(spec) if spec else None)
    except ValueError as exc:
        return _error(symbol, "calendar", str(exc))
    return pd.Series(stamps, name="timestamp")


def _context_columns(frame: pd.DataFrame) -> list[str]:
    # A column absent for this symbol (all NaN in the long format) is treated as not given (spec §5.2).
    return [c for c in BAR_COLUMNS if c in frame.columns and (c in PRICE_COLUMNS or frame[c].notna().any())]


def build_one(symbol: str, frame: pd.DataFrame, given: pd.DataFrame | None, params: Any) -> SeriesInput | dict:
    if not frame["timestamp"].is_monotonic_increasing:  # stored input is sorted; skip the copy then
        frame = frame.sort_values("timestamp")
    if len(frame) < MIN_CONTEXT_BARS:
        return _error(symbol, "too_few_bars", f"{len(frame)} bar(s); a forecast needs at least {MIN_CONTEXT_BARS}")
    context = frame.iloc[-params.lookback:]
    columns = _context_columns(frame)
    values = context[columns].to_numpy(dtype="float64")  # (L, 4..6)
    nan = np.isnan(values)
    if nan.any():
        row, col = nan.nonzero()
        return _error(symbol, "nan_values", f"{int(nan.sum())} missing value(s) in the last "
                      f"{len(context)} bars, first in {columns[col[0]]!r} at {context['timestamp'].iloc[row[0]]}")
    x_timestamp = context["timestamp"].reset_index(drop=True)
    last = x_timestamp.iloc[-1]
    if given is not None and len(given):
        y = pd.Series(pd.DatetimeIndex(given["timestamp"]).sort_values(), name="timestamp")
        if len(y) != params.pred_len:
            return _error(symbol, "future_timestamps", f"{len(y)} future timestamps given, pred_len is {params.pred_len}")
        if y.iloc[0] <= last:
            return _error(symbol, "future_timestamps", f"future timestamp {y.iloc[0]} is not after the last bar {last}")
    else:
        y = future_timestamps(symbol, last, params.pred_len, params.freq.get(symbol), frame["timestamp"],
                              getattr(params, "calendar", None))
        if isinstance(y, dict):
            return y
    return SeriesInput(symbol=symbol, context=pd.DataFrame(values, columns=columns),
                       x_timestamp=x_timestamp, y_timestamp=y.reset_index(drop=True))


def build_inputs(bars: pd.DataFrame, future: pd.DataFrame | None, params: Any) -> tuple[list[SeriesInput], list[dict]]:
    """Split long-format bars into per-symbol inputs (in first-seen order) and per-symbol errors."""
    inputs: list[SeriesInput] = []
    errors: list[dict] = []
    given = dict(tuple(future.groupby("symbol", sort=False))) if future is not None and len(future) else {}
    for symbol, frame in bars.groupby("symbol", sort=False):
        item = build_one(str(symbol), frame, given.get(symbol), params)
        (errors if isinstance(item, dict) else inputs).append(item)
    return inputs, errors


def result_rows(item: SeriesInput, output: Any, quantiles: list[float] | None) -> dict[str, Any]:
    """Flat result columns of one series: symbol, step, timestamp, open..amount, q<level>_<column>.

    Plain arrays, not a DataFrame: building one frame per series costs more than the tiny
    forecasts it holds; the caller concatenates the columns of a whole job once (`rows_frame`)."""
    mean = output.mean if hasattr(output, "mean") and isinstance(output.mean, pd.DataFrame) else output
    n = len(mean)
    columns: dict[str, Any] = {"symbol": np.full(n, item.symbol, dtype=object), "step": np.arange(n),
                               "timestamp": pd.DatetimeIndex(item.y_timestamp)}
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
                         "timestamp": pd.to_datetime(stamps, unit="ns", utc=True), **columns})
