"""Request bodies and upload files for API tests (valid by default; tests break one field)."""

from __future__ import annotations

import io
from datetime import datetime, timedelta, timezone
from typing import Any

import pandas as pd

START = datetime(2024, 6, 18, 1, 30, tzinfo=timezone.utc)


def make_bars(n: int = 8, *, start: datetime = START, step: timedelta = timedelta(minutes=5), price: float = 11.27) -> list[dict[str, Any]]:
    """`n` sane bars (high >= max(open, close) >= min(open, close) >= low, volume > 0)."""
    bars = []
    for i in range(n):
        close = price + 0.01 * (i % 3)
        bars.append({
            "timestamp": (start + i * step).isoformat(), "open": price, "high": max(price, close) + 0.01,
            "low": min(price, close) - 0.01, "close": close, "volume": 379.0 + i, "amount": 427161.0 + i,
        })
    return bars


def make_forecast_request(n_symbols: int = 2, n_bars: int = 8, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "model": "random:mini", "device": "cpu", "lookback": 16, "pred_len": 3,
        "sampling": {"temperature": 1.0, "top_k": 0, "top_p": 0.9, "sample_count": 1, "seed": 7},
        "quantiles": [0.1, 0.5, 0.9],
        "series": [{"symbol": f"SYM{i}.SH", "freq": "5min", "bars": make_bars(n_bars, price=10.0 + i)} for i in range(n_symbols)],
    }
    body.update(overrides)
    return body


def bars_frame(n_symbols: int = 2, n_bars: int = 8) -> pd.DataFrame:
    rows = [{"symbol": f"SYM{i}.SH", **bar} for i in range(n_symbols) for bar in make_bars(n_bars, price=10.0 + i)]
    return pd.DataFrame(rows)


def make_csv(n_symbols: int = 2, n_bars: int = 8, frame: pd.DataFrame | None = None) -> bytes:
    return (bars_frame(n_symbols, n_bars) if frame is None else frame).to_csv(index=False).encode()


def make_parquet(n_symbols: int = 2, n_bars: int = 8, frame: pd.DataFrame | None = None) -> bytes:
    frame = bars_frame(n_symbols, n_bars) if frame is None else frame
    frame = frame.assign(timestamp=pd.to_datetime(frame["timestamp"], utc=True))
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    return buffer.getvalue()
