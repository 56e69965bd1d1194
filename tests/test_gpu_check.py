"""scripts/gpu_check.sh: its CPU dry run exercises every stage; a failed stage does not stop the others.

The GPU run itself needs a lent GPU machine; these tests keep its plumbing (stages, log, summary,
exit status, the bench's JSON line, KRONOS_REQUIRE_CUDA) working on CPU.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def run_check(out: Path, **env: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "OUT": str(out), "GPU_CHECK_DEVICE": "cpu", "PYTHON": sys.executable,
           "GPU_CHECK_TESTS": "tests/model/test_device.py tests/model/test_cuda.py", **env}
    return subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=240)


def test_dry_run_runs_every_stage_and_summarises(tmp_path):
    result = run_check(tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-2000:]

    log = (tmp_path / "gpu_check.log").read_text()
    for stage in ("environment", "pytest-model", "bench-predict"):
        assert f"=== {stage}: ok in" in log
    assert "--confcutdir tests/model" in log and "KRONOS_REQUIRE_CUDA=0" in log
    assert "passed" in (tmp_path / "pytest-model.log").read_text()
    assert (tmp_path / "pytest-model.xml").is_file()
    assert "dtype graph vs fp32 %" in (tmp_path / "bench-predict.log").read_text()  # the --dtypes columns

    bench = json.loads((tmp_path / "bench-predict.json").read_text())
    assert bench["device"] == "cpu" and bench["dtypes"] == ["fp32"]
    assert [r["dtype"] for r in bench["rows"]] == ["fp32"] * len(bench["rows"]) and bench["rows"]
    assert all(r["identical"] for r in bench["rows"] if r["identical"] is not None)

    summary = (tmp_path / "summary.txt").read_text()
    assert summary == result.stdout[result.stdout.index("=== summary"):]
    assert "pytest-model   ok" in summary and "bench-predict  ok" in summary
    assert summary.rstrip().endswith("gpu_check: all stages passed")


def test_a_failed_stage_does_not_stop_the_rest(tmp_path):
    result = run_check(tmp_path, PYTHON="false")  # every python stage fails at once
    assert result.returncode == 1
    summary = (tmp_path / "summary.txt").read_text()
    for stage in ("environment", "pytest-model", "bench-predict"):
        assert f"{stage:<14} FAILED rc=1" in summary
    assert "gpu_check: 3 stage(s) failed" in summary


def test_unknown_device_is_refused(tmp_path):
    result = run_check(tmp_path, GPU_CHECK_DEVICE="tpu")
    assert result.returncode == 2 and "GPU_CHECK_DEVICE must be cuda or cpu" in result.stderr


def test_require_cuda_turns_the_cuda_skips_into_failures():
    import torch

    if torch.cuda.is_available():
        pytest.skip("CUDA is available here: the CUDA tests run instead of skipping")
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--confcutdir", "tests/model",
           "tests/model/test_cuda.py", "-k", "describes_it"]
    env = {k: v for k, v in os.environ.items() if k != "KRONOS_REQUIRE_CUDA"}
    skipped = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    required = subprocess.run(cmd, cwd=ROOT, env={**env, "KRONOS_REQUIRE_CUDA": "1"}, capture_output=True,
                              text=True, timeout=120)
    assert skipped.returncode == 0 and "2 skipped" in skipped.stdout, skipped.stdout
    assert required.returncode == 1 and "2 errors" in required.stdout, required.stdout
    assert "KRONOS_REQUIRE_CUDA=1 but torch.cuda.is_available() is False" in required.stdout


def test_bench_dtype_list_and_close_deviation():
    import argparse

    import pandas as pd

    from bench.predict import close_deviation, dtype_names

    assert dtype_names("bf16, fp32,bf16") == ["fp32", "bf16"]  # fp32 first: the reference
    with pytest.raises(argparse.ArgumentTypeError, match="fp32, bf16, fp16"):
        dtype_names("fp32,fp64")
    ref = [pd.DataFrame({"close": [10.0, 10.0]}), pd.DataFrame({"close": [30.0, 30.0]})]
    got = [pd.DataFrame({"close": [10.2, 10.2]}), pd.DataFrame({"close": [30.0, 30.0]})]
    context = [pd.DataFrame({"close": [9.0, 11.0]}), pd.DataFrame({"close": [29.0, 31.0]})]  # sd sqrt(2)
    pct, sd = close_deviation(got, ref, context)
    assert pct == pytest.approx(100 * 0.1 / 20) and sd == pytest.approx(0.1 / 2**0.5)
