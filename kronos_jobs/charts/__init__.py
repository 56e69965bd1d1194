"""Charts of stored job rows (mplfinance on matplotlib's Agg backend); no torch, no database."""

from kronos_jobs.charts.forecast import CHART_FORMATS, ChartFormat, forecast_chart

__all__ = ["CHART_FORMATS", "ChartFormat", "forecast_chart"]
