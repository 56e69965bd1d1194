"""A forecast's input read from the series store, and the frequency each stored symbol is kept under."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from kronos_jobs.core.errors import InvalidRequest, NotFound, invalid
from kronos_jobs.core.settings import Settings
from kronos_jobs.crud import series as series_crud
from kronos_jobs.inputs.checks import check_freq, check_symbol
from kronos_jobs.inputs.frequency import infer_offset
from kronos_jobs.inputs.parsing import BarsInput


def read_store_input(session, *, tenant_id: str, symbols: Sequence[str], freq: str | None, lookback: int,
                     settings: Settings) -> BarsInput:
    """A forecast's input from the series store (`series_store` in the request): each symbol's
    latest `lookback` bars; a symbol not stored is a 422 naming `series_store.symbols[i]`."""
    if len(symbols) > settings.max_series_per_job:
        raise invalid("series_store.symbols", f"{len(symbols)} symbols, at most {settings.max_series_per_job} per job (KRONOS_MAX_SERIES_PER_JOB)")
    freq = check_freq(freq, "series_store.freq") if freq else None
    keys: dict[str, str] = {}
    for i, value in enumerate(symbols):
        symbol = check_symbol(value, f"series_store.symbols[{i}]")
        if symbol in keys:
            raise invalid(f"series_store.symbols[{i}]", f"symbol {symbol!r} is listed twice")
        try:
            keys[symbol] = series_crud.resolve_freq(session, tenant_id=tenant_id, symbol=symbol, freq=freq)
        except NotFound as exc:
            raise invalid(f"series_store.symbols[{i}]", exc.message) from None
        except InvalidRequest as exc:
            raise invalid("series_store.freq", exc.message.removeprefix("freq: ")) from None
    frame = series_crud.latest_bars(session, tenant_id=tenant_id, keys=keys.items(), lookback=lookback)
    bars = frame.drop(columns="freq").dropna(axis=1, how="all")
    return BarsInput(bars=bars, future=None, freqs=keys, source="store")


def store_freqs(series: BarsInput) -> dict[str, str]:
    """Each symbol's frequency for the store key: as given, else inferred from its bars."""
    freqs: dict[str, str] = {}
    for symbol, given in series.freqs.items():
        stamps = series.bars.loc[series.bars["symbol"] == symbol, "timestamp"]
        inferred = None if given or len(stamps) < 3 else infer_offset(stamps.reset_index(drop=True))
        freq = given or (inferred.freqstr if inferred is not None else None)
        if freq is None:
            raise invalid("freq", f"give freq for symbol {symbol!r} (a pandas alias such as 5min or 1D); "
                                   "it could not be inferred from its bars")
        freqs[symbol] = freq
    return freqs


def read_store_range(session, *, tenant_id: str, symbols: Sequence[str], freq: str | None, start, end,
                     settings: Settings, field: str = "series_store") -> BarsInput:
    """A backtest's input from the series store: every stored bar of each symbol with
    start <= timestamp <= end (either open); a symbol not stored is a 422 naming `<field>.symbols[i]`."""
    if len(symbols) > settings.max_series_per_job:
        raise invalid(f"{field}.symbols", f"{len(symbols)} symbols, at most {settings.max_series_per_job} per job (KRONOS_MAX_SERIES_PER_JOB)")
    freq = check_freq(freq, f"{field}.freq") if freq else None
    if start is not None and end is not None and start > end:
        raise invalid(f"{field}.start", f"start {start.isoformat()} is after end {end.isoformat()}")
    frames, keys = [], {}
    for i, value in enumerate(symbols):
        symbol = check_symbol(value, f"{field}.symbols[{i}]")
        if symbol in keys:
            raise invalid(f"{field}.symbols[{i}]", f"symbol {symbol!r} is listed twice")
        try:
            keys[symbol] = series_crud.resolve_freq(session, tenant_id=tenant_id, symbol=symbol, freq=freq)
        except NotFound as exc:
            raise invalid(f"{field}.symbols[{i}]", exc.message) from None
        except InvalidRequest as exc:
            raise invalid(f"{field}.freq", exc.message.removeprefix("freq: ")) from None
        frame = series_crud.read_bars(session, tenant_id=tenant_id, symbol=symbol, freq=keys[symbol], start=start, end=end)
        if frame.empty:
            raise invalid(f"{field}.symbols[{i}]", f"symbol {symbol!r} has no stored bars between {start} and {end}")
        frames.append(frame)
    bars = pd.concat(frames, ignore_index=True).dropna(axis=1, how="all")
    return BarsInput(bars=bars, future=None, freqs=keys, source="store")
