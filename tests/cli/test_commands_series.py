"""`kronos-jobs series import|list` and `schedules list|run` against the real API, in process."""

from __future__ import annotations

from pathlib import Path

from kronos_jobs.testing.factories import make_bars


def test_series_import_and_list(cli, tmp_path: Path) -> None:
    bars = make_bars({"AAA": 6, "BBB": 4})
    bars["timestamp"] = bars["timestamp"].map(lambda t: t.isoformat())
    bars.to_csv(tmp_path / "bars.csv", index=False)
    out = cli("series", "import", str(tmp_path / "bars.csv"), "--freq", "5min")
    assert out.exit_code == 0, out.output
    assert "AAA" in out.stdout and "BBB" in out.stdout
    one = bars[bars.symbol == "AAA"].drop(columns="symbol")
    one.to_parquet(tmp_path / "one.parquet", index=False)
    assert cli("series", "import", str(tmp_path / "one.parquet"), "--symbol", "CCC", "--freq", "5min").exit_code == 0
    listing = cli("series", "list").stdout
    assert [line.split()[0] for line in listing.splitlines()[1:]] == ["AAA", "BBB", "CCC"]


def test_series_import_bad_row_fails_naming_it(cli, tmp_path: Path) -> None:
    (tmp_path / "bad.csv").write_text("symbol,timestamp,open,high,low,close\nA,2024-01-01,1,2,0.5,1\nA,2024-01-02,1,0.1,0.5,1\n")
    result = cli("series", "import", str(tmp_path / "bad.csv"), "--freq", "1D")
    assert result.exit_code == 1 and "file row 2: high" in result.output


def test_schedules_list_and_run(cli, http) -> None:  # noqa: F811
    schedule = http.post("/v1/schedules", json={"name": "n", "cron": "0 18 * * *", "model": "random:mini"}).json()
    assert schedule["id"] in cli("schedules", "list").stdout
    run_id = cli("schedules", "run", schedule["id"]).stdout.strip()
    assert http.get(f"/v1/schedules/{schedule['id']}/runs/{run_id}").status_code == 200
