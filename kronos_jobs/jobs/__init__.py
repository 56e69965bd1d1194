"""Job services: submitting jobs and owning their lifecycle in the worker.

`submit` runs in the API and CLI processes and never imports torch; `forecast` runs in workers
(it imports torch lazily, so importing this package stays cheap).
"""

from kronos_jobs.jobs.submit import ForecastParams, Sampling, send_job, submit_forecast

__all__ = ["ForecastParams", "Sampling", "send_job", "submit_forecast"]
