"""Parse and validate forecast input into the long-format bars DataFrame.

Input arrives three ways: inline JSON series, an uploaded CSV file or an uploaded Parquet file. All
three end in the same frame (docs/contracts.md): columns `symbol` (str), `timestamp` (tz-aware UTC),
`open, high, low, close` (float64), when given `volume` and `amount` (float64), and
`utc_offset_minutes` (int32: each timestamp's UTC offset as given, 0 for naive or UTC input), sorted by
symbol then timestamp. Every problem raises `InvalidRequest` naming where it is:
`series[2].bars[5].high` for inline bars, `file row 17: high` for files (rows count from 1, the CSV
header not counted).

Policies (the README repeats them):
- Timestamps with a UTC offset are converted to UTC; timestamps without one are taken as UTC. The
  offset is kept per row (`utc_offset_minutes`) because the model sees the bars' local wall-clock
  time (UTC + offset; kronos_jobs/wall_clock.py), as upstream Kronos does.
- Bars of one symbol may come in any order; they are sorted by timestamp. Two bars of one symbol
  with the same timestamp are rejected.
- `volume` and `amount` are optional, but all or none of the bars of a request carry each column
  (a missing `volume` means volume and amount are zero, see the model spec section 5.2).
- `freq` is a pandas offset alias (`5min`, `1h`, `1D`, `B`), checked here. Without `freq` and
  without `future_timestamps`, the worker infers the frequency from the bars (one place decides:
  `kronos_jobs/jobs/series.py`); a series where that fails gets a per-symbol error.
- Files: columns are matched case-insensitively; `timestamps` is accepted for `timestamp`; a
  `freq` column must hold one value per symbol; any other column is rejected.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from pandas.tseries.frequencies import to_offset

from kronos_jobs.errors import InvalidRequest, PayloadTooLarge
from kronos_jobs.names import PRICE_COLUMNS, UTC_OFFSET_COLUMN
from kronos_jobs.settings import Settings

SYMBOL_MAX_LENGTH = 64
# Exchange tickers and vendor codes: 600519.SH, BRK.B, BTC-USD, ES=F, ^GSPC, EUR/USD, CL:NYMEX.
SYMBOL_PATTERN = re.compile(r"^[A-Za-z0-9^][A-Za-z0-9._:/=@+\-^]*$")
SYMBOL_CHARSET = "letters, digits and . _ : / = @ + - ^"
OPTIONAL_COLUMNS = ("volume", "amount")
FILE_COLUMNS = ("symbol", "timestamp", *PRICE_COLUMNS, *OPTIONAL_COLUMNS, "freq")
TIMESTAMP_ALIASES = {"timestamps": "timestamp"}
MAX_DETAILS = 20  # problems listed per response; the first one is the message

Locate = Callable[[int, str], str]  # (row position in the frame, column) -> field name


@dataclass(frozen=True)
class SeriesInput:
    """Validated bars of one request, ready for `crud.results.save_job_input`."""

    bars: pd.DataFrame  # long format, see the module docstring
    future: pd.DataFrame | None  # symbol, timestamp: given future timestamps, or None
    freqs: dict[str, str | None]  # symbol -> pandas offset alias, None when not given
    source: str  # inline | csv | parquet

    @property
    def symbols(self) -> list[str]:
        return list(self.freqs)


class _Problems:
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


def _invalid(field: str, problem: str) -> InvalidRequest:
    return InvalidRequest(f"{field}: {problem}", field=field, details=[{"field": field, "message": problem}])


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
        raise _invalid(field, problem)
    return symbol


def check_freq(value: Any, field: str) -> str:
    """A pandas offset alias such as `5min`, `1h`, `1D` or `B`; raises InvalidRequest otherwise."""
    text = str(value).strip()
    try:
        offset = to_offset(text)
    except (ValueError, TypeError):
        offset = None
    if offset is None or not text or len(text) > 32:
        raise _invalid(field, f"{text[:40]!r} is not a pandas frequency alias such as 5min, 1h, 1D or B")
    return text


# --- inline JSON ---------------------------------------------------------------------------------


def parse_inline_series(series: Sequence[Mapping[str, Any]], *, pred_len: int, settings: Settings) -> SeriesInput:
    """Validate `series[i]` dicts (symbol, freq, bars, future_timestamps) into a SeriesInput."""
    if not series:
        raise _invalid("series", "give at least one series")
    if len(series) > settings.max_series_per_job:
        raise _invalid("series", f"{len(series)} series, at most {settings.max_series_per_job} per job (KRONOS_MAX_SERIES_PER_JOB)")
    problems = _Problems()
    rows: dict[str, list[Any]] = {c: [] for c in ("symbol", "timestamp", *PRICE_COLUMNS, *OPTIONAL_COLUMNS)}
    series_pos: list[int] = []
    bar_pos: list[int] = []
    symbols: dict[str, int] = {}
    freqs_given: dict[str, Any] = {}
    futures: dict[str, tuple[int, list[Any]]] = {}
    optional_seen = {c: 0 for c in OPTIONAL_COLUMNS}
    for i, item in enumerate(series):
        symbol = "" if item.get("symbol") is None else str(item["symbol"]).strip()
        if problem := symbol_problem(symbol):
            problems.add(f"series[{i}].symbol", problem)
            continue
        if symbol in symbols:
            problems.add(f"series[{i}].symbol", f"symbol {symbol!r} already given in series[{symbols[symbol]}]")
            continue
        symbols[symbol] = i
        bars = item.get("bars") or []
        if not bars:
            problems.add(f"series[{i}].bars", "give at least one bar")
            continue
        if len(bars) > settings.max_bars_per_series:
            problems.add(f"series[{i}].bars", f"{len(bars)} bars, at most {settings.max_bars_per_series} per series (KRONOS_MAX_BARS_PER_SERIES)")
            continue
        freqs_given[symbol] = item.get("freq")
        if item.get("future_timestamps") is not None:
            futures[symbol] = (i, list(item["future_timestamps"]))
        for j, bar in enumerate(bars):
            rows["symbol"].append(symbol)
            for column in ("timestamp", *PRICE_COLUMNS, *OPTIONAL_COLUMNS):
                value = bar.get(column)
                rows[column].append(value)
                if column in OPTIONAL_COLUMNS and value is not None:
                    optional_seen[column] += 1
            series_pos.append(i)
            bar_pos.append(j)
    problems.raise_if_any()

    frame = pd.DataFrame(rows)
    locate: Locate = lambda pos, column: f"series[{series_pos[pos]}].bars[{bar_pos[pos]}].{column}"  # noqa: E731
    for column in OPTIONAL_COLUMNS:
        if optional_seen[column] == 0:
            frame = frame.drop(columns=column)
        elif optional_seen[column] < len(frame):
            missing = int(np.flatnonzero(frame[column].isna().to_numpy())[0])
            raise _invalid(locate(missing, column), f"missing, but other bars carry {column}; give it on every bar or on none")
    offsets = utc_offsets(frame["timestamp"])
    frame["timestamp"] = _parse_timestamps(frame["timestamp"], locate, problems)
    for column in (*PRICE_COLUMNS, *OPTIONAL_COLUMNS):
        if column in frame:
            frame[column] = _to_float(frame[column], column, locate, problems)
    frame[UTC_OFFSET_COLUMN] = offsets
    problems.raise_if_any()
    bars = _check_bars(frame, locate)

    future = _inline_future(futures, bars, pred_len)
    freqs = {s: _series_freq(freqs_given.get(s), f"series[{i}].freq") for s, i in symbols.items()}
    return SeriesInput(bars=bars, future=future, freqs=freqs, source="inline")


def _inline_future(futures: dict[str, tuple[int, list[Any]]], bars: pd.DataFrame, pred_len: int) -> pd.DataFrame | None:
    if not futures:
        return None
    last = bars.groupby("symbol", sort=False)["timestamp"].max()
    parts = []
    for symbol, (i, values) in futures.items():
        field = f"series[{i}].future_timestamps"
        if len(values) != pred_len:
            raise _invalid(field, f"{len(values)} timestamps given, pred_len is {pred_len}")
        problems = _Problems()
        raw = pd.Series(values, dtype=object)
        stamps = _parse_timestamps(raw, lambda pos, _c: f"{field}[{pos}]", problems)
        problems.raise_if_any()
        steps = stamps.diff().iloc[1:].to_numpy()
        if (steps <= np.timedelta64(0)).any():
            pos = int(np.flatnonzero(steps <= np.timedelta64(0))[0]) + 1
            raise _invalid(f"{field}[{pos}]", "future timestamps must be strictly increasing")
        if stamps.iloc[0] <= last[symbol]:
            raise _invalid(f"{field}[0]", f"{stamps.iloc[0].isoformat()} is not after the last bar ({last[symbol].isoformat()})")
        parts.append(pd.DataFrame({"symbol": symbol, "timestamp": stamps.to_numpy(), UTC_OFFSET_COLUMN: utc_offsets(raw)}))
    future = pd.concat(parts, ignore_index=True)
    future["timestamp"] = pd.to_datetime(future["timestamp"], utc=True)
    return future.sort_values(["symbol", "timestamp"], kind="stable").reset_index(drop=True)


def _series_freq(given: Any, field: str) -> str | None:
    if given is None or not str(given).strip():
        return None  # the worker infers it from the bars (kronos_jobs/jobs/series.py)
    return check_freq(given, field)


# --- uploaded files ------------------------------------------------------------------------------


def parse_upload(
    data: bytes,
    *,
    filename: str | None,
    content_type: str | None,
    freq: str | None,
    settings: Settings,
    symbol: str | None = None,
) -> SeriesInput:
    """Validate an uploaded long-format CSV or Parquet file (one row per symbol and bar).

    `symbol` (the series store's `/v1/series/{symbol}/bars`): a file without a `symbol` column is
    that symbol's; a file with one must hold only that symbol."""
    if len(data) > settings.max_upload_bytes:
        raise PayloadTooLarge(f"file: {len(data)} bytes, at most {settings.max_upload_bytes} (KRONOS_MAX_UPLOAD_BYTES)", field="file")
    if not data:
        raise _invalid("file", "the uploaded file is empty")
    freq = check_freq(freq, "freq") if freq else None
    source = upload_format(data, filename=filename, content_type=content_type)
    raw = _read_parquet(data) if source == "parquet" else _read_csv(data)
    if symbol is not None:
        raw = _with_symbol(raw, symbol)
    bars, file_freqs = _frame_from_file(raw, settings)
    freqs = {symbol: _series_freq(file_freqs.get(symbol) or freq, f"freq (symbol {symbol})") for symbol in bars["symbol"].unique()}
    return SeriesInput(bars=bars, future=None, freqs=freqs, source=source)


def upload_format(data: bytes, *, filename: str | None, content_type: str | None) -> str:
    """`parquet` or `csv`, by magic bytes first, then by file name and content type."""
    if data[:4] == b"PAR1":
        return "parquet"
    name = (filename or "").lower()
    kind = (content_type or "").lower()
    if name.endswith(".parquet") or "parquet" in kind:
        return "parquet"  # claims Parquet without the magic: the reader says why it is corrupt
    return "csv"


def _read_csv(data: bytes) -> pd.DataFrame:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise _invalid("file", f"CSV is not UTF-8 text (byte {exc.start})") from None
    try:
        return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        raise _invalid("file", f"cannot parse CSV: {str(exc).strip()[:200]}") from None


def _read_parquet(data: bytes) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        table = pq.read_table(io.BytesIO(data))
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise _invalid("file", f"cannot read Parquet: {str(exc).strip()[:200]}") from None
    try:
        return table.to_pandas()
    except (pa.ArrowException, ValueError, TypeError) as exc:
        raise _invalid("file", f"unsupported Parquet column types: {str(exc).strip()[:200]}") from None


def _frame_from_file(raw: pd.DataFrame, settings: Settings) -> tuple[pd.DataFrame, dict[str, str]]:
    renamed = {c: TIMESTAMP_ALIASES.get(str(c).strip().lower(), str(c).strip().lower()) for c in raw.columns}
    raw = raw.rename(columns=renamed)
    if raw.columns.duplicated().any():
        dup = raw.columns[raw.columns.duplicated()][0]
        raise _invalid("file", f"column {dup!r} appears twice")
    unknown = [c for c in raw.columns if c not in FILE_COLUMNS]
    if unknown:
        raise _invalid(f"file column {unknown[0]}", f"unexpected column {unknown[0]!r}; expected {', '.join(FILE_COLUMNS)}")
    missing = [c for c in ("symbol", "timestamp", *PRICE_COLUMNS) if c not in raw.columns]
    if missing:
        raise _invalid(f"file column {missing[0]}", f"missing column {missing[0]!r}; required: symbol, timestamp, open, high, low, close")
    if raw.empty:
        raise _invalid("file", "no data rows")
    raw = raw.reset_index(drop=True)
    locate: Locate = lambda pos, column: f"file row {pos + 1}: {column}"  # noqa: E731
    problems = _Problems()
    symbols = raw["symbol"].map(lambda v: None if _is_missing(v) else str(v).strip())
    symbol_problems = symbols.map(symbol_problem)
    for pos in np.flatnonzero(symbol_problems.notna().to_numpy())[:MAX_DETAILS]:
        problems.add(locate(int(pos), "symbol"), symbol_problems.iloc[pos])
    frame = pd.DataFrame({"symbol": symbols})
    frame["timestamp"] = _parse_timestamps(raw["timestamp"], locate, problems)
    for column in (*PRICE_COLUMNS, *OPTIONAL_COLUMNS):
        if column in raw:
            frame[column] = _to_float(raw[column], column, locate, problems)
    frame[UTC_OFFSET_COLUMN] = utc_offsets(raw["timestamp"])
    problems.raise_if_any()
    file_freqs = _file_freqs(raw, frame["symbol"]) if "freq" in raw else {}
    counts = frame["symbol"].value_counts()
    if len(counts) > settings.max_series_per_job:
        raise _invalid("file", f"{len(counts)} symbols, at most {settings.max_series_per_job} per job (KRONOS_MAX_SERIES_PER_JOB)")
    if counts.max() > settings.max_bars_per_series:
        symbol = counts.idxmax()
        raise _invalid("file", f"symbol {symbol!r} has {counts.max()} bars, at most {settings.max_bars_per_series} (KRONOS_MAX_BARS_PER_SERIES)")
    return _check_bars(frame, locate), file_freqs


def _file_freqs(raw: pd.DataFrame, symbols: pd.Series) -> dict[str, str]:
    freqs = raw["freq"].map(lambda v: None if _is_missing(v) else str(v).strip())
    out: dict[str, str] = {}
    for symbol, values in freqs.groupby(symbols, sort=False):
        distinct = values.dropna().unique()
        if len(distinct) > 1:
            raise _invalid(f"freq (symbol {symbol})", f"symbol {symbol!r} has several freq values ({', '.join(map(str, distinct[:3]))})")
        if len(distinct) == 1:
            out[str(symbol)] = str(distinct[0])
    return out


# --- shared column checks ------------------------------------------------------------------------


def _is_missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value)) or (isinstance(value, str) and not value.strip())


def _parse_timestamps(values: pd.Series, locate: Locate, problems: _Problems) -> pd.Series:
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
    return stamps.astype("datetime64[us, UTC]")


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


def _to_float(values: pd.Series, column: str, locate: Locate, problems: _Problems) -> pd.Series:
    numbers = pd.to_numeric(values.map(lambda v: v.strip() if isinstance(v, str) else v), errors="coerce").astype("float64")
    bad = ~np.isfinite(numbers.to_numpy())
    for pos in np.flatnonzero(bad)[:MAX_DETAILS]:
        shown = values.iloc[pos]
        what = "missing" if _is_missing(shown) else f"{str(shown)[:40]!r} is not a finite number"
        problems.add(locate(int(pos), column), what)
    return numbers


def _check_bars(frame: pd.DataFrame, locate: Locate) -> pd.DataFrame:
    """OHLC sanity, non-negative volume/amount, unique timestamps; returns the sorted frame."""
    problems = _Problems()
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


# --- the series store ------------------------------------------------------------------------------
# Store ingest reuses the checks above; what differs: the symbol can come from the URL, and every
# symbol needs a frequency because it is part of the stored key.


def parse_symbol_bars(symbol: str, *, freq: str | None, bars: Sequence[Mapping[str, Any]], settings: Settings) -> SeriesInput:
    """JSON bars of one symbol (`/v1/series/{symbol}/bars`); problems name `bars[3].high`."""
    try:
        return parse_inline_series([{"symbol": symbol, "freq": freq, "bars": list(bars)}], pred_len=1, settings=settings)
    except InvalidRequest as exc:
        raise _renamed(exc, "series[0].") from None


def read_store_input(session, *, tenant_id: str, symbols: Sequence[str], freq: str | None, lookback: int,
                     settings: Settings) -> SeriesInput:
    """A forecast's input from the series store (`series_store` in the request): each symbol's
    latest `lookback` bars; a symbol not stored is a 422 naming `series_store.symbols[i]`."""
    from kronos_jobs.crud import series as series_crud
    from kronos_jobs.errors import NotFound

    if len(symbols) > settings.max_series_per_job:
        raise _invalid("series_store.symbols", f"{len(symbols)} symbols, at most {settings.max_series_per_job} per job (KRONOS_MAX_SERIES_PER_JOB)")
    freq = check_freq(freq, "series_store.freq") if freq else None
    keys: dict[str, str] = {}
    for i, value in enumerate(symbols):
        symbol = check_symbol(value, f"series_store.symbols[{i}]")
        if symbol in keys:
            raise _invalid(f"series_store.symbols[{i}]", f"symbol {symbol!r} is listed twice")
        try:
            keys[symbol] = series_crud.resolve_freq(session, tenant_id=tenant_id, symbol=symbol, freq=freq)
        except NotFound as exc:
            raise _invalid(f"series_store.symbols[{i}]", exc.message) from None
        except InvalidRequest as exc:
            raise _invalid("series_store.freq", exc.message.removeprefix("freq: ")) from None
    frame = series_crud.latest_bars(session, tenant_id=tenant_id, keys=keys.items(), lookback=lookback)
    bars = frame.drop(columns="freq").dropna(axis=1, how="all")
    return SeriesInput(bars=bars, future=None, freqs=keys, source="store")


def store_freqs(series: SeriesInput) -> dict[str, str]:
    """Each symbol's frequency for the store key: as given, else inferred from its bars."""
    from kronos_jobs.jobs.series import infer_offset  # the one place that infers a frequency

    freqs: dict[str, str] = {}
    for symbol, given in series.freqs.items():
        stamps = series.bars.loc[series.bars["symbol"] == symbol, "timestamp"]
        inferred = None if given or len(stamps) < 3 else infer_offset(stamps.reset_index(drop=True))
        freq = given or (inferred.freqstr if inferred is not None else None)
        if freq is None:
            raise _invalid("freq", f"give freq for symbol {symbol!r} (a pandas alias such as 5min or 1D); "
                                   "it could not be inferred from its bars")
        freqs[symbol] = freq
    return freqs


def _with_symbol(raw: pd.DataFrame, symbol: str) -> pd.DataFrame:
    columns = {str(c).strip().lower(): c for c in raw.columns}
    if "symbol" not in columns:
        return raw.assign(symbol=symbol)
    values = raw[columns["symbol"]].map(lambda v: None if _is_missing(v) else str(v).strip())
    other = np.flatnonzero((values != symbol).to_numpy())
    if len(other):
        pos = int(other[0])
        raise _invalid(f"file row {pos + 1}: symbol", f"{values.iloc[pos]!r} differs from {symbol!r} in the URL")
    return raw


def _renamed(exc: InvalidRequest, prefix: str) -> InvalidRequest:
    details = [{**d, "field": str(d.get("field", "")).removeprefix(prefix)} for d in exc.details]
    return type(exc)(exc.message.replace(prefix, ""), details=details)

