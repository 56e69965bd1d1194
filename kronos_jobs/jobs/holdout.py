"""Held-out evaluation of a fine-tune: base model vs fine-tuned model vs a last-value baseline.

Windows come from the validation part of each series (`finetune_submit.split_series`), which no
training step saw: `lookback` bars of context, then `predict_window` bars to forecast. Their
timestamps are the bars' naive local wall-clock time, as in training and forecasts (`split_series`
converts them; kronos_jobs/inputs/wall_clock.py). Both models decode greedily (top_k=1), so the comparison
has no sampling noise and repeats exactly.

Metrics per contender:
* `mse_close` — mean squared error of the forecast close over every window and step (price units);
* `direction_accuracy` — share of windows whose forecast close at the horizon moves in the same
  direction (up vs not up) from the last context close as the actual close. The last-value
  baseline predicts no move at all, so it has none (`null`).
"""

from __future__ import annotations

import dataclasses
import logging
from typing import Any

import numpy as np
import pandas as pd

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class HoldoutWindow:
    symbol: str
    context: pd.DataFrame  # lookback rows: timestamp (naive local wall clock), open..amount
    future: pd.DataFrame  # predict_window rows: the truth


def holdout_windows(val: dict[str, pd.DataFrame], lookback: int, horizon: int, max_windows: int) -> list[HoldoutWindow]:
    """Windows stepping by `horizon` through each validation series, thinned evenly to `max_windows`."""
    windows = []
    for symbol, frame in val.items():
        for start in range(0, len(frame) - lookback - horizon + 1, horizon):
            windows.append(HoldoutWindow(symbol, frame.iloc[start:start + lookback].reset_index(drop=True),
                                         frame.iloc[start + lookback:start + lookback + horizon].reset_index(drop=True)))
    if len(windows) > max_windows:
        keep = np.linspace(0, len(windows) - 1, max_windows).round().astype(int)
        windows = [windows[i] for i in sorted(set(keep.tolist()))]
    return windows


def _forecast_close(predictor, windows: list[HoldoutWindow], horizon: int) -> np.ndarray:
    """(n_windows, horizon) forecast closes, greedy decoding."""
    columns = [c for c in ("open", "high", "low", "close", "volume", "amount") if c in windows[0].context.columns]
    outputs = predictor.predict_batch(
        [w.context[columns] for w in windows], [w.context["timestamp"] for w in windows],
        [w.future["timestamp"] for w in windows], pred_len=horizon, T=1.0, top_k=1, top_p=1.0, sample_count=1, seed=0)
    return np.stack([out["close"].to_numpy(dtype=np.float64) for out in outputs])


def _scores(pred: np.ndarray, last: np.ndarray, actual: np.ndarray, *, with_direction: bool) -> dict[str, Any]:
    scores: dict[str, Any] = {"mse_close": float(np.mean((pred - actual) ** 2))}
    if with_direction:
        scores["direction_accuracy"] = float(np.mean((pred[:, -1] > last) == (actual[:, -1] > last)))
    else:
        scores["direction_accuracy"] = None
    return scores


def evaluate(predictors: dict[str, Any], windows: list[HoldoutWindow], horizon: int) -> dict[str, Any]:
    """Metrics of each predictor (name -> KronosPredictor) and of the last-value baseline."""
    if not windows:
        return {"n_windows": 0, "note": "no held-out windows (validation_split is 0 or the series are short)"}
    actual = np.stack([w.future["close"].to_numpy(dtype=np.float64) for w in windows])  # (N, H)
    last = np.array([float(w.context["close"].iloc[-1]) for w in windows])  # (N,)
    metrics: dict[str, Any] = {"n_windows": len(windows), "horizon": horizon,
                               "symbols": sorted({w.symbol for w in windows})[:50]}
    for name, predictor in predictors.items():
        metrics[name] = _scores(_forecast_close(predictor, windows, horizon), last, actual, with_direction=True)
    metrics["last_value"] = _scores(np.repeat(last[:, None], horizon, axis=1), last, actual, with_direction=False)
    return metrics
