"""The README's Python client example, run as written against a real API process and worker."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import pandas as pd
import pytest

from kronos_jobs.client import AsyncClient, AuthenticationError, Client, InvalidRequestError, NotFoundError
from tests.e2e.harness import ApiProcess
from tests.readme import ROOT, code_blocks, section


@pytest.fixture(scope="module")
def api(stack, tmp_path_factory):
    """The API with keys required (KRONOS_AUTH=on): the client sends its key as a bearer token."""
    with ApiProcess(stack, tmp_path_factory.mktemp("api") / "api.log", KRONOS_AUTH="on") as process:
        process.key = process.make_key()
        yield process


def test_readme_python_example_runs_as_written(api, tmp_path):
    block = code_blocks(section("Python client"), "python")[0]
    assert 'Client("http://localhost:8000")' in block
    (tmp_path / "examples").symlink_to(ROOT / "examples")
    script = tmp_path / "example.py"
    script.write_text(block.replace("http://localhost:8000", api.url))
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, capture_output=True, text=True, timeout=600,
                          env={**api.stack.env, "PYTHONPATH": str(ROOT), "KRONOS_API_KEY": api.key})
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert lines[0] == "succeeded random:mini random weights", done.stdout
    assert lines[1] == "422 invalid_request quantiles", done.stdout
    assert (tmp_path / "forecast.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "series-step" in done.stderr  # the progress bar drew


def test_result_frame_carries_quantiles_and_provenance(api):
    bars = pd.read_csv(ROOT / "examples" / "bars.csv", parse_dates=["timestamp"])
    with pytest.raises(AuthenticationError):
        Client(api.url, api_key="kj_wrong").models()
    with Client(api.url, api_key=api.key) as client:
        job = client.forecast(bars, model=str(api.stack.checkpoint), freq="5min", lookback=48, pred_len=4,
                              sample_count=3, seed=1, quantiles=[0.1, 0.9]).wait(timeout=120)
        frame = job.result()
        assert job.state == "succeeded" and len(frame) == 2 * 4
        assert {"q0.1_close", "q0.9_close"} <= set(frame.columns)
        assert frame.attrs["model"] == str(api.stack.checkpoint) and "label" not in frame.attrs
        assert frame.attrs["checkpoint"].endswith("tiny-model/model")
        assert [j.id for j in client.jobs(kind="forecast")][0] == job.id
        assert job.plot(format="svg").startswith(b"<?xml")
        with pytest.raises(NotFoundError) as caught:
            client.job("no-such-job")
        assert caught.value.code == "not_found" and caught.value.status_code == 404


def test_async_client_does_the_same(api):
    bars = pd.read_csv(ROOT / "examples" / "bars.csv", parse_dates=["timestamp"])

    async def scenario():
        async with AsyncClient(api.url, api_key=api.key) as client:
            job = await client.forecast(bars, model=str(api.stack.checkpoint), freq="5min", lookback=32, pred_len=3,
                                        seed=2)
            await job.wait(timeout=120)
            frame = await job.result()
            models = await client.models()
            with pytest.raises(InvalidRequestError) as caught:
                await client.forecast(bars, model="random:mini", quantiles=[0.5], sample_count=1)
            return job, frame, models, caught.value

    job, frame, models, error = asyncio.run(scenario())
    assert job.state == "succeeded" and len(frame) == 2 * 3
    assert {"random:mini", "tiny-model"} <= {m["id"] for m in models}
    assert error.details[0]["field"] == "quantiles" and "sample_count" in error.message


def test_backtest_through_the_client(api):
    bars = pd.read_csv(ROOT / "examples" / "bars.csv", parse_dates=["timestamp"])
    with Client(api.url, api_key=api.key) as client:
        job = client.backtest(bars, models=[str(api.stack.checkpoint)], freq="5min", lookbacks=[32], horizon=3,
                              horizons=[1], n_windows=3, step_size=3, baselines=["naive"]).wait(timeout=180)
        assert job.kind == "backtest" and job.state == "succeeded", job.data
        rows = job.result()
        metrics = job.metrics()
        per_symbol = job.metrics(by="symbol")
        with pytest.raises(InvalidRequestError) as caught:
            client.backtest(bars, models=["random:mini"], lookbacks=[32], horizon=3, n_windows=3,
                            baselines=["no-such-baseline"])
    # 2 symbols x 3 origins x 3 steps, for the model and the naive baseline
    assert len(rows) == 2 * 3 * 3 * 2 and {"actual_close", "origin", "step"} <= set(rows.columns)
    assert set(metrics["model"]) == {str(api.stack.checkpoint), "naive"}
    assert {"mae", "rmse"} <= set(metrics.columns) and "symbol" in per_symbol.columns
    assert caught.value.details[0]["field"].startswith("baselines")


def test_worker_metrics_reach_prometheus_from_the_children(api, tmp_path):
    """A worker with KRONOS_WORKER_METRICS_PORT serves what its prefork children observed."""
    import httpx
    from prometheus_client.parser import text_string_to_metric_families

    from tests.e2e.harness import free_port

    stack, port = api.stack, free_port()
    stack.stop_worker()
    env = stack.env
    stack.env = {**env, "KRONOS_WORKER_METRICS_PORT": str(port)}
    try:
        stack.start_worker(concurrency=2)
        bars = pd.read_csv(ROOT / "examples" / "bars.csv", parse_dates=["timestamp"])
        with Client(api.url, api_key=api.key) as client:
            job = client.forecast(bars, model=str(stack.checkpoint), freq="5min", lookback=32, pred_len=3, seed=4)
            assert job.wait(timeout=120).state == "succeeded"
            second = client.forecast(bars, model=str(stack.checkpoint), freq="5min", lookback=16, pred_len=2, seed=5)
            assert second.wait(timeout=120).state == "succeeded"
        text = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    finally:
        stack.stop_worker()
        stack.env = env
        stack.start_worker()
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for family in text_string_to_metric_families(text) for s in family.samples}
    run = {labels: v for (name, labels), v in samples.items() if name == "kronos_jobs_job_run_seconds_count"}
    assert run[(("kind", "forecast"), ("queue", "forecast.cpu"), ("state", "succeeded"))] == 2
    assert samples[("kronos_jobs_job_queue_wait_seconds_count", (("kind", "forecast"), ("queue", "forecast.cpu")))] == 2
    assert samples[("kronos_jobs_inference_series_steps_total", (("device", "cpu"), ("queue", "forecast.cpu")))] == 2 * 3 + 2 * 2
    assert samples[("kronos_jobs_inference_seconds_total", (("device", "cpu"), ("queue", "forecast.cpu")))] > 0
    assert any(name == "kronos_jobs_model_load_seconds_count" for name, _ in samples)
    buckets = [float(dict(labels)["le"]) for name, labels in samples if name == "kronos_jobs_job_run_seconds_bucket"]
    assert min(buckets) == 0.01 and max(b for b in buckets if b != float("inf")) >= 3600
