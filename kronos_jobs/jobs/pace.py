"""How long this worker process takes to decode a chunk, per forecast shape: what bulk chunks are
cut by.

A chunk's model time is close to affine in its series: a fixed part (every decode step runs the
whole model once, whatever the batch) plus a part per series. On a CPU the fixed part dominates
small batches (kronos-small, lookback 400, 48 steps: about 3 s for one series and 22 s for 64 on
a loaded 2-core machine), so a cost per series measured on a small chunk would keep the next
chunk small for ever. Each process therefore keeps its last few (series, seconds) measurements
per (model, device, lookback, pred_len, sample_count) and fits seconds = fixed + per_series x
series; core/workload.py `chunk_series` picks the largest chunk whose predicted time fits the
target. A GPU's per-series cost is tiny, so its chunks grow to what fills it. Nothing is shared
between processes: each one measures the device it owns.
"""

from __future__ import annotations

import threading
from collections import deque

import numpy as np

_KEEP = 8  # measurements per shape: recent enough to follow the machine's load
_points: dict[tuple, deque] = {}
_lock = threading.Lock()


def shape_key(model: str, device: str, lookback: int, pred_len: int, sample_count: int) -> tuple:
    return (model, device, int(lookback), int(pred_len), int(sample_count))


def cost_model(key: tuple) -> tuple[float, float] | None:
    """(fixed seconds, seconds per series) for `key` in this process, or None before any chunk.

    One chunk size seen so far: no fixed part is assumed (the next, differently sized chunk
    shows it). A fit whose slope is not positive (noise) falls back to the mean cost per series."""
    with _lock:
        points = list(_points.get(key, ()))
    if not points:
        return None
    series = np.array([p[0] for p in points], dtype=float)
    seconds = np.array([p[1] for p in points], dtype=float)
    if len(set(series.tolist())) >= 2:
        per_series, fixed = np.polyfit(series, seconds, 1)
        if per_series > 0:
            return max(0.0, float(fixed)), float(per_series)
    return 0.0, float(seconds.sum() / series.sum())


def record(key: tuple, series: int, seconds: float) -> None:
    """Add one chunk (`series` decoded in `seconds` of model time) to the process's measurements."""
    if series <= 0 or seconds <= 0:
        return
    with _lock:
        _points.setdefault(key, deque(maxlen=_KEEP)).append((int(series), float(seconds)))


def forget() -> None:
    """Drop every measurement (tests)."""
    with _lock:
        _points.clear()
