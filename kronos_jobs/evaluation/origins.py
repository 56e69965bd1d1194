"""Where each backtest forecast starts.

An origin is the index of the last bar a forecast may see: its context is the `lookback` bars at or
before it, its truth the `horizon` bars after it. Nothing else about a series reaches the model
(`context_slice`), which is what the look-ahead test in tests/evaluation checks.

Rolling windows use TimeGPT's `cross_validation` vocabulary: `n_windows` origins, `step_size` bars
apart, the last one `horizon` bars before the end so that every window has its full truth.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd


def bars_needed(*, lookback: int, horizon: int, n_windows: int, step_size: int) -> int:
    """Bars a series needs for `n_windows` rolling origins with a full context and truth each."""
    return lookback + horizon + (n_windows - 1) * step_size


def rolling_origins(n_bars: int, *, horizon: int, n_windows: int, step_size: int) -> np.ndarray:
    """(n_windows,) ascending origin indices; the last leaves exactly `horizon` bars after it."""
    last = n_bars - 1 - horizon
    return last - step_size * np.arange(n_windows)[::-1]


def explicit_origins(stamps: pd.DatetimeIndex, origins: Sequence[pd.Timestamp]) -> np.ndarray:
    """Index of the last bar at or before each origin time (-1 when the series starts later)."""
    instants = pd.DatetimeIndex(origins)
    instants = instants.tz_localize("UTC") if instants.tz is None else instants.tz_convert("UTC")
    return np.searchsorted(stamps.asi8, instants.as_unit(stamps.unit).asi8, side="right") - 1


def origin_indices(stamps: pd.DatetimeIndex, *, horizon: int, n_windows: int | None, step_size: int | None,
                   origins: Sequence[pd.Timestamp] | None) -> np.ndarray:
    """The origins of one series (sorted UTC `stamps`), from windows or explicit times."""
    if origins:
        return explicit_origins(stamps, origins)
    return rolling_origins(len(stamps), horizon=horizon, n_windows=int(n_windows), step_size=int(step_size))


def context_slice(origin: int, lookback: int) -> slice:
    """The bars a forecast from `origin` sees: the `lookback` bars ending at the origin, inclusive."""
    return slice(max(0, origin + 1 - lookback), origin + 1)


def truth_slice(origin: int, horizon: int) -> slice:
    """The `horizon` bars after `origin`: the truth, never the input."""
    return slice(origin + 1, origin + 1 + horizon)
