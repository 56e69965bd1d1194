"""No look-ahead, provably: corrupting every bar after an origin changes none of its forecasts."""

from __future__ import annotations

import numpy as np
import pandas as pd

from kronos_jobs.core.names import BAR_COLUMNS
from kronos_jobs.evaluation.baselines import BASELINES, baseline_forecasts, season_of
from kronos_jobs.jobs import model_cache
from kronos_jobs.jobs.backtest import contexts_for, predict_contexts, prepare_series
from kronos_jobs.jobs.backtest_submit import BacktestParams
from kronos_jobs.jobs.registry import resolve_model
from kronos_jobs.testing.factories import make_bars


def corrupt_after(bars: pd.DataFrame, instant: pd.Timestamp) -> pd.DataFrame:
    """Every bar after `instant` replaced by garbage (prices x 1000 and scrambled, volumes zeroed)."""
    out = bars.copy()
    later = out["timestamp"] > instant
    rng = np.random.default_rng(0)
    for column in BAR_COLUMNS:
        out.loc[later, column] = rng.uniform(1e3, 1e4, int(later.sum()))
    return out


def test_forecasts_of_each_origin_ignore_every_later_bar(job_settings, tiny_checkpoint):
    bars = make_bars({"AAA": 70})
    params = BacktestParams.from_value({"models": [str(tiny_checkpoint)], "lookbacks": [20, 32], "horizon": 4,
                                        "n_windows": 6, "step_size": 5,
                                        "sampling": {"sample_count": 3, "seed": 11}, "quantiles": [0.1, 0.9]})
    spec = resolve_model(str(tiny_checkpoint), model_dirs=job_settings.effective_model_dirs)
    predictor = model_cache.get_predictor(spec, "cpu", job_settings)[0].predictor
    clean = prepare_series(bars, params)[0]
    for origin in clean.origins:
        instant = clean.stamps[origin]
        dirty = prepare_series(corrupt_after(bars, instant), params)[0]
        assert (dirty.values[origin + 1:] != clean.values[origin + 1:]).all()
        for lookback in params.lookbacks:
            a = contexts_for(clean, int(origin), lookback, params.horizon)
            b = contexts_for(dirty, int(origin), lookback, params.horizon)
            pd.testing.assert_frame_equal(a.context, b.context)
            # Sampled, with bands and paths: the same seed gives the same draws on the same context.
            fa, fb = (predict_contexts(predictor, [item], params, seed=5)[0] for item in (a, b))
            pd.testing.assert_frame_equal(fa.mean, fb.mean)
            np.testing.assert_array_equal(fa.samples, fb.samples)
            made = [baseline_forecasts(BASELINES, past_stamps=s.stamps[:origin + 1], past=s.bars(slice(0, origin + 1)),
                                       lookback=lookback, targets=s.stamps[origin + 1:origin + 1 + params.horizon],
                                       season=season_of(s.stamps)) for s in (clean, dirty)]
            for name in BASELINES:
                np.testing.assert_array_equal(made[0][name], made[1][name])
