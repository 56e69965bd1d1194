"""`kronos-jobs up`: the API, a CPU worker and beat as real processes, and how they stop.

The demo is run against a running `up` too, offline on the default hub model, to show what a user
sees when the hub is unreachable: the model-loading error and how to get going anyway.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.e2e.harness import KRONOS_JOBS, free_port, kronos_env, port_is_closed

REPO = Path(__file__).resolve().parents[2]

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(300)]


class Up:
    """`kronos-jobs up` in a subprocess, its output collected line by line."""

    def __init__(self, tmp_path: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = kronos_env(tmp_path, self.port)
        self.lines: list[str] = []
        self.proc = subprocess.Popen([str(KRONOS_JOBS), "up"], env=self.env, cwd=tmp_path, text=True,
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        threading.Thread(target=lambda: self.lines.extend(self.proc.stdout), daemon=True).start()

    @property
    def output(self) -> str:
        return "".join(self.lines)

    def wait_for(self, pattern: str, timeout: float = 120.0) -> re.Match:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if match := re.search(pattern, self.output):
                return match
            assert self.proc.poll() is None, f"up exited with {self.proc.returncode}:\n{self.output[-4000:]}"
            time.sleep(0.1)
        raise AssertionError(f"no {pattern!r} within {timeout} s:\n{self.output[-4000:]}")

    def pids(self) -> dict[str, int]:
        listed = self.wait_for(r"processes: (.*?); Ctrl-C").group(1)
        return {name: int(pid) for name, pid in (item.split("=") for item in listed.split(", "))}

    def live_workers(self) -> list[dict]:
        return [w for w in httpx.get(f"{self.url}/v1/workers", timeout=10).json()["data"] if w["live"]]

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.fixture
def up(tmp_path):
    stack = Up(tmp_path)
    yield stack
    stack.kill()  # only if a test failed half-way; the children die with it (PR_SET_PDEATHSIG)


def test_up_runs_the_stack_and_stops_it_on_sigint(up, tmp_path):
    up.wait_for(rf"API listening on {re.escape(up.url)}")
    pids = up.pids()
    assert set(pids) == {"api", "worker-cpu", "beat"}
    assert httpx.get(f"{up.url}/healthz", timeout=10).status_code == 200

    deadline = time.monotonic() + 120
    while not up.live_workers() and time.monotonic() < deadline:
        time.sleep(0.5)
    (worker,) = up.live_workers()
    assert (worker["pool"], worker["device_resolved"]) == ("cpu", "cpu")
    assert worker["pid"] == pids["worker-cpu"]
    for name in pids:
        up.wait_for(rf"(?m)^\s*{name} \| ")  # each process's log lines, prefixed with its name

    # The README's curl examples, run as written against this API.
    run_readme_examples(up, tmp_path)

    # The demo finds the running API and uses it. Offline, the default hub model cannot load:
    # the user gets the model-loading error and the way out, and a non-zero exit.
    demo = subprocess.run([str(KRONOS_JOBS), "demo", "--symbols", "2", "--lookback", "32", "--pred-len", "4"],
                          env=up.env, cwd=tmp_path, capture_output=True, text=True, timeout=200)
    assert demo.returncode == 1, demo.stdout + demo.stderr
    assert f"using the API already running at {up.url}" in demo.stdout
    assert "model_unavailable" in demo.stderr
    assert "kronos-small" in demo.stderr
    assert "--model random:small" in demo.stderr
    assert "local checkpoint directory" in demo.stderr
    assert alive(pids["api"]), "the demo must not stop an API it did not start"

    up.proc.send_signal(signal.SIGINT)
    assert up.proc.wait(timeout=90) == 0, up.output[-4000:]
    assert not any(alive(pid) for pid in pids.values())
    assert port_is_closed(up.port)


def readme_bash(heading: str) -> str:
    """The first bash block under `### heading` in the README."""
    from tests.readme import README, code_blocks

    start = README.index(f"### {heading}\n")
    return code_blocks(README[start:], "bash")[0]


def run_readme_examples(up: Up, tmp_path: Path) -> None:
    import sys

    import pandas as pd

    work = tmp_path / "readme"
    work.mkdir()
    (work / "examples").symlink_to(REPO / "examples")
    env = {**up.env, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{up.env['PATH']}"}
    script = "\n".join(["set -euo pipefail", readme_bash("Submit a forecast (JSON)"), "echo",
                        readme_bash("Submit a forecast (file upload)"), "echo",
                        readme_bash("Follow a job, read the result")])
    script = script.replace("http://127.0.0.1:8000", up.url)
    run = subprocess.run(["bash", "-c", script], cwd=work, env=env, capture_output=True, text=True, timeout=240)
    assert run.returncode == 0, f"{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
    assert run.stdout.count('"state":"queued"') >= 2  # the two submissions
    assert '"state":"succeeded"' in run.stdout
    assert '"code":"invalid_transition"' in run.stdout  # cancelling a finished job is a 409
    csv = pd.read_csv(work / "forecast.csv")
    parquet = pd.read_parquet(work / "forecast.parquet")
    assert len(csv) == len(parquet) == 2 * 12  # examples/forecast.json: 2 symbols, pred_len 12
    assert "q0.9_close" in parquet.columns


def test_up_exits_non_zero_when_a_process_dies(up):
    pids = up.pids()
    os.kill(pids["worker-cpu"], signal.SIGKILL)
    assert up.proc.wait(timeout=90) != 0
    assert "worker-cpu exited with code -9; stopping the others" in up.output
    assert not alive(pids["api"]) and not alive(pids["beat"])
    assert port_is_closed(up.port)
