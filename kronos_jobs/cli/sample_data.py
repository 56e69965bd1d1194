"""Deterministic synthetic bars for the demo, the tests and the benchmarks.

Nothing is downloaded: each symbol is a geometric random walk with its own start price, drift and
volatility, traded in an exchange-style session (09:30–11:30 and 13:00–15:00 local time on
weekdays, bars labelled by their end, as Kronos's training data is). Intraday volatility and volume
follow the usual U shape; OHLC are consistent (low <= open, close <= high), prices sit on a 0.01
tick, volume is positive and amount = volume x a price inside the bar.

The result is the project's long-format bars DataFrame: `symbol`, `timestamp` (tz-aware UTC),
`open, high, low, close, volume, amount`, sorted by symbol then timestamp. The same arguments
always give the same frame.
"""

from __future__ import annotations

from datetime import time

import numpy as np
import pandas as pd

SESSION_TZ = "Asia/Shanghai"
# (start, end) of each trading session in local time; bars are labelled by their end time.
SESSIONS: tuple[tuple[time, time], ...] = ((time(9, 30), time(11, 30)), (time(13, 0), time(15, 0)))
DEFAULT_END = pd.Timestamp("2024-06-28 15:00", tz=SESSION_TZ)
TICK_DECIMALS = 2
TICK = 10.0**-TICK_DECIMALS

__all__ = ["DEFAULT_END", "SESSIONS", "SESSION_TZ", "sample_bars", "session_timestamps", "symbols"]


def symbols(n: int) -> list[str]:
    """`n` synthetic symbol names, clearly not real listings: SIM000.XS, SIM001.XS, ..."""
    return [f"SIM{i:03d}.XS" for i in range(n)]


def _day_bar_ends(day: pd.Timestamp, step: pd.Timedelta) -> list[pd.Timestamp]:
    """The bar end times of one trading day, in local time."""
    ends = []
    for start, end in SESSIONS:
        t = day + pd.Timedelta(hours=start.hour, minutes=start.minute) + step
        stop = day + pd.Timedelta(hours=end.hour, minutes=end.minute)
        while t <= stop:
            ends.append(t)
            t += step
    return ends


def session_timestamps(n: int, *, freq: str = "5min", end: pd.Timestamp | None = None,
                       start_after: pd.Timestamp | None = None) -> pd.DatetimeIndex:
    """`n` bar timestamps (UTC) inside trading sessions.

    With `end` (default DEFAULT_END): the last `n` bars up to and including `end`. With
    `start_after`: the first `n` bars strictly after it, e.g. the future of a series.
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n}")
    if end is not None and start_after is not None:
        raise ValueError("give either end or start_after, not both")
    step = pd.Timedelta(freq)
    if step <= pd.Timedelta(0) or step > pd.Timedelta(hours=2):
        raise ValueError(f"freq must be a positive intraday step of at most 2h, got {freq!r}")

    forward = start_after is not None
    anchor = pd.Timestamp(start_after if forward else (end if end is not None else DEFAULT_END))
    anchor = anchor.tz_localize(SESSION_TZ) if anchor.tzinfo is None else anchor.tz_convert(SESSION_TZ)
    day = anchor.normalize()
    out: list[pd.Timestamp] = []
    while len(out) < n:
        if day.weekday() < 5:
            ends = _day_bar_ends(day, step)
            keep = [t for t in ends if t > anchor] if forward else [t for t in reversed(ends) if t <= anchor]
            out.extend(keep[: n - len(out)])
        day += pd.Timedelta(days=1) if forward else -pd.Timedelta(days=1)
    idx = pd.DatetimeIndex(out if forward else out[::-1])
    return idx.tz_convert("UTC")


def _intraday_shape(local: pd.DatetimeIndex) -> np.ndarray:
    """U-shaped activity over the day: busy at the opens and the close, quiet at midday."""
    minutes = np.asarray(local.hour * 60 + local.minute, dtype=float)
    open_am, close_pm = 9 * 60 + 30, 15 * 60
    from_open = np.minimum(np.abs(minutes - open_am), np.abs(minutes - 13 * 60))
    to_close = np.abs(close_pm - minutes)
    return np.asarray(1.0 + 1.5 * np.exp(-from_open / 20.0) + 0.8 * np.exp(-to_close / 20.0), dtype=float)


def _one_symbol(symbol: str, index: pd.DatetimeIndex, rng: np.random.Generator) -> pd.DataFrame:
    n = len(index)
    local = index.tz_convert(SESSION_TZ)
    shape = _intraday_shape(local)

    start_price = float(np.exp(rng.uniform(np.log(5.0), np.log(200.0))))
    sigma = rng.uniform(0.0008, 0.0025)  # per 5-minute bar at midday
    drift = rng.normal(0.0, 0.00005)
    # Overnight and lunch gaps get a larger shock than a bar inside a session.
    gap = np.ones(n)
    gap[1:] = np.where(np.diff(local.asi8) > pd.Timedelta(minutes=30).value, 4.0, 1.0)

    returns = drift + sigma * np.sqrt(shape) * gap * rng.standard_t(df=5, size=n) / np.sqrt(5 / 3)
    close = start_price * np.exp(np.cumsum(returns))
    open_ = np.empty(n)
    open_[0] = start_price
    open_[1:] = close[:-1] * np.exp(np.where(gap[1:] > 1, sigma * rng.normal(size=n - 1), 0.0))
    wick = sigma * np.sqrt(shape) * np.abs(rng.normal(size=(2, n)))
    high = np.maximum(open_, close) * np.exp(wick[0])
    low = np.minimum(open_, close) * np.exp(-wick[1])

    # Snap to the tick, then restore the OHLC order that rounding may have broken.
    open_, close, high, low = (np.maximum(np.round(a, TICK_DECIMALS), TICK) for a in (open_, close, high, low))
    high = np.maximum.reduce([high, open_, close])
    low = np.minimum.reduce([low, open_, close])

    base_volume = float(np.exp(rng.uniform(np.log(2e3), np.log(5e4))))
    volume = np.round(base_volume * shape * rng.lognormal(0.0, 0.5, size=n)) + 1.0
    typical = (high + low + close) / 3.0
    amount = np.round(volume * typical, 2)

    return pd.DataFrame({
        "symbol": symbol, "timestamp": index, "open": open_, "high": high, "low": low,
        "close": close, "volume": volume, "amount": amount,
    })


def sample_bars(n_symbols: int = 12, n_bars: int = 600, *, freq: str = "5min", seed: int = 0,
                end: pd.Timestamp | None = None) -> pd.DataFrame:
    """Synthetic long-format bars: `n_symbols` symbols x `n_bars` bars ending at `end`.

    Each symbol has its own random stream derived from (`seed`, symbol number), so the first k
    symbols are the same whatever `n_symbols` is.
    """
    if n_symbols < 1:
        raise ValueError(f"n_symbols must be at least 1, got {n_symbols}")
    if n_bars < 2:
        raise ValueError(f"n_bars must be at least 2, got {n_bars}")
    index = session_timestamps(n_bars, freq=freq, end=end)
    frames = [
        _one_symbol(name, index, np.random.default_rng([seed, i]))
        for i, name in enumerate(symbols(n_symbols))
    ]
    return pd.concat(frames, ignore_index=True)
