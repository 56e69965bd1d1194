"""The metrics table of a backtest: accuracy of close, calibration of the bands, skill vs persistence.

Why these libraries. utilsforecast's losses (Nixtla) take the long frame a backtest produces as it
is (an id column, a target and forecast columns) and give MAE, RMSE, sMAPE, the pinball loss and
interval coverage with the definitions used across Nixtla's cross-validation tools, so our numbers
compare with theirs. It has no CRPS from sample paths (its `scaled_crps` takes quantiles), so CRPS
comes from scoringrules' `crps_ensemble` (the energy-form estimator on the sample paths). The
Diebold-Mariano test is the OLS mean of the loss differential with statsmodels' Newey-West (HAC)
standard error: no hand-written autocovariances.

Definitions (close only; `step` is 1-based):
    mae, rmse             mean |e| and sqrt(mean e^2), e = actual - forecast
    smape                 mean |e| / (|actual| + |forecast|): utilsforecast's form, in [0, 1]
    mase                  per symbol, MAE / the in-sample MAE of the one-step naive forecast over the
                          symbol's bars before its first origin; averaged over symbols
    directional_accuracy  share of forecasts whose move from the origin's close has the sign of the
                          actual move (no move counts as its own sign)
    crps                  mean CRPS of the sample paths (sampled runs only)
    pinball_q<level>      mean pinball (quantile) loss of the q<level> band
    coverage_<lo>_<hi>    share of actuals inside the central interval [q<lo>, q<hi>]
    skill                 1 - MAE / MAE of naive on the same forecasts
    dm_stat, dm_pvalue    Diebold-Mariano test of mean(|e_model| - |e_naive|) = 0 over origins, with a
                          HAC variance (maxlags = horizon - 1); two-sided p-value, t reference
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import pandas as pd
import scoringrules
import statsmodels.api as sm
from utilsforecast import losses

NAIVE = "naive"
ID = "_group"
FORECAST, ACTUAL, LAST = "close", "actual_close", "last_close"
METRIC_COLUMNS = ("n", "mae", "rmse", "smape", "mase", "directional_accuracy", "crps", "skill", "dm_stat", "dm_pvalue")


def quantile_name(level: float) -> str:
    return f"q{level:g}_close"


def central_intervals(levels: Sequence[float]) -> list[tuple[float, float]]:
    """Pairs (lo, hi) of the requested levels with lo + hi = 1 and lo < 0.5: 0.1 & 0.9 -> 80%."""
    chosen = sorted({float(q) for q in levels})
    return [(lo, hi) for lo in chosen for hi in chosen if lo < 0.5 < hi and math.isclose(lo + hi, 1.0)]


def crps_of_paths(actual: np.ndarray, paths: np.ndarray) -> np.ndarray:
    """(n,) CRPS of each actual (n,) against its sample paths (n, S), by scoringrules."""
    return np.asarray(scoringrules.crps_ensemble(actual, paths, m_axis=-1), dtype="float64")


def naive_scale(history: pd.DataFrame) -> pd.Series:
    """symbol -> in-sample MAE of the one-step naive forecast (columns symbol, close, in time order)."""
    frame = history[["symbol", "close"]].copy()
    frame["naive"] = frame.groupby("symbol", sort=False)["close"].shift(1)
    frame = frame.dropna()
    scale = losses.mae(frame, ["naive"], id_col="symbol", target_col="close")
    return scale.set_index("symbol")["naive"]


def _with_group(rows: pd.DataFrame, keys: list[str]) -> pd.DataFrame:
    """`rows` with an integer group id of `keys` (what utilsforecast groups by)."""
    return rows.assign(**{ID: rows.groupby(keys, sort=False, dropna=False).ngroup().to_numpy()})


def _loss(fn, frame: pd.DataFrame, **kwargs) -> pd.Series:
    return fn(frame, id_col=ID, target_col=ACTUAL, **kwargs).set_index(ID).iloc[:, 0]


def _score(rows: pd.DataFrame, keys: list[str], scales: pd.Series, levels: Sequence[float]) -> pd.DataFrame:
    """One metrics row per group of `keys` (accuracy, bands; no skill yet)."""
    frame = _with_group(rows, keys)
    table = frame.groupby(ID, sort=False)[keys].first()
    table["n"] = frame.groupby(ID, sort=False).size()
    table["mae"] = _loss(losses.mae, frame, models=[FORECAST])
    table["rmse"] = _loss(losses.rmse, frame, models=[FORECAST])
    table["smape"] = _loss(losses.smape, frame, models=[FORECAST])
    # MASE: each symbol's MAE scaled by its own in-sample naive MAE, then the mean over symbols.
    symbol_keys = keys if "symbol" in keys else [*keys, "symbol"]
    per_symbol = _with_group(rows, symbol_keys)
    cells = per_symbol.groupby(ID, sort=False)[symbol_keys].first()
    cells["mase"] = _loss(losses.mae, per_symbol, models=[FORECAST]) / cells["symbol"].map(scales).replace(0.0, np.nan)
    cells = _with_group(cells.reset_index(drop=True), keys)
    mase = cells.groupby(keys, sort=False, dropna=False)["mase"].mean()
    table["mase"] = mase.reindex(pd.MultiIndex.from_frame(table[keys]) if len(keys) > 1 else table[keys[0]]).to_numpy()
    same_sign = np.sign(frame[FORECAST] - frame[LAST]) == np.sign(frame[ACTUAL] - frame[LAST])
    table["directional_accuracy"] = same_sign.groupby(frame[ID], sort=False).mean()
    table["crps"] = frame["crps"].groupby(frame[ID], sort=False).mean() if "crps" in frame else np.nan
    for level in levels:
        column = quantile_name(level)
        banded = frame[frame[column].notna()] if column in frame else frame.iloc[:0]
        table[f"pinball_q{level:g}"] = (_loss(losses.quantile_loss, banded, models={FORECAST: column}, q=level)
                                        if len(banded) else np.nan)
    for lo, hi in central_intervals(levels):
        level = round((hi - lo) * 100)
        banded = frame[frame[quantile_name(lo)].notna()]
        banded = banded.assign(**{f"{FORECAST}-lo-{level}": banded[quantile_name(lo)],
                                  f"{FORECAST}-hi-{level}": banded[quantile_name(hi)]})
        table[f"coverage_{lo:g}_{hi:g}"] = (_loss(losses.coverage, banded, models=[FORECAST], level=level)
                                            if len(banded) else np.nan)
    return table.reset_index(drop=True)


def diebold_mariano(differential: np.ndarray, horizon: int) -> tuple[float, float]:
    """(statistic, two-sided p-value) of mean(d) = 0 for the loss differential `d` in origin order,
    with a Newey-West variance of `horizon - 1` lags; NaN when `d` has no variation to test."""
    d = np.asarray(differential, dtype="float64")
    if len(d) < 3 or np.allclose(d, d[0]):
        return float("nan"), float("nan")
    fit = sm.OLS(d, np.ones(len(d))).fit(cov_type="HAC", cov_kwds={"maxlags": max(0, horizon - 1)}, use_t=True)
    return float(fit.tvalues[0]), float(fit.pvalues[0])


def _skill(table: pd.DataFrame, rows: pd.DataFrame, keys: list[str], horizon_of) -> pd.DataFrame:
    """Add skill vs naive and the Diebold-Mariano test to each row of `table` (grouped by `keys`)."""
    table = table.copy()
    table["skill"] = table["dm_stat"] = table["dm_pvalue"] = np.nan
    if NAIVE not in set(rows["model"]):
        return table
    pair_keys = [k for k in keys if k not in ("model", "kind")]
    # Each forecast's |e| next to naive's |e| for the same lookback, symbol, origin and step.
    cell = list(dict.fromkeys([*pair_keys, "symbol", "origin", "step"]))
    loss = rows.assign(loss=(rows[ACTUAL] - rows[FORECAST]).abs())
    naive_loss = (loss[loss["model"] == NAIVE].groupby(cell, sort=False)["loss"].mean().rename("naive_loss"))
    paired = loss.join(naive_loss, on=cell)
    paired["d"] = paired["loss"] - paired["naive_loss"]
    naive_mae = table[table["model"] == NAIVE].set_index(pair_keys)["mae"] if pair_keys else None
    # The loss differential per origin (averaged over symbols, repeats and pooled steps), in time order.
    per_origin = paired.groupby([*keys, "origin"], sort=True)["d"].mean()
    tests = {}
    for group, series in per_origin.groupby(level=list(range(len(keys))), sort=False):
        tests[group if isinstance(group, tuple) else (group,)] = series.dropna().to_numpy()
    for i, row in table.iterrows():
        if row["model"] == NAIVE:
            table.at[i, "skill"] = 0.0
            continue
        reference = naive_mae.get(tuple(row[k] for k in pair_keys) if len(pair_keys) > 1 else row[pair_keys[0]])
        if reference is not None and reference > 0:
            table.at[i, "skill"] = 1.0 - row["mae"] / reference
        d = tests.get(tuple(row[k] for k in keys))
        if d is not None:
            table.at[i, "dm_stat"], table.at[i, "dm_pvalue"] = diebold_mariano(d, horizon_of(row))
    return table


def metrics_table(rows: pd.DataFrame, *, scales: pd.Series, quantiles: Sequence[float] = (),
                  horizons: Sequence[int] = (), by_symbol: bool = False) -> pd.DataFrame:
    """The metrics of backtest `rows` (columns model, kind, lookback, symbol, origin, repeat, step,
    close, actual_close, last_close[, q<level>_close, crps]): one row per model x lookback[ x symbol]
    x step (horizon null), then one per model x lookback[ x symbol] x sub-horizon (steps 1..h pooled,
    step null). `scales`: symbol -> in-sample naive MAE (`naive_scale`)."""
    keys = ["model", "kind", "lookback", *(["symbol"] if by_symbol else [])]
    steps = _score(rows, [*keys, "step"], scales, quantiles)
    steps = _skill(steps, rows, [*keys, "step"], lambda row: int(row["step"]))
    steps["horizon"] = pd.NA
    parts = [steps]
    for h in sorted(set(int(h) for h in horizons)):
        subset = rows[rows["step"] <= h]
        table = _skill(_score(subset, keys, scales, quantiles), subset, keys, lambda row, h=h: h)
        table["step"], table["horizon"] = pd.NA, h
        parts.append(table)
    out = pd.concat(parts, ignore_index=True)
    extra = [c for c in out.columns if c.startswith(("pinball_", "coverage_"))]
    ordered = [*keys, "step", "horizon", *METRIC_COLUMNS, *extra]
    out = out[ordered]
    out["step"] = out["step"].astype("Int64")
    out["horizon"] = out["horizon"].astype("Int64")
    # Models first, then the baselines; per model the step rows, then the sub-horizons.
    out = out.assign(_baseline=out["kind"] != "model")
    out = out.sort_values(["_baseline", *keys, "horizon", "step"], na_position="first", kind="stable", ignore_index=True)
    return out.drop(columns="_baseline")
