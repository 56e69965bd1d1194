"""Job services: submitting jobs and owning their lifecycle in the worker.

`submit` runs in the API and CLI processes and never imports torch; `forecast` runs in workers
and imports torch only when a job runs, so importing this package stays cheap.
"""

from kronos_jobs.jobs.forecast import run_forecast_job
from kronos_jobs.jobs.recovery import fail_after_hard_time_limit, requeue_stale_jobs
from kronos_jobs.jobs.submit import ForecastParams, Sampling, send_job, submit_forecast

__all__ = ["ForecastParams", "Sampling", "fail_after_hard_time_limit", "requeue_stale_jobs", "run_forecast_job", "send_job", "submit_forecast"]
