"""What a worker records of a finished job (kronos_jobs/runtime/metrics.py), in this process's registry."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

from prometheus_client import REGISTRY

from kronos_jobs.runtime import metrics


def value(name: str, **labels) -> float:
    return REGISTRY.get_sample_value(name, labels) or 0.0


def test_observe_job_records_wait_run_load_throughput_and_failures():
    t0 = datetime(2026, 1, 1, tzinfo=timezone.utc)
    fail_before = value("kronos_jobs_job_failures_total", kind="forecast", code="all_series_failed")
    steps_before = value("kronos_jobs_inference_series_steps_total", queue="forecast.gpu", device="cpu")
    job = SimpleNamespace(kind="forecast", queue="forecast.gpu", state="failed", created_at=t0,
                          started_at=t0 + timedelta(seconds=7200), finished_at=t0 + timedelta(seconds=7203),
                          error={"code": "all_series_failed"},
                          execution_metadata={"device_resolved": "cpu", "model_source": "random", "series_steps": 48,
                                              "timings": {"model_load_seconds": 1.5, "inference_seconds": 2.0}})
    metrics.observe_job(job)
    assert value("kronos_jobs_job_failures_total", kind="forecast", code="all_series_failed") == fail_before + 1
    # a GPU-queue job that ran on a CPU device is labelled by the device it used
    assert value("kronos_jobs_inference_series_steps_total", queue="forecast.gpu", device="cpu") == steps_before + 48
    assert value("kronos_jobs_job_queue_wait_seconds_bucket", kind="forecast", queue="forecast.gpu", le="7200.0") >= 1
    assert value("kronos_jobs_job_queue_wait_seconds_bucket", kind="forecast", queue="forecast.gpu", le="3600.0") == 0
    assert value("kronos_jobs_model_load_seconds_count", source="random", device="cpu") >= 1
