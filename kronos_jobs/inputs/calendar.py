"""Trading calendars: which future timestamps a forecast is made for.

The one place that turns (last bar, bar frequency, horizon) into future timestamps. Used by the
forecast pipeline (`jobs/series.py`) whenever future timestamps are generated rather than given,
so a nightly run and a posted job agree.

Rules (the README repeats them):
- A calendar is a JSON object: `{"timezone": "America/New_York", "weekdays": [0, 1, 2, 3, 4],
  "open": "09:30", "close": "15:55", "holidays": ["2024-12-25"]}`. Every key is optional.
  `weekdays` counts Monday as 0; `open`/`close` are local wall-clock times in `timezone`.
- Daily bars (`1D`, `2D`, ...): step by whole days in `timezone`, skipping days that are not
  trading days (weekends by default, and the holidays). Without a calendar, weekends are skipped.
- Intraday bars (`5min`, `1h`, ...): a timestamp is in session when its local date is a trading day
  and, if session hours are set, `open <= local time <= close` (set `open`/`close` to the first and
  last bar labels of a session, whichever way your bars are labelled). Without a calendar, intraday
  bars run around the clock (crypto, FX feeds).
- Other frequencies (`B`, `W`, `MS`, ...) keep pandas' own meaning.
Daylight-saving changes are handled by working on tz-aware instants and testing local times.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from collections.abc import Mapping
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import pandas as pd

from kronos_jobs.core.errors import InvalidRequest

ALL_DAYS = (0, 1, 2, 3, 4, 5, 6)
WEEKDAYS = (0, 1, 2, 3, 4)
CALENDAR_KEYS = ("timezone", "weekdays", "open", "close", "holidays")
MAX_SEARCH_FACTOR = 1024  # candidates looked at per wanted timestamp before giving up


def check_timezone(value: Any, field: str) -> str:
    """An IANA zone name such as `America/New_York`; InvalidRequest naming `field` otherwise."""
    name = str(value or "").strip()
    try:
        ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError, TypeError):
        raise InvalidRequest(f"{field}: {name[:64]!r} is not an IANA time zone such as America/New_York or UTC",
                             field=field) from None
    return name


def _time(value: Any, field: str) -> dt.time:
    try:
        return dt.time.fromisoformat(str(value).strip())
    except ValueError:
        raise InvalidRequest(f"{field}: {str(value)[:20]!r} is not a time of day such as 09:30", field=field) from None


@dataclasses.dataclass(frozen=True)
class TradingCalendar:
    timezone: str = "UTC"
    weekdays: tuple[int, ...] = WEEKDAYS
    open: dt.time | None = None
    close: dt.time | None = None
    holidays: frozenset[dt.date] = frozenset()

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any] | None, field: str = "calendar") -> "TradingCalendar":
        """Validate a JSON calendar; every problem is an InvalidRequest naming `field.key`."""
        if not spec:
            return cls()
        if not isinstance(spec, Mapping):
            raise InvalidRequest(f"{field}: expected an object with keys {', '.join(CALENDAR_KEYS)}", field=field)
        unknown = sorted(set(spec) - set(CALENDAR_KEYS))
        if unknown:
            raise InvalidRequest(f"{field}.{unknown[0]}: unknown key; expected {', '.join(CALENDAR_KEYS)}",
                                 field=f"{field}.{unknown[0]}")
        zone = check_timezone(spec.get("timezone") or "UTC", f"{field}.timezone")
        days = spec.get("weekdays", WEEKDAYS)
        if not isinstance(days, (list, tuple)) or not days or not all(isinstance(d, int) and 0 <= d <= 6 for d in days):
            raise InvalidRequest(f"{field}.weekdays: give a non-empty list of 0 (Monday) .. 6 (Sunday)",
                                 field=f"{field}.weekdays")
        open_, close = spec.get("open"), spec.get("close")
        if (open_ is None) != (close is None):
            which = "close" if open_ is not None else "open"
            raise InvalidRequest(f"{field}.{which}: session hours need both open and close", field=f"{field}.{which}")
        open_t = _time(open_, f"{field}.open") if open_ is not None else None
        close_t = _time(close, f"{field}.close") if close is not None else None
        if open_t is not None and close_t is not None and close_t < open_t:
            raise InvalidRequest(f"{field}.close: {close_t} is before open {open_t} (overnight sessions are not supported)",
                                 field=f"{field}.close")
        holidays = set()
        for i, day in enumerate(spec.get("holidays") or ()):
            try:
                holidays.add(dt.date.fromisoformat(str(day)))
            except ValueError:
                raise InvalidRequest(f"{field}.holidays[{i}]: {str(day)[:20]!r} is not a date such as 2024-12-25",
                                     field=f"{field}.holidays[{i}]") from None
        return cls(timezone=zone, weekdays=tuple(sorted(set(days))), open=open_t, close=close_t,
                   holidays=frozenset(holidays))

    def to_spec(self) -> dict[str, Any]:
        spec: dict[str, Any] = {"timezone": self.timezone, "weekdays": list(self.weekdays)}
        if self.open is not None:
            spec.update(open=self.open.isoformat("minutes"), close=self.close.isoformat("minutes"))
        if self.holidays:
            spec["holidays"] = sorted(d.isoformat() for d in self.holidays)
        return spec

    def in_session(self, stamps: pd.DatetimeIndex, intraday: bool) -> np.ndarray:
        """Boolean mask: which of the tz-aware `stamps` are trading timestamps."""
        local = stamps.tz_convert(self.timezone)
        mask = np.isin(local.day_of_week, self.weekdays)
        if self.holidays:
            mask &= ~np.isin(local.date, list(self.holidays))
        if intraday and self.open is not None:
            seconds = local.hour * 3600 + local.minute * 60 + local.second  # local wall clock
            mask &= (seconds >= _seconds(self.open)) & (seconds <= _seconds(self.close))
        return np.asarray(mask, dtype=bool)


def _seconds(t: dt.time) -> int:
    return t.hour * 3600 + t.minute * 60 + t.second


ROUND_THE_CLOCK = TradingCalendar(weekdays=ALL_DAYS)


def calendar_for(spec: Mapping[str, Any] | None, symbol: str | None = None) -> Mapping[str, Any] | None:
    """Pick a symbol's calendar spec from `{"default": {...}, "symbols": {sym: {...}}}` or a flat spec."""
    if not spec:
        return None
    if "default" in spec or "symbols" in spec:
        per_symbol = spec.get("symbols") or {}
        return per_symbol.get(symbol) if symbol in per_symbol else spec.get("default")
    return spec


def future_timestamps(last: pd.Timestamp, pred_len: int, offset: pd.DateOffset,
                      calendar: TradingCalendar | None = None) -> pd.DatetimeIndex:
    """`pred_len` trading timestamps after `last` (tz-aware UTC) at bar frequency `offset`."""
    last = pd.Timestamp(last)
    if last.tzinfo is None:
        last = last.tz_localize("UTC")
    if isinstance(offset, pd.offsets.Day):
        return _daily(last, pred_len, offset.n, calendar or TradingCalendar())
    if isinstance(offset, pd.offsets.Tick) and offset.nanos < pd.Timedelta("1D").value:
        if calendar is None or calendar == ROUND_THE_CLOCK:
            return pd.date_range(start=last + offset, periods=pred_len, freq=offset).tz_convert("UTC")
        return _search(last + offset, pred_len, offset, calendar, intraday=True)
    return pd.date_range(start=last + offset, periods=pred_len, freq=offset).tz_convert("UTC")


def _daily(last: pd.Timestamp, pred_len: int, days: int, calendar: TradingCalendar) -> pd.DatetimeIndex:
    # Whole local days: a daily bar stamped 00:00 New York stays at 00:00 across a DST change.
    local = last.tz_convert(calendar.timezone)
    wall = local.tz_localize(None)
    found: list[pd.Timestamp] = []
    start, looked = wall + pd.Timedelta(days=days), 0
    while len(found) < pred_len:
        candidates = pd.date_range(start, periods=pred_len * 4, freq=f"{days}D")
        stamps = candidates.tz_localize(calendar.timezone, nonexistent="shift_forward", ambiguous=False)
        found += list(stamps[calendar.in_session(stamps, intraday=False)])
        start, looked = candidates[-1] + pd.Timedelta(days=days), looked + len(candidates)
        if looked > pred_len * MAX_SEARCH_FACTOR:
            raise ValueError(f"calendar {calendar.to_spec()} has no trading days after {last}")
    return pd.DatetimeIndex(found[:pred_len]).tz_convert("UTC")


def _search(start: pd.Timestamp, pred_len: int, offset: pd.DateOffset, calendar: TradingCalendar,
            intraday: bool) -> pd.DatetimeIndex:
    found: list[pd.DatetimeIndex] = []
    count, size, looked = 0, max(pred_len * 8, 512), 0
    while count < pred_len:
        candidates = pd.date_range(start=start, periods=size, freq=offset)
        chosen = candidates[calendar.in_session(candidates, intraday)]
        found.append(chosen)
        count += len(chosen)
        looked += size
        start = candidates[-1] + offset
        if looked > pred_len * MAX_SEARCH_FACTOR * 8:
            raise ValueError(f"calendar {calendar.to_spec()} has no session timestamps at {offset.freqstr} after {start}")
    return found[0].append(found[1:])[:pred_len].tz_convert("UTC")
