"""The README's "Series store and schedules" walkthrough end to end on examples/: a real API process
and worker, so the run it starts forecasts every stored symbol and the latest forecasts come back."""

from __future__ import annotations

import io
import os
import time

import httpx
import pandas as pd
from click.testing import CliRunner

from kronos_jobs.cli import main
from tests.e2e.harness import ApiProcess
from tests.readme import ROOT
from tests.test_readme_series import commands, curl


def test_series_and_schedule_walkthrough_end_to_end(stack, tmp_path):
    # The README's walkthrough sends no key: the embedded default's loopback API, keys off.
    with ApiProcess(stack, tmp_path / "api.log", KRONOS_AUTH="off") as api, \
            httpx.Client(base_url=api.url, timeout=60) as http:
        schedule_id, runs = "", []
        for raw in commands():
            argv = [a.replace("$ID", schedule_id) for a in raw]
            if argv[0].startswith("ID="):
                continue
            if argv[0] == "kronos-jobs":
                cwd = os.getcwd()
                os.chdir(ROOT)
                try:
                    result = CliRunner().invoke(main, ["--api-url", api.url, *argv[1:]], obj={"settings": stack.settings})
                finally:
                    os.chdir(cwd)
                assert result.exit_code == 0, (argv, result.output)
                continue
            response = curl(http, argv, tmp_path)
            assert response.status_code < 400, (argv, response.text)
            path = response.request.url.path
            if response.request.method == "POST" and path == "/v1/schedules":
                schedule_id = response.json()["id"]
            if path.endswith("/run"):  # as a reader would, wait for the run before reading its forecasts
                deadline = time.monotonic() + 180
                while time.monotonic() < deadline:
                    runs = http.get(f"/v1/schedules/{schedule_id}/runs").json()["data"]
                    if runs and runs[0]["state"] not in ("queued", "running"):
                        break
                    time.sleep(0.5)
        assert runs and runs[0]["state"] == "succeeded", runs
        latest = pd.read_parquet(tmp_path / "latest.parquet")
    assert sorted(latest["symbol"].unique()) == ["SIM000.XS", "SIM001.XS"]
    assert len(latest) == 2 * 12 and {"q0.1_close", "q0.9_close", "job_id"} <= set(latest.columns)
    assert latest["timestamp"].min() > pd.read_csv(io.StringIO((ROOT / "examples" / "bars.csv").read_text()),
                                                   parse_dates=["timestamp"])["timestamp"].max()
