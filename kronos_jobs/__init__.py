"""kronos-jobs: a background job service for batch Kronos forecasts and fine-tunes."""

__version__ = "0.1.0"
