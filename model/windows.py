"""Training windows over bar series for fine-tuning (spec §6.1 dataset, with the #227 fix).

A window is ``lookback + predict_window + 1`` consecutive bars of one series. Its features are
normalised with the mean and population std of its first ``lookback`` rows only, so the targets do
not leak into the inputs (upstream's CSV pipeline still uses the whole window, spec §7.3 item 14).
Items are pure functions of their index: no RNG lives in the dataset, so worker processes cannot
replay one another's draws (item 12).
"""

from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import torch

from .predictor import FEATURE_COLUMNS, PRICE_COLUMNS, time_features

logger = logging.getLogger(__name__)




def _series_arrays(df: pd.DataFrame, name: Any) -> tuple[np.ndarray, np.ndarray]:
    """One series -> features (N, 6) float32 (raw) and time features (N, 5) float32."""
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"series {name!r}: expected a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in PRICE_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"series {name!r}: missing price column(s) {missing}")
    for column in ("timestamps", "timestamp"):
        if column in df.columns:
            stamps = pd.DatetimeIndex(df[column])
            break
    else:
        if not isinstance(df.index, pd.DatetimeIndex):
            raise ValueError(f"series {name!r}: needs a 'timestamps' or 'timestamp' column or a DatetimeIndex")
        stamps = df.index
    df = df.copy()
    # Same completion rule as the predictor (spec §5.2), so training and inference see the same features.
    if "volume" not in df.columns:
        df["volume"], df["amount"] = 0.0, 0.0
    elif "amount" not in df.columns:
        df["amount"] = df["volume"] * df[list(PRICE_COLUMNS)].mean(axis=1)
    x = df[list(FEATURE_COLUMNS)].to_numpy(dtype=np.float32)
    bad = ~np.isfinite(x)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ValueError(f"series {name!r}: {int(bad.sum())} NaN/inf value(s), first in column "
                         f"{FEATURE_COLUMNS[col]!r} at row {int(row)}; clean or drop them first")
    return x, time_features(stamps)


class BarWindows(torch.utils.data.Dataset):
    """All windows of ``lookback + predict_window + 1`` consecutive bars over several series.

    Item ``i`` is a pure function of ``i``: ``(x (W, 6), stamp (W, 5))`` float32, ``x`` normalised
    with mean / population std of its first ``lookback`` rows (+1e-5) and clipped to ``±clip``.
    Series shorter than one window are skipped.
    """

    def __init__(self, series: Mapping[Any, pd.DataFrame] | Sequence[pd.DataFrame], lookback: int,
                 predict_window: int, clip: float = 5.0):
        self.lookback, self.clip = lookback, clip
        self.window = lookback + predict_window + 1
        items = series.items() if isinstance(series, Mapping) else enumerate(series)
        self._x: list[np.ndarray] = []
        self._stamp: list[np.ndarray] = []
        index = []
        for name, df in items:
            x, stamp = _series_arrays(df, name)
            count = len(x) - self.window + 1
            if count <= 0:
                logger.info("series %r: %d rows < window %d, skipped", name, len(x), self.window)
                continue
            index.append(np.stack([np.full(count, len(self._x)), np.arange(count)], axis=1))
            self._x.append(x)
            self._stamp.append(stamp)
        self._index = np.concatenate(index) if index else np.zeros((0, 2), dtype=np.int64)

    def __len__(self) -> int:
        return len(self._index)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        k, start = self._index[i]
        x = self._x[k][start:start + self.window]
        context = x[: self.lookback]  # statistics from the context only (the #227 fix)
        x = np.clip((x - context.mean(axis=0)) / (context.std(axis=0) + 1e-5), -self.clip, self.clip)
        return torch.from_numpy(x.astype(np.float32)), torch.from_numpy(self._stamp[k][start:start + self.window])

    def batch(self, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Stack items: ``x (B, W, 6)``, ``stamp (B, W, 5)``."""
        xs, stamps = zip(*(self[int(i)] for i in indices))
        return torch.stack(xs), torch.stack(stamps)
