"""Baseline forecasts a model must beat, made from the same bars and origins as the model's.

    naive           every future bar is the last bar at the origin (persistence)
    seasonal_naive  the same bar one season earlier: the previous session's bar at the same time of
                    day for intraday bars, the same weekday of the previous week for daily bars
    drift           the last value plus the average change per bar over the context window
                    (the line from the first to the last context bar, extended)

Every baseline sees only bars at or before the origin. The seasonal one goes back as many whole
seasons as needed for the bar to lie at or before the origin; when the exact time is missing (a
holiday, a shortened session) it tries up to SEASONAL_SEARCH earlier seasons and then takes the
latest bar at or before the first candidate time.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

BASELINES = ("naive", "seasonal_naive", "drift")
SEASONAL_SEARCH = 5  # seasons tried beyond the first whose same bar is missing
INTRADAY_SEASON = pd.Timedelta(days=1)
DAILY_SEASON = pd.Timedelta(days=7)


def season_of(stamps: pd.DatetimeIndex) -> pd.Timedelta:
    """One trading day for intraday bars, one week for daily (or coarser) bars."""
    gaps = np.diff(stamps.as_unit("ns").asi8)
    gaps = gaps[gaps > 0]
    typical = pd.Timedelta(int(np.median(gaps)), unit="ns") if len(gaps) else DAILY_SEASON
    return INTRADAY_SEASON if typical < pd.Timedelta(days=1) else DAILY_SEASON


def naive(context: np.ndarray, horizon: int) -> np.ndarray:
    """(horizon, C): the last context bar repeated."""
    return np.repeat(context[-1:], horizon, axis=0)


def drift(context: np.ndarray, horizon: int) -> np.ndarray:
    """(horizon, C): last value + h x (last - first) / (L - 1); naive for a one-bar context."""
    if len(context) < 2:
        return naive(context, horizon)
    slope = (context[-1] - context[0]) / (len(context) - 1)  # (C,)
    return context[-1] + np.arange(1, horizon + 1)[:, None] * slope


def seasonal_naive(past_stamps: pd.DatetimeIndex, past: np.ndarray, targets: pd.DatetimeIndex,
                   season: pd.Timedelta) -> np.ndarray:
    """(len(targets), C): for each target time, the bar one or more whole seasons earlier that is
    at or before the origin (the last of `past_stamps`); see the module docstring."""
    known = past_stamps.as_unit("ns").asi8
    origin, step = known[-1], season.value
    out = np.empty((len(targets), past.shape[1]))
    for i, target in enumerate(targets.as_unit("ns").asi8):
        first = -(-(target - origin) // step)  # whole seasons back to reach at or before the origin
        candidates = target - step * np.arange(first, first + SEASONAL_SEARCH + 1)
        hit = np.searchsorted(known, candidates)
        exact = (hit < len(known)) & (known[np.minimum(hit, len(known) - 1)] == candidates)
        if exact.any():
            out[i] = past[hit[exact.argmax()]]
        else:
            out[i] = past[max(0, np.searchsorted(known, candidates[0], side="right") - 1)]
    return out


def baseline_forecasts(names: list[str] | tuple[str, ...], *, past_stamps: pd.DatetimeIndex, past: np.ndarray,
                       lookback: int, targets: pd.DatetimeIndex, season: pd.Timedelta) -> dict[str, np.ndarray]:
    """name -> (len(targets), C) forecasts from the bars at or before the origin (`past`, (N, C));
    drift uses the last `lookback` of them, as the model does."""
    horizon = len(targets)
    made = {}
    for name in names:
        if name == "naive":
            made[name] = naive(past, horizon)
        elif name == "drift":
            made[name] = drift(past[-lookback:], horizon)
        elif name == "seasonal_naive":
            made[name] = seasonal_naive(past_stamps, past, targets, season)
        else:
            raise ValueError(f"unknown baseline {name!r}; expected one of {', '.join(BASELINES)}")
    return made
