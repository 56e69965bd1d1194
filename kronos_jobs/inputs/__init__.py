"""Bars as they arrive (JSON, CSV, Parquet, the series store) into one checked frame, and the time
rules around them: trading calendar, wall-clock time, bar frequency. Nothing here imports `jobs/`."""
