"""Checks shared by every way bars arrive: symbols, frequencies, timestamps, numbers, OHLC sanity.

Every problem is collected per field (`Problems`) and raised as one `InvalidRequest` whose message
names the first field and whose details list up to MAX_DETAILS of them. Where a problem is depends
on how the bars came (`Locate`): `series[2].bars[5].high` for inline bars, `file row 17: high` for
files (rows count from 1, the CSV header not counted).

Time zones: a timestamp with a UTC offset is converted to UTC; one without is taken as UTC. The
offset as given is kept per row (`utc_offsets`, the `utc_offset_minutes` column) because the model
sees the bars' local wall-clock time; kronos_jobs/inputs/wall_clock.py is where that rule lives.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
from pandas.tseries.frequencies import to_offset

from kronos_jobs.core.errors import InvalidRequest, invalid
from kronos_jobs.core.names import PRICE_COLUMNS

SYMBOL_MAX_LENGTH = 64
# Exchange tickers and vendor codes: 600519.SH, BRK.B, BTC-USD, ES=F, ^GSPC, EUR/USD, CL:NYMEX.
SYMBOL_PATTERN = re.compile(r"^[A-Za-z0-9^][A-Za-z0-9._:/=@+\-^]*$")
SYMBOL_CHARSET = "letters, digits and . _ : / = @ + - ^"
OPTIONAL_COLUMNS = ("volume", "amount")
MAX_DETAILS = 20  # problems listed per response; the first one is the message
# Bars and forecast timestamps must lie in pandas' nanosecond range (1677-2262), where every
# downstream step (resampling, the model's time features, Parquet results) can hold them; the lower
# bound is raised to 1900 because earlier "bars" are typos (year 0002), not market data.
MIN_YEAR, MAX_YEAR = 1900, 2262
FREQ_MAX_LENGTH = 32

Locate = Callable[[int, str], str]  # (row position in the frame, column) -> field name


class Problems:
    """Collects field problems and raises one InvalidRequest listing them."""

    def __init__(self) -> None:
        self.details: list[dict[str, str]] = []
        self.count = 0

    def add(self, field: str, message: str) -> None:
        if any(d["field"] == field for d in self.details):
            return  # one problem per field: `low` above `close` and above `high` is one mistake
        self.count += 1
        if len(self.details) < MAX_DETAILS:
            self.details.append({"field": field, "message": message})

    def raise_if_any(self) -> None:
        if not self.details:
            return
        first = self.details[0]
        more = f" (and {self.count - 1} more problems)" if self.count > 1 else ""
        raise InvalidRequest(f"{first['field']}: {first['message']}{more}", field=first["field"], details=self.details)


# --- single values ------------------------------------------------------------------------------


def symbol_problem(symbol: str | None) -> str | None:
    """What is wrong with a (trimmed) symbol, or None when it is fine."""
    if not symbol:
        return "symbol must not be empty"
    if len(symbol) > SYMBOL_MAX_LENGTH:
        return f"symbol is {len(symbol)} characters, at most {SYMBOL_MAX_LENGTH} allowed"
    if not SYMBOL_PATTERN.match(symbol):
        return f"symbol {symbol!r} may hold only {SYMBOL_CHARSET}"
    return None


def check_symbol(value: Any, field: str) -> str:
    """A symbol, trimmed; raises InvalidRequest naming `field` when empty, too long or odd."""
    symbol = "" if value is None else str(value).strip()
    problem = symbol_problem(symbol)
    if problem:
        raise invalid(field, problem)
    return symbol


def check_freq(value: Any, field: str) -> str:
    """A pandas offset alias such as `5min`, `1h`, `1D` or `B`; raises InvalidRequest otherwise."""
    text = str(value).strip()
    offset = None
    if text and len(text) <= FREQ_MAX_LENGTH:
        try:
            offset = to_offset(text)
        except (ValueError, TypeError, OverflowError):
            offset = None
    if offset is None:
        raise invalid(field, f"{text[:40]!r} is not a pandas frequency alias such as 5min, 1h, 1D or B")
    if offset.n <= 0:  # `0min` never advances: no future timestamp could be generated from it
        raise invalid(field, f"{text!r} does not step forward; give a positive frequency such as 5min")
    return text


def is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or (isinstance(value, str) and not value.strip())


def parse_timestamps(values: pd.Series, locate: Locate, problems: Problems) -> pd.Series:
    """Any of ISO 8601 strings, datetimes or a datetime column -> UTC; NaT positions are reported."""
    if pd.api.types.is_datetime64_any_dtype(values.dtype):
        stamps = pd.to_datetime(values, utc=True)  # naive -> UTC, aware -> converted
    else:
        texts = values.map(lambda v: v.strip() if isinstance(v, str) else v)
        try:
            stamps = pd.to_datetime(texts, utc=True, format="ISO8601", errors="coerce")
        except (ValueError, TypeError, OverflowError):
            stamps = pd.Series([_one_timestamp(v) for v in texts], index=values.index, dtype="datetime64[us, UTC]")
    for pos in np.flatnonzero(stamps.isna().to_numpy())[:MAX_DETAILS]:
        shown = values.iloc[pos]
        problems.add(locate(int(pos), "timestamp"), f"{str(shown)[:40]!r} is not an ISO 8601 timestamp such as 2024-06-18T11:15:00+08:00")
    stamps = stamps.astype("datetime64[us, UTC]")
    years = stamps.dt.year.to_numpy(dtype="float64", na_value=np.nan)
    for pos in np.flatnonzero((years < MIN_YEAR) | (years > MAX_YEAR))[:MAX_DETAILS]:
        problems.add(locate(int(pos), "timestamp"), f"{stamps.iloc[pos].isoformat()} is outside the years {MIN_YEAR}-{MAX_YEAR}")
    return stamps


# The UTC offset at the end of an ISO 8601 timestamp with a time part: `...T11:15:00+08:00`, `-0500`, `Z`.
_OFFSET_SUFFIX = r"[Tt ]\d.*?(?:[Zz]|(?P<sign>[+-])(?P<hh>\d{2}):?(?P<mm>\d{2})?)\s*$"


def utc_offsets(values: pd.Series) -> np.ndarray:
    """(N,) int32: each raw timestamp's UTC offset in minutes as given (0 when naive, UTC or unparseable).

    Kept next to the UTC timestamps so the forecast can show the model the bars' local wall-clock
    time: `2024-06-18T11:15:00+08:00` is stored as 03:15 UTC with offset 480 (hour 11 for the model)."""
    out = np.zeros(len(values), dtype="int32")
    if isinstance(values.dtype, pd.DatetimeTZDtype):  # a zoned datetime column (Parquet): DST-aware per row
        wall = values.dt.tz_localize(None)
        utc = values.dt.tz_convert("UTC").dt.tz_localize(None)
        minutes = ((wall - utc) // pd.Timedelta(minutes=1)).to_numpy(dtype="float64")
        return np.nan_to_num(minutes).astype("int32")
    if pd.api.types.is_datetime64_any_dtype(values.dtype) or values.empty:
        return out  # naive datetimes: UTC
    is_text = values.map(lambda v: isinstance(v, str)).to_numpy(dtype=bool)
    if is_text.any():
        found = values[is_text].astype(str).str.extract(_OFFSET_SUFFIX)
        sign = np.where(found["sign"].to_numpy(dtype=object) == "-", -1, 1)
        hours = pd.to_numeric(found["hh"], errors="coerce").fillna(0).to_numpy()
        mins = pd.to_numeric(found["mm"], errors="coerce").fillna(0).to_numpy()
        out[is_text] = (sign * (hours * 60 + mins)).astype("int32")
    for pos in np.flatnonzero(~is_text):  # datetime / Timestamp objects (rare): their own offset
        value = values.iloc[pos]
        offset = value.utcoffset() if hasattr(value, "utcoffset") and getattr(value, "tzinfo", None) is not None else None
        if offset is not None:
            out[pos] = int(offset.total_seconds() // 60)
    return out


def _one_timestamp(value: Any) -> pd.Timestamp:
    try:
        stamp = pd.Timestamp(value)
    except (ValueError, TypeError, OverflowError):
        return pd.NaT
    if stamp is pd.NaT:
        return pd.NaT
    return stamp.tz_localize("UTC") if stamp.tzinfo is None else stamp.tz_convert("UTC")


def to_float(values: pd.Series, column: str, locate: Locate, problems: Problems) -> pd.Series:
    numbers = pd.to_numeric(values.map(lambda v: v.strip() if isinstance(v, str) else v), errors="coerce").astype("float64")
    bad = ~np.isfinite(numbers.to_numpy())
    for pos in np.flatnonzero(bad)[:MAX_DETAILS]:
        shown = values.iloc[pos]
        what = "missing" if is_missing(shown) else f"{str(shown)[:40]!r} is not a finite number"
        problems.add(locate(int(pos), column), what)
    return numbers


def check_bars(frame: pd.DataFrame, locate: Locate) -> pd.DataFrame:
    """OHLC sanity, non-negative volume/amount, unique timestamps; returns the sorted frame."""
    problems = Problems()
    o, h, l, c = (frame[col].to_numpy() for col in PRICE_COLUMNS)
    checks = [
        ("high", h < np.maximum(o, c), lambda p: f"high {h[p]:g} is below max(open, close) {max(o[p], c[p]):g}"),
        ("low", l > np.minimum(o, c), lambda p: f"low {l[p]:g} is above min(open, close) {min(o[p], c[p]):g}"),
        ("low", l > h, lambda p: f"low {l[p]:g} is above high {h[p]:g}"),
    ]
    for column in OPTIONAL_COLUMNS:
        if column in frame:
            v = frame[column].to_numpy()
            checks.append((column, v < 0, lambda p, v=v, column=column: f"{column} {v[p]:g} is negative"))
    for column, bad, message in checks:
        for pos in np.flatnonzero(bad)[:MAX_DETAILS]:
            problems.add(locate(int(pos), column), message(int(pos)))
    problems.raise_if_any()

    frame = frame.sort_values(["symbol", "timestamp"], kind="stable")
    dup = frame.duplicated(["symbol", "timestamp"], keep="first").to_numpy()
    for pos in frame.index.to_numpy()[dup][:MAX_DETAILS]:
        stamp = frame.at[pos, "timestamp"]
        problems.add(locate(int(pos), "timestamp"), f"duplicate timestamp {stamp.isoformat()} for symbol {frame.at[pos, 'symbol']!r}")
    problems.raise_if_any()
    return frame.reset_index(drop=True)
