"""kronos-jobs client commands against the real API, in process (TestClient is an httpx.Client)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pandas as pd
import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from kronos_jobs.cli.commands import EXIT_TIMEOUT, main
from kronos_jobs.core.names import JobState
from kronos_jobs.core.settings import Settings
from kronos_jobs.crud import jobs as job_crud
from kronos_jobs.crud import results as result_crud
from kronos_jobs.testing.factories import make_csv, make_forecast_request, make_forecast_rows


def finish(settings: Settings, job_id: str, state: JobState, steps: int = 2) -> None:
    from kronos_jobs.db.session import session_scope

    with session_scope(settings) as session:
        job_crud.claim_job(session, job_id=job_id, owner="cli-test", lease_seconds=60)
        rows = make_forecast_rows(symbols=("SYM0.SH",), steps=steps)
        result_crud.write_forecasts(session, job_id=job_id, tenant_id="default", rows=rows)
        job_crud.finish_job(session, job_id=job_id, owner="cli-test", state=state,
                            execution_metadata={"device_resolved": "cpu", "device_name": "cpu"})


def test_submit_csv_then_status(cli, tmp_path: Path) -> None:
    path = tmp_path / "bars.csv"
    path.write_bytes(make_csv(n_symbols=2))
    submitted = cli("submit", str(path), "--model", "random:mini", "--pred-len", "4", "--freq", "5min",
                    "--quantiles", "0.1,0.9", "--sample-count", "2", "--seed", "3", "--idempotency-key", "abc")
    assert submitted.exit_code == 0, submitted.output
    job_id = submitted.stdout.strip()
    assert len(job_id) == 32
    status = cli("status", job_id, "--json")
    job = json.loads(status.stdout)
    assert job["params"]["pred_len"] == 4 and job["params"]["quantiles"] == [0.1, 0.9]
    assert job["params"]["sampling"]["seed"] == 3 and job["params"]["source"] == "csv"
    assert "queued" in cli("status", job_id).stdout
    assert cli("submit", str(path), "--model", "random:mini", "--pred-len", "4", "--freq", "5min",
               "--quantiles", "0.1,0.9", "--sample-count", "2", "--seed", "3", "--idempotency-key", "abc").stdout.strip() == job_id


def test_submit_json_request_with_overrides(cli, tmp_path: Path) -> None:
    path = tmp_path / "request.json"
    path.write_text(json.dumps(make_forecast_request()))
    job_id = cli("submit", str(path), "--pred-len", "5", "--top-p", "0.5").stdout.strip()
    job = json.loads(cli("status", job_id, "--json").stdout)
    assert job["params"]["pred_len"] == 5 and job["params"]["sampling"]["top_p"] == 0.5
    assert job["params"]["sampling"]["seed"] == 7  # kept from the file


def test_submit_reports_api_errors_with_the_field(cli, tmp_path: Path) -> None:
    path = tmp_path / "request.json"
    path.write_text(json.dumps(make_forecast_request()))
    result = cli("submit", str(path), "--top-p", "1.5")
    assert result.exit_code == 1
    assert "HTTP 422 invalid_request: sampling.top_p" in result.output


@pytest.mark.parametrize("state,code", [(JobState.SUCCEEDED, 0), (JobState.PARTIALLY_SUCCEEDED, 2), (JobState.FAILED, 1)])
def test_wait_exit_code_follows_the_final_state(cli, http: TestClient, settings: Settings, state: JobState, code: int) -> None:
    job_id = http.post("/v1/jobs/forecast", json=make_forecast_request(n_symbols=1)).json()["id"]
    finish(settings, job_id, state)
    result = cli("wait", job_id, "--interval", "0.01")
    assert result.exit_code == code
    assert result.stdout.strip() == state.value


def test_wait_times_out_on_a_queued_job(cli, http: TestClient) -> None:
    job_id = http.post("/v1/jobs/forecast", json=make_forecast_request(n_symbols=1)).json()["id"]
    result = cli("wait", job_id, "--timeout", "0.2", "--interval", "0.05")
    assert result.exit_code == EXIT_TIMEOUT


def test_result_to_files_and_table(cli, http: TestClient, settings: Settings, tmp_path: Path) -> None:
    job_id = http.post("/v1/jobs/forecast", json=make_forecast_request(n_symbols=1)).json()["id"]
    assert "409 conflict" in cli("result", job_id).output
    finish(settings, job_id, JobState.SUCCEEDED, steps=3)
    assert cli("result", job_id, "-o", str(tmp_path / "f.parquet")).exit_code == 0
    assert len(pd.read_parquet(tmp_path / "f.parquet")) == 3
    assert cli("result", job_id, "-o", str(tmp_path / "f.csv")).exit_code == 0
    assert list(pd.read_csv(tmp_path / "f.csv").columns)[:3] == ["symbol", "timestamp", "open"]
    table = cli("result", job_id).stdout.splitlines()
    assert table[0].split()[:3] == ["symbol", "timestamp", "open"] and len(table) == 4
    assert len(pd.read_csv(io.StringIO(cli("result", job_id, "--format", "csv").stdout))) == 3
    assert cli("result", job_id, "--format", "parquet").exit_code == 2  # binary needs -o


def test_workers_and_models(cli, settings: Settings) -> None:
    from kronos_jobs.jobs.registry import save_local_model
    from kronos_jobs.testing.tiny import TINY_KRONOS_CONFIG, make_modules

    assert "no workers seen" in cli("workers").stdout
    save_local_model(settings.effective_model_dirs[0] / "desk" / "mine", *make_modules(TINY_KRONOS_CONFIG))
    models = cli("models").stdout
    assert "kronos-small" in models and "NeoQuasar/Kronos-small" in models
    lines = {line.split()[0]: line for line in models.splitlines()[1:]}
    assert {"random:mini", "random:small", "random:base", "desk/mine"} <= set(lines)
    assert "random weights" in lines["random:mini"] and "local" in lines["desk/mine"]


def test_jobs_list_filters_and_cancel(cli, http: TestClient, settings: Settings) -> None:
    first = http.post("/v1/jobs/forecast", json=make_forecast_request(n_symbols=1)).json()["id"]
    second = http.post("/v1/jobs/forecast", json=make_forecast_request(n_symbols=2)).json()["id"]
    finish(settings, first, JobState.SUCCEEDED)
    listed = cli("jobs").stdout.splitlines()
    assert listed[0].split()[:4] == ["id", "kind", "state", "progress"]
    assert [line.split()[0] for line in listed[1:]] == [second, first]  # newest first
    assert "random:mini (random weights)" in listed[2]
    assert [line.split()[0] for line in cli("jobs", "--state", "queued").stdout.splitlines()[1:]] == [second]
    assert cli("jobs", "--kind", "finetune").stdout.strip() == "no jobs"
    assert cli("cancel", second).stdout.strip() == f"{second} cancelled"
    assert "HTTP 409 invalid_transition" in cli("cancel", first).output


def test_result_plot_writes_the_chart(cli, http: TestClient, settings: Settings, tmp_path: Path) -> None:
    job_id = http.post("/v1/jobs/forecast", json=make_forecast_request(n_symbols=1)).json()["id"]
    finish(settings, job_id, JobState.SUCCEEDED, steps=3)
    assert cli("result", job_id, "--plot", str(tmp_path / "c.png")).exit_code == 0
    assert (tmp_path / "c.png").read_bytes()[:4] == b"\x89PNG"
    assert cli("result", job_id, "--plot", str(tmp_path / "c.svg"), "--symbol", "SYM0.SH").exit_code == 0
    assert b"<svg" in (tmp_path / "c.svg").read_bytes()[:500]


def test_schedules_lists_by_default(cli, http: TestClient) -> None:
    assert cli("schedules").stdout.strip() == "no schedules"
    body = {"name": "nightly", "cron": "0 18 * * 1-5", "timezone": "UTC", "model": "random:mini", "lookback": 32,
            "pred_len": 4}
    schedule = http.post("/v1/schedules", json=body).json()
    assert schedule["id"] in cli("schedules").stdout
    assert cli("schedules", "runs", schedule["id"]).stdout.strip() == "no runs"


def test_wait_on_a_finished_job_shows_no_rate(cli, http: TestClient, settings: Settings) -> None:
    job_id = http.post("/v1/jobs/forecast", json=make_forecast_request(n_symbols=1)).json()["id"]
    finish(settings, job_id, JobState.SUCCEEDED)
    err = cli("wait", job_id).stderr.replace(" ", "")
    assert "3/3" in err and "?series-step/s" in err  # 1 symbol x pred_len 3, and no rate


def test_unreachable_api_is_a_clear_error(settings: Settings) -> None:
    result = CliRunner().invoke(main, ["--api-url", "http://127.0.0.1:9", "status", "x"], obj={"settings": settings})
    assert result.exit_code == 1
    assert "cannot reach the API at http://127.0.0.1:9" in result.output


def test_client_commands_import_no_server_machinery() -> None:
    import subprocess
    import sys

    script = (
        "import sys; from kronos_jobs.cli import main; "
        "heavy = sorted(m for m in ('torch', 'celery', 'sqlalchemy', 'model') if m in sys.modules); "
        "assert not heavy, heavy"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr[-2000:]
