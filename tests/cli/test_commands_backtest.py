"""`kronos-jobs backtest` (submit from a file, stored symbols; errors name the field) and `kronos-jobs scores`."""

from __future__ import annotations

from fastapi.testclient import TestClient

from kronos_jobs.testing.factories import bar_records, bars_frame

OPTIONS = ["--models", "random:mini", "--lookbacks", "24", "--horizon", "4", "--n-windows", "3", "--seed", "1"]


def test_backtest_a_file_without_waiting(cli, http: TestClient, tmp_path) -> None:
    path = tmp_path / "bars.csv"
    bars_frame(2, 60).to_csv(path, index=False)
    result = cli("backtest", str(path), *OPTIONS, "--horizons", "2", "--freq", "5min", "--priority", "5", "--no-wait")
    assert result.exit_code == 0, result.output
    job = http.get(f"/v1/jobs/{result.stdout.strip()}").json()
    assert job["kind"] == "backtest" and job["params"]["horizons"] == [2] and job["params"]["lookbacks"] == [24]
    assert job["progress"]["total"] == 2 * 3 and job["priority"] == 5


def test_backtest_stored_symbols_and_errors(cli, http: TestClient) -> None:
    http.post("/v1/series/AAA/bars", json={"freq": "5min", "bars": bar_records(60)})
    result = cli("backtest", "--symbols", "AAA", *OPTIONS, "--no-wait")
    assert result.exit_code == 0, result.output
    assert http.get(f"/v1/jobs/{result.stdout.strip()}").json()["params"]["source"] == "store"
    too_long = cli("backtest", "--symbols", "AAA", *OPTIONS[:-4], "--n-windows", "30", "--no-wait")
    assert too_long.exit_code == 1 and "n_windows" in too_long.output and "needs" in too_long.output
    assert cli("backtest", *OPTIONS).exit_code == 2  # neither a file nor --symbols


def test_scores_before_anything_was_scored(cli) -> None:
    result = cli("scores", "--since", "2026-12-01")
    assert result.exit_code == 0 and "no scored forecasts yet" in result.output
