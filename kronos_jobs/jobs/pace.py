"""How fast this worker process decodes, per forecast shape: the measure bulk chunks are cut by.

Each process keeps an exponentially weighted mean of series per second of model time for every
(model, device, lookback, pred_len, sample_count) it has run, so a GPU worker's chunks grow to
what fills its device and a CPU worker's stay a few seconds long (core/workload.py `chunk_series`).
Nothing is shared between processes: each one measures the device it owns.
"""

from __future__ import annotations

import threading

_WEIGHT = 0.5  # of the newest measurement: chunks adapt within two or three of them
_rates: dict[tuple, float] = {}
_lock = threading.Lock()


def shape_key(model: str, device: str, lookback: int, pred_len: int, sample_count: int) -> tuple:
    return (model, device, int(lookback), int(pred_len), int(sample_count))


def measured_rate(key: tuple) -> float | None:
    """Series per second of model time measured for `key` in this process, or None."""
    with _lock:
        return _rates.get(key)


def record(key: tuple, series: int, seconds: float) -> None:
    """Fold one chunk (`series` decoded in `seconds` of model time) into the process's rate."""
    if series <= 0 or seconds <= 0:
        return
    rate = series / seconds
    with _lock:
        old = _rates.get(key)
        _rates[key] = rate if old is None else (1 - _WEIGHT) * old + _WEIGHT * rate


def forget() -> None:
    """Drop every measurement (tests)."""
    with _lock:
        _rates.clear()
