"""The README's "Backtests" section runs as written: its `kronos-jobs backtest` line against the API in
process, the job run by an in-process worker as soon as it is sent, and prints the table shown."""

from __future__ import annotations

import shlex

from click.testing import CliRunner
from fastapi.testclient import TestClient

from api.main import create_app
from kronos_jobs.cli import main
from kronos_jobs.jobs import submit
from kronos_jobs.testing.factories import run_backtest_to_end, worker_identity
from tests.readme import ROOT, code_blocks, section


def test_backtest_example_prints_the_metrics_table(settings, monkeypatch) -> None:
    text = section("Backtests")
    argv = shlex.split(code_blocks(text, "bash")[0].replace("\\\n", " "), comments=True)
    shown = code_blocks(text, "text")[0].splitlines()
    identity = worker_identity(settings)
    # The worker: run each backtest in process, chunk after chunk, as soon as its task is sent
    # (after the commit).
    monkeypatch.setattr(submit, "send_job", lambda s, job_id, queue, kind=None, **options: run_backtest_to_end(
        settings, job_id, identity))
    monkeypatch.chdir(ROOT)
    with TestClient(create_app(settings)) as client:
        result = CliRunner().invoke(main, argv[1:], obj={"settings": settings, "http": client})
    assert result.exit_code == 0, result.output
    printed = result.stdout.splitlines()
    assert printed[0].split() == shown[0].split()  # the same columns
    assert len(printed) == len(shown)
    # The same rows (model, lookback, step/horizon); the numbers are those of this machine's run.
    assert [line.split()[:3] for line in printed[1:]] == [line.split()[:3] for line in shown[1:]]
