"""Forecast evaluation: rolling origins, baselines, metrics and live scoring.

`origins.py` decides where each backtest forecast starts (no look-ahead), `baselines.py` makes the
naive, seasonal-naive and drift forecasts, `metrics.py` turns forecasts and truths into the metrics
table (utilsforecast losses, scoringrules CRPS, a Diebold-Mariano test on statsmodels' HAC
variance), `scoring.py` scores stored forecasts once their bars arrive. None of it imports torch.
"""

from kronos_jobs.evaluation.baselines import BASELINES, baseline_forecasts
from kronos_jobs.evaluation.metrics import metrics_table
from kronos_jobs.evaluation.origins import bars_needed, origin_indices

__all__ = ["BASELINES", "bars_needed", "baseline_forecasts", "metrics_table", "origin_indices"]
