"""Metrics against hand-computed small cases."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from kronos_jobs.evaluation.metrics import central_intervals, crps_of_paths, diebold_mariano, metrics_table, naive_scale

ORIGINS = pd.date_range("2024-01-01", periods=3, freq="1D", tz="UTC")


def rows() -> pd.DataFrame:
    """One symbol, three origins, two steps; the origin's close is 10 throughout."""
    actual = [11, 12, 10, 9, 12, 12]
    made = []
    for model, kind, forecast in (("m", "model", [11, 12, 9, 10, 13, 14]), ("naive", "baseline", [10] * 6)):
        for i, (origin, step) in enumerate((o, s) for o in ORIGINS for s in (1, 2)):
            made.append({"model": model, "kind": kind, "lookback": 4, "symbol": "A", "origin": origin, "repeat": 0,
                         "step": step, "close": forecast[i], "actual_close": actual[i], "last_close": 10.0,
                         "q0.1_close": forecast[i] - 1.0, "q0.9_close": forecast[i] + 1.0})
    return pd.DataFrame(made)


def test_hand_computed_case():
    scales = naive_scale(pd.DataFrame({"symbol": "A", "close": [10.0, 11.0, 10.0, 12.0]}))
    assert scales["A"] == pytest.approx((1 + 1 + 2) / 3)
    table = metrics_table(rows(), scales=scales, quantiles=[0.1, 0.9], horizons=[2]).set_index(["model", "step", "horizon"])
    step1 = table.xs(("m", 1), level=("model", "step")).iloc[0]
    # step 1: actual 11, 10, 12; forecast 11, 9, 13 -> |e| 0, 1, 1
    assert step1["n"] == 3
    assert step1["mae"] == pytest.approx(2 / 3)
    assert step1["rmse"] == pytest.approx(math.sqrt(2 / 3))
    assert step1["smape"] == pytest.approx((0 + 1 / 19 + 1 / 25) / 3)
    assert step1["mase"] == pytest.approx((2 / 3) / (4 / 3))
    # moves from 10: forecast +1, -1, +3; actual +1, 0, +2 -> 2 of 3 agree
    assert step1["directional_accuracy"] == pytest.approx(2 / 3)
    # naive |e| 1, 0, 2 -> MAE 1; skill 1 - (2/3) / 1
    assert step1["skill"] == pytest.approx(1 / 3)
    # pinball at 0.1 of (forecast - 1): e' = actual - q = 1, 2, 0 -> 0.1 x mean = 0.1
    assert step1["pinball_q0.1"] == pytest.approx(0.1)
    # [forecast - 1, forecast + 1] holds 11, 10, 12: all three
    assert step1["coverage_0.1_0.9"] == 1.0
    pooled = table.xs(("m", 2), level=("model", "horizon")).iloc[0]
    assert pooled["n"] == 6 and pooled["mae"] == pytest.approx(5 / 6)
    naive = table.xs(("naive", 1), level=("model", "step")).iloc[0]
    assert naive["skill"] == 0 and math.isnan(naive["dm_stat"])


def test_crps_of_paths_matches_its_definition():
    # CRPS(F, y) = E|X - y| - 0.5 E|X - X'| for the empirical distribution of the paths.
    paths = np.array([[1.0, 2.0, 4.0]])
    y = np.array([2.5])
    expected = np.mean(np.abs(paths - y)) - 0.5 * np.mean(np.abs(paths[0][:, None] - paths[0][None, :]))
    assert crps_of_paths(y, paths)[0] == pytest.approx(expected)


def test_diebold_mariano_without_autocorrelation_is_the_t_test():
    d = np.array([0.5, -0.1, 0.3, 0.8, 0.2, 0.4, -0.2, 0.6])
    stat, p = diebold_mariano(d, horizon=1)
    # maxlags 0: White's variance of a mean = sum((d - mean)^2) / n^2
    se = math.sqrt(np.sum((d - d.mean()) ** 2)) / len(d)
    assert stat == pytest.approx(d.mean() / se)
    assert 0 < p < 0.05
    assert all(math.isnan(v) for v in diebold_mariano(np.zeros(5), horizon=1))


def test_central_intervals():
    assert central_intervals([0.1, 0.5, 0.9, 0.25, 0.75]) == [(0.1, 0.9), (0.25, 0.75)]
    assert central_intervals([0.2, 0.9]) == []
