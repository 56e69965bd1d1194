"""A forecast job records how the predictor chunked its rows, CUDA out-of-memory back-off included."""

from __future__ import annotations

import pytest
import torch

import model.predictor as predictor_module
from kronos_jobs.core.names import JobState
from kronos_jobs.jobs import model_cache
from kronos_jobs.jobs.forecast import run_forecast_job
from kronos_jobs.testing.factories import load_forecast_job as load
from kronos_jobs.testing.factories import make_bars, worker_identity
from kronos_jobs.testing.factories import submit_forecast_job as submit


@pytest.fixture
def fresh_model_cache():
    # The back-off test changes the cached predictor; no other test may see it.
    model_cache.clear()
    yield
    model_cache.clear()


def test_decode_info_is_in_the_metadata(job_settings, tiny_checkpoint, monkeypatch, fresh_model_cache):  # noqa: F811
    bars = make_bars({"AAA": 40, "BBB": 40, "CCC": 40})
    plain = submit(job_settings, tiny_checkpoint, bars)
    assert run_forecast_job(plain, settings=job_settings, identity=worker_identity(job_settings)) is JobState.SUCCEEDED
    meta = load(job_settings, plain)[0].execution_metadata
    assert meta["decode"] == {"requested_rows_per_chunk": 64, "rows_per_chunk": 64, "oom_retries": 0}
    assert "inference_seconds" in meta["timings"]
    assert meta["precision"] == "fp32" and meta["kernel"]["precision"] == "fp32"
    assert meta["kernel"]["requested"] == "auto" and meta["kernel"]["kernel"] in ("addmm", "onednn", "mixed")
    assert meta["kernel"]["by_shape"] and meta["kernel"]["source"] in ("measured", "disk cache")

    # The same worker on a GPU that fits 2 rows: 2 series x 3 samples -> 3 -> 1 row per chunk.
    real = predictor_module.generate

    def oom_above_two_rows(model, tokenizer, x, *args, sample_count=1, **kwargs):
        if x.shape[0] * sample_count > 2:
            raise torch.OutOfMemoryError("CUDA out of memory (test)")
        return real(model, tokenizer, x, *args, sample_count=sample_count, **kwargs)

    monkeypatch.setattr(predictor_module, "generate", oom_above_two_rows)
    entry, _ = model_cache.get_predictor(*_cache_key_args(job_settings, tiny_checkpoint))
    entry.predictor.oom_backoff = True  # as on CUDA
    job_id = submit(job_settings, tiny_checkpoint, bars)
    assert run_forecast_job(job_id, settings=job_settings, identity=worker_identity(job_settings)) is JobState.SUCCEEDED
    job, rows = load(job_settings, job_id)
    assert len(rows) == 3 * 4
    assert job.execution_metadata["decode"] == {"requested_rows_per_chunk": 64, "rows_per_chunk": 1, "oom_retries": 2}


def test_a_forced_cpu_kernel_is_used_and_recorded(job_settings, tiny_checkpoint, fresh_model_cache):  # noqa: F811
    settings = job_settings.model_copy(update={"cpu_kernel": "addmm"})
    job_id = submit(settings, tiny_checkpoint, make_bars({"AAA": 40}))
    assert run_forecast_job(job_id, settings=settings, identity=worker_identity(settings)) is JobState.SUCCEEDED
    kernel = load(settings, job_id)[0].execution_metadata["kernel"]
    assert kernel["requested"] == "addmm" and kernel["kernel"] == "addmm" and kernel["source"] == "forced"
    assert set(kernel["by_shape"]) and all(set(plan.values()) == {"addmm"} for plan in kernel["by_shape"].values())


def test_approximate_bf16_without_native_support_fails_the_job_naming_the_setting(
        job_settings, tiny_checkpoint, monkeypatch, fresh_model_cache):  # noqa: F811
    monkeypatch.setattr(predictor_module, "native_bf16_reason", lambda: "the CPU (test) has neither AVX-512 BF16 nor AMX")
    settings = job_settings.model_copy(update={"cpu_precision": "approximate-bf16"})
    job_id = submit(settings, tiny_checkpoint, make_bars({"AAA": 40}))
    assert run_forecast_job(job_id, settings=settings, identity=worker_identity(settings)) is JobState.FAILED
    job = load(settings, job_id)[0]
    assert job.error["code"] == "model_unavailable"
    assert "KRONOS_CPU_PRECISION" in job.error["message"] and "AVX-512 BF16" in job.error["message"]


def test_approximate_bf16_with_native_support_is_named_approximate(
        job_settings, tiny_checkpoint, monkeypatch, fresh_model_cache):  # noqa: F811
    monkeypatch.setattr(predictor_module, "native_bf16_reason", lambda: None)  # as on a CPU with AMX
    settings = job_settings.model_copy(update={"cpu_precision": "approximate-bf16"})
    job_id = submit(settings, tiny_checkpoint, make_bars({"AAA": 40}))
    assert run_forecast_job(job_id, settings=settings, identity=worker_identity(settings)) is JobState.SUCCEEDED
    meta = load(settings, job_id)[0].execution_metadata
    assert meta["precision"] == "approximate-bf16" and meta["dtype"] == "bf16"
    assert meta["kernel"]["precision"] == "approximate-bf16"


def _cache_key_args(settings, checkpoint):
    from kronos_jobs.jobs.registry import resolve_model

    return resolve_model(str(checkpoint), model_dirs=settings.effective_model_dirs), "cpu", settings
