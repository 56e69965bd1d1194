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
  time (UTC + offset; kronos_jobs/inputs/wall_clock.py), as upstream Kronos does.
- Bars of one symbol may come in any order; they are sorted by timestamp. Two bars of one symbol
  with the same timestamp are rejected.
- `volume` and `amount` are optional, but all or none of the bars of a request carry each column
  (a missing `volume` means volume and amount are zero, see the model spec section 5.2).
- `freq` is a pandas offset alias (`5min`, `1h`, `1D`, `B`), checked here. Without `freq` and
  without `future_timestamps`, the worker infers the frequency from the bars (one place decides:
  `kronos_jobs/inputs/frequency.py`); a series where that fails gets a per-symbol error.
- Files: columns are matched case-insensitively; `timestamps` is accepted for `timestamp`; a
  `freq` column must hold one value per symbol; any other column is rejected.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from kronos_jobs.core.errors import InvalidRequest, PayloadTooLarge, invalid
from kronos_jobs.core.names import PRICE_COLUMNS, UTC_OFFSET_COLUMN
from kronos_jobs.core.settings import Settings
from kronos_jobs.inputs.checks import (
    MAX_DETAILS,
    OPTIONAL_COLUMNS,
    Locate,
    Problems,
    check_bars,
    check_freq,
    is_missing,
    parse_timestamps,
    symbol_problem,
    to_float,
    utc_offsets,
)

FILE_COLUMNS = ("symbol", "timestamp", *PRICE_COLUMNS, *OPTIONAL_COLUMNS, "freq")
# Caps checked on the raw bytes before any parser runs: a header of a million columns costs pandas'
# reader hours (duplicate-name mangling is quadratic), and one endless line holds the whole file.
MAX_FILE_COLUMNS = 4 * len(FILE_COLUMNS)
MAX_LINE_BYTES = 4096
TIMESTAMP_ALIASES = {"timestamps": "timestamp"}


@dataclass(frozen=True)
class BarsInput:
    """Validated bars of one request, ready for `crud.results.save_job_input` (the model's per-symbol
    input built from them is `kronos_jobs.jobs.series.SeriesInput`)."""

    bars: pd.DataFrame  # long format, see the module docstring
    future: pd.DataFrame | None  # symbol, timestamp: given future timestamps, or None
    freqs: dict[str, str | None]  # symbol -> pandas offset alias, None when not given
    source: str  # inline | csv | parquet

    @property
    def symbols(self) -> list[str]:
        return list(self.freqs)


# --- inline JSON ---------------------------------------------------------------------------------


def parse_inline_series(series: Sequence[Mapping[str, Any]], *, pred_len: int, settings: Settings) -> BarsInput:
    """Validate `series[i]` dicts (symbol, freq, bars, future_timestamps) into a BarsInput."""
    if not series:
        raise invalid("series", "give at least one series")
    if len(series) > settings.max_series_per_job:
        raise invalid("series", f"{len(series)} series, at most {settings.max_series_per_job} per job (KRONOS_MAX_SERIES_PER_JOB)")
    problems = Problems()
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
            raise invalid(locate(missing, column), f"missing, but other bars carry {column}; give it on every bar or on none")
    offsets = utc_offsets(frame["timestamp"])
    frame["timestamp"] = parse_timestamps(frame["timestamp"], locate, problems)
    for column in (*PRICE_COLUMNS, *OPTIONAL_COLUMNS):
        if column in frame:
            frame[column] = to_float(frame[column], column, locate, problems)
    frame[UTC_OFFSET_COLUMN] = offsets
    problems.raise_if_any()
    bars = check_bars(frame, locate)

    future = _inline_future(futures, bars, pred_len)
    freqs = {s: _series_freq(freqs_given.get(s), f"series[{i}].freq") for s, i in symbols.items()}
    return BarsInput(bars=bars, future=future, freqs=freqs, source="inline")


def _inline_future(futures: dict[str, tuple[int, list[Any]]], bars: pd.DataFrame, pred_len: int) -> pd.DataFrame | None:
    if not futures:
        return None
    last = bars.groupby("symbol", sort=False)["timestamp"].max()
    parts = []
    for symbol, (i, values) in futures.items():
        field = f"series[{i}].future_timestamps"
        if len(values) != pred_len:
            raise invalid(field, f"{len(values)} timestamps given, pred_len is {pred_len}")
        problems = Problems()
        raw = pd.Series(values, dtype=object)
        stamps = parse_timestamps(raw, lambda pos, _c: f"{field}[{pos}]", problems)
        problems.raise_if_any()
        steps = stamps.diff().iloc[1:].to_numpy()
        if (steps <= np.timedelta64(0)).any():
            pos = int(np.flatnonzero(steps <= np.timedelta64(0))[0]) + 1
            raise invalid(f"{field}[{pos}]", "future timestamps must be strictly increasing")
        if stamps.iloc[0] <= last[symbol]:
            raise invalid(f"{field}[0]", f"{stamps.iloc[0].isoformat()} is not after the last bar ({last[symbol].isoformat()})")
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
) -> BarsInput:
    """Validate an uploaded long-format CSV or Parquet file (one row per symbol and bar).

    `symbol` (the series store's `/v1/series/{symbol}/bars`): a file without a `symbol` column is
    that symbol's; a file with one must hold only that symbol."""
    if len(data) > settings.max_upload_bytes:
        raise PayloadTooLarge(f"file: {len(data)} bytes, at most {settings.max_upload_bytes} (KRONOS_MAX_UPLOAD_BYTES)", field="file")
    if not data:
        raise invalid("file", "the uploaded file is empty")
    freq = check_freq(freq, "freq") if freq else None
    source = upload_format(data, filename=filename, content_type=content_type)
    raw = _read_parquet(data, settings) if source == "parquet" else _read_csv(data, settings)
    if symbol is not None:
        raw = _with_symbol(raw, symbol)
    bars, file_freqs = _frame_from_file(raw, settings)
    freqs = {symbol: _series_freq(file_freqs.get(symbol) or freq, f"freq (symbol {symbol})") for symbol in bars["symbol"].unique()}
    return BarsInput(bars=bars, future=None, freqs=freqs, source=source)


def upload_format(data: bytes, *, filename: str | None, content_type: str | None) -> str:
    """`parquet` or `csv`, by magic bytes first, then by file name and content type."""
    if data[:4] == b"PAR1":
        return "parquet"
    name = (filename or "").lower()
    kind = (content_type or "").lower()
    if name.endswith(".parquet") or "parquet" in kind:
        return "parquet"  # claims Parquet without the magic: the reader says why it is corrupt
    return "csv"


def check_csv_shape(data: bytes, settings: Settings) -> None:
    """Header columns, line length and row count of a CSV, from its bytes alone (no parser)."""
    newlines = np.flatnonzero(np.frombuffer(data, dtype=np.uint8) == ord("\n"))  # (lines,)
    header = data[: newlines[0] if len(newlines) else len(data)]
    columns = header.count(b",") + 1
    if columns > MAX_FILE_COLUMNS:
        raise invalid("file", f"the header has {columns} columns, at most {MAX_FILE_COLUMNS} accepted; "
                              f"expected {', '.join(FILE_COLUMNS)}")
    bounds = np.concatenate(([-1], newlines, [len(data)]))
    lengths = np.diff(bounds) - 1  # bytes per line without its newline
    if len(lengths) and int(lengths.max()) > MAX_LINE_BYTES:
        line = int(np.argmax(lengths))
        raise invalid("file", f"line {line + 1} is {int(lengths[line])} bytes long, at most {MAX_LINE_BYTES} accepted")
    rows = int(np.count_nonzero(lengths[1:]))  # data lines, blank ones not counted
    if rows > settings.max_upload_rows:
        raise invalid("file", f"{rows} data rows, at most {settings.max_upload_rows} (KRONOS_MAX_UPLOAD_ROWS)")


def _read_csv(data: bytes, settings: Settings) -> pd.DataFrame:
    check_csv_shape(data, settings)
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise invalid("file", f"CSV is not UTF-8 text (byte {exc.start})") from None
    try:
        return pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, skipinitialspace=True)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, ValueError) as exc:
        raise invalid("file", f"cannot parse CSV: {str(exc).strip()[:200]}") from None


def _read_parquet(data: bytes, settings: Settings) -> pd.DataFrame:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        meta = pq.ParquetFile(io.BytesIO(data)).metadata  # the footer only: the caps before any column is read
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise invalid("file", f"cannot read Parquet: {str(exc).strip()[:200]}") from None
    if meta.num_columns > MAX_FILE_COLUMNS:
        raise invalid("file", f"the file has {meta.num_columns} columns, at most {MAX_FILE_COLUMNS} accepted; "
                              f"expected {', '.join(FILE_COLUMNS)}")
    if meta.num_rows > settings.max_upload_rows:
        raise invalid("file", f"{meta.num_rows} data rows, at most {settings.max_upload_rows} (KRONOS_MAX_UPLOAD_ROWS)")
    try:
        table = pq.read_table(io.BytesIO(data))
    except (pa.ArrowException, OSError, ValueError) as exc:
        raise invalid("file", f"cannot read Parquet: {str(exc).strip()[:200]}") from None
    try:
        return table.to_pandas()
    except (pa.ArrowException, ValueError, TypeError) as exc:
        raise invalid("file", f"unsupported Parquet column types: {str(exc).strip()[:200]}") from None


def _frame_from_file(raw: pd.DataFrame, settings: Settings) -> tuple[pd.DataFrame, dict[str, str]]:
    renamed = {c: TIMESTAMP_ALIASES.get(str(c).strip().lower(), str(c).strip().lower()) for c in raw.columns}
    raw = raw.rename(columns=renamed)
    if raw.columns.duplicated().any():
        dup = raw.columns[raw.columns.duplicated()][0]
        raise invalid("file", f"column {dup!r} appears twice")
    unknown = [c for c in raw.columns if c not in FILE_COLUMNS]
    if unknown:
        raise invalid(f"file column {unknown[0]}", f"unexpected column {unknown[0]!r}; expected {', '.join(FILE_COLUMNS)}")
    missing = [c for c in ("symbol", "timestamp", *PRICE_COLUMNS) if c not in raw.columns]
    if missing:
        raise invalid(f"file column {missing[0]}", f"missing column {missing[0]!r}; required: symbol, timestamp, open, high, low, close")
    if raw.empty:
        raise invalid("file", "no data rows")
    raw = raw.reset_index(drop=True)
    locate: Locate = lambda pos, column: f"file row {pos + 1}: {column}"  # noqa: E731
    problems = Problems()
    symbols = raw["symbol"].map(lambda v: None if is_missing(v) else str(v).strip())
    distinct = symbols.nunique()
    if distinct > settings.max_series_per_job:  # before the per-row work on timestamps and numbers
        raise invalid("file", f"{distinct} symbols, at most {settings.max_series_per_job} per job (KRONOS_MAX_SERIES_PER_JOB)")
    symbol_problems = symbols.map(symbol_problem)
    for pos in np.flatnonzero(symbol_problems.notna().to_numpy())[:MAX_DETAILS]:
        problems.add(locate(int(pos), "symbol"), symbol_problems.iloc[pos])
    frame = pd.DataFrame({"symbol": symbols})
    frame["timestamp"] = parse_timestamps(raw["timestamp"], locate, problems)
    for column in (*PRICE_COLUMNS, *OPTIONAL_COLUMNS):
        if column in raw:
            frame[column] = to_float(raw[column], column, locate, problems)
    frame[UTC_OFFSET_COLUMN] = utc_offsets(raw["timestamp"])
    problems.raise_if_any()
    file_freqs = _file_freqs(raw, frame["symbol"]) if "freq" in raw else {}
    counts = frame["symbol"].value_counts()
    if len(counts) > settings.max_series_per_job:
        raise invalid("file", f"{len(counts)} symbols, at most {settings.max_series_per_job} per job (KRONOS_MAX_SERIES_PER_JOB)")
    if counts.max() > settings.max_bars_per_series:
        symbol = counts.idxmax()
        raise invalid("file", f"symbol {symbol!r} has {counts.max()} bars, at most {settings.max_bars_per_series} (KRONOS_MAX_BARS_PER_SERIES)")
    return check_bars(frame, locate), file_freqs


def _file_freqs(raw: pd.DataFrame, symbols: pd.Series) -> dict[str, str]:
    freqs = raw["freq"].map(lambda v: None if is_missing(v) else str(v).strip())
    out: dict[str, str] = {}
    for symbol, values in freqs.groupby(symbols, sort=False):
        distinct = values.dropna().unique()
        if len(distinct) > 1:
            raise invalid(f"freq (symbol {symbol})", f"symbol {symbol!r} has several freq values ({', '.join(map(str, distinct[:3]))})")
        if len(distinct) == 1:
            out[str(symbol)] = str(distinct[0])
    return out


# --- one symbol's bars for the series store ------------------------------------------------------
# Store ingest reuses the parsing above; what differs: the symbol comes from the URL.


def parse_symbol_bars(symbol: str, *, freq: str | None, bars: Sequence[Mapping[str, Any]], settings: Settings) -> BarsInput:
    """JSON bars of one symbol (`/v1/series/{symbol}/bars`); problems name `bars[3].high`."""
    try:
        return parse_inline_series([{"symbol": symbol, "freq": freq, "bars": list(bars)}], pred_len=1, settings=settings)
    except InvalidRequest as exc:
        raise _renamed(exc, "series[0].") from None


def _with_symbol(raw: pd.DataFrame, symbol: str) -> pd.DataFrame:
    columns = {str(c).strip().lower(): c for c in raw.columns}
    if "symbol" not in columns:
        return raw.assign(symbol=symbol)
    values = raw[columns["symbol"]].map(lambda v: None if is_missing(v) else str(v).strip())
    other = np.flatnonzero((values != symbol).to_numpy())
    if len(other):
        pos = int(other[0])
        raise invalid(f"file row {pos + 1}: symbol", f"{values.iloc[pos]!r} differs from {symbol!r} in the URL")
    return raw


def _renamed(exc: InvalidRequest, prefix: str) -> InvalidRequest:
    details = [{**d, "field": str(d.get("field", "")).removeprefix(prefix)} for d in exc.details]
    return type(exc)(exc.message.replace(prefix, ""), details=details)
