"""A series' bar frequency when none was given: the one place that infers it."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd

FREQ_SAMPLE_BARS = 64  # recent bars used to infer a series' frequency when none was given


def infer_offset(timestamps: pd.Series | pd.DatetimeIndex) -> pd.DateOffset | None:
    """The series' bar frequency: pandas' inference on recent bars, else the most common gap."""
    recent = pd.DatetimeIndex(timestamps.iloc[-FREQ_SAMPLE_BARS:] if isinstance(timestamps, pd.Series)
                              else timestamps[-FREQ_SAMPLE_BARS:])
    steps = np.diff(recent.as_unit("ns").asi8)
    if len(steps) >= 2 and steps[0] > 0 and (steps == steps[0]).all():
        # Evenly spaced (the common case): the step is the frequency, as pandas' slower inference says;
        # whole days stay calendar days (the trading calendar skips weekends for those).
        step = pd.Timedelta(int(steps[0]), unit="ns")
        if step % pd.Timedelta(days=1) == pd.Timedelta(0):
            return pd.offsets.Day(step.days)
        return pd.tseries.frequencies.to_offset(step)
    if len(recent) >= 3:
        with warnings.catch_warnings():  # pandas 3 warns that the return type becomes an offset
            warnings.simplefilter("ignore")
            alias = pd.infer_freq(recent)
        if alias:
            return pd.tseries.frequencies.to_offset(alias)
    gaps = recent.to_series().diff().dropna()
    gaps = gaps[gaps > pd.Timedelta(0)]
    if gaps.empty:
        return None
    return pd.tseries.frequencies.to_offset(gaps.mode().iloc[0])
