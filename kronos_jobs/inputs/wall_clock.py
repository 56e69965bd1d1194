"""Local wall-clock time: the one rule for the timestamps the Kronos model sees.

Bars are stored and results returned in UTC, but Kronos' temporal embedding (minute, hour, weekday,
day, month) must see the bars' LOCAL wall-clock time, as upstream users pass it
(`2024-06-18T11:15:00+08:00` is hour 11, not 3). So every path that hands timestamps to `model/`
(forecasts: kronos_jobs/jobs/series.py; fine-tune training and evaluation:
kronos_jobs/jobs/finetune_submit.py `split_series`) converts them here, to naive local timestamps:
UTC + each row's `utc_offset_minutes` (kept by kronos_jobs/inputs/parsing.py; 0 for naive input, so naive input
is UTC = wall clock). Bars without that column (the series store keeps UTC only; job inputs stored
before the column existed) are shown in the symbol's calendar `timezone` when a calendar names one,
else in UTC. `model/` never sees offsets or zones.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd

from kronos_jobs.core.names import UTC_OFFSET_COLUMN


def calendar_zone(calendar: dict[str, Any] | None, symbol: str) -> str | None:
    """The IANA zone the symbol's calendar names explicitly, or None."""
    from kronos_jobs.inputs import calendar as trading

    spec = trading.calendar_for(calendar, symbol)
    zone = spec.get("timezone") if spec else None
    return str(zone) if zone else None


def zone_offset_minutes(zone: str, at: pd.Timestamp) -> int:
    """`zone`'s UTC offset in minutes at the instant `at` (tz-aware)."""
    return int(at.tz_convert(zone).utcoffset().total_seconds() // 60)


def as_utc(stamps: Any) -> pd.DatetimeIndex:
    """Timestamps as a tz-aware UTC index; naive ones are UTC (kronos_jobs/inputs/parsing.py)."""
    stamps = pd.DatetimeIndex(stamps)
    return stamps.tz_localize("UTC") if stamps.tz is None else stamps.tz_convert("UTC")


def row_offsets(frame: pd.DataFrame) -> np.ndarray | None:
    """(N,) int64 UTC offsets in minutes of a long-format frame's rows, or None without the column."""
    return frame[UTC_OFFSET_COLUMN].to_numpy(dtype="int64") if UTC_OFFSET_COLUMN in frame.columns else None


def wall_clock(utc: pd.DatetimeIndex, offsets: np.ndarray | None, zone: str | None) -> pd.DatetimeIndex:
    """Naive local wall-clock times of tz-aware `utc`: UTC + per-row offset minutes, else in `zone`, else UTC."""
    if offsets is not None:
        return utc.tz_convert("UTC").tz_localize(None) + pd.to_timedelta(np.asarray(offsets, dtype="int64"), unit="min")
    if zone:
        return utc.tz_convert(zone).tz_localize(None)
    return utc.tz_convert("UTC").tz_localize(None)


def wall_clock_all(stamps: pd.DatetimeIndex, offsets: np.ndarray | None, codes: np.ndarray, symbols: pd.Index,
                   calendar: dict[str, Any] | None) -> pd.DatetimeIndex:
    """`wall_clock` for every row of many symbols at once (per-symbol index arithmetic would dominate a
    1,000-symbol job). `stamps` (N,) tz-aware UTC, `codes` (N,) each row's position in `symbols`."""
    naive = stamps.tz_localize(None)
    if offsets is not None:
        if not offsets.any():
            return naive
        per_minute = pd.Timedelta(minutes=1).as_unit(naive.unit)._value
        return pd.DatetimeIndex((naive.asi8 + offsets * per_minute).view(f"M8[{naive.unit}]"), name=naive.name)
    zones: dict[str, list[int]] = {}
    for k, symbol in enumerate(symbols):
        if zone := calendar_zone(calendar, str(symbol)):
            zones.setdefault(zone, []).append(k)
    if not zones:
        return naive
    i8 = naive.asi8.copy()
    for zone, ks in zones.items():
        mask = np.isin(codes, ks)
        i8[mask] = stamps[mask].tz_convert(zone).tz_localize(None).asi8
    return pd.DatetimeIndex(i8.view(f"M8[{naive.unit}]"), name=naive.name)


def local_bars(bars: pd.DataFrame, calendar: dict[str, Any] | None = None) -> pd.DataFrame:
    """A copy of long-format bars (`symbol`, `timestamp`, ...) for the model: `timestamp` naive local
    wall clock, the offset column dropped."""
    out = bars.drop(columns=UTC_OFFSET_COLUMN, errors="ignore")
    if "timestamp" not in out.columns or out.empty:
        return out
    stamps = as_utc(bars["timestamp"])
    codes, symbols = pd.factorize(bars["symbol"].astype(str), sort=False)
    wall = wall_clock_all(stamps, row_offsets(bars), codes, symbols, calendar)
    out["timestamp"] = wall.to_numpy()
    return out
