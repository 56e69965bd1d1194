"""The README is a user's guide that must stay true: settings table, set-up commands, examples."""

from __future__ import annotations

import json
import os
import re

import pandas as pd
import pytest

from kronos_jobs.cli.sample_data import sample_bars
from kronos_jobs.core.settings import Settings
from tests.readme import README, ROOT, code_blocks, parse_cli, section


def test_configuration_table_lists_exactly_the_settings():
    table = section("Configuration")
    documented = re.findall(r"^\| `(KRONOS_[A-Z0-9_]+)` \|", table, re.M)
    expected = [f"KRONOS_{name.upper()}" for name in Settings.model_fields]
    assert len(documented) == len(set(documented)), "a variable is listed twice"
    assert set(documented) == set(expected), (
        f"missing from README: {sorted(set(expected) - set(documented))}; "
        f"not settings: {sorted(set(documented) - set(expected))}"
    )


def test_configuration_rows_have_a_default_and_a_meaning():
    for row in re.findall(r"^\| `KRONOS_[A-Z0-9_]+` \|.*$", section("Configuration"), re.M):
        cells = [cell.strip() for cell in row.strip("|").split("|")]
        assert len(cells) == 3 and all(cells), row


def quick_start_commands() -> list[str]:
    block = code_blocks(section("Quick start"), "bash")[0]
    return [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]


def test_quick_start_is_two_commands_that_exist_and_are_executable():
    commands = quick_start_commands()
    assert commands == ["./scripts/demo.sh --model random:small", "./scripts/test.sh"]
    for command in commands:
        script = ROOT / command.split()[0]
        assert script.is_file(), script
        assert os.access(script, os.X_OK), f"{script} is not executable"
        assert script.read_text().startswith("#!/usr/bin/env bash\n")


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text()
    assert "./scripts/test.sh" in ci
    for variable in ("KRONOS_TEST_REDIS_URL", "KRONOS_TEST_DATABASE_URL"):
        assert f"export {variable}=" in ci


def test_json_examples_are_valid_requests():
    from api.schemas import ForecastJobCreate

    shown = [block for block in code_blocks(README, "json") if '"series"' in block]
    assert shown, "README shows no forecast request"
    for block in shown:
        ForecastJobCreate.model_validate(json.loads(block))
    ForecastJobCreate.model_validate_json((ROOT / "examples" / "forecast.json").read_text())


def test_example_files_are_the_documented_sample_data():
    # examples/ is synthetic data from kronos_jobs.cli.sample_data, regenerable byte for byte.
    csv = pd.read_csv(ROOT / "examples" / "bars.csv")
    expected = sample_bars(2, 120, seed=0)
    assert list(csv.columns) == list(expected.columns)
    pd.testing.assert_frame_equal(
        csv.assign(timestamp=pd.to_datetime(csv["timestamp"], utc=True)), expected,
        check_dtype=False, check_index_type=False,
    )
    body = json.loads((ROOT / "examples" / "forecast.json").read_text())
    small = sample_bars(2, 48, seed=0)
    for series in body["series"]:
        bars = pd.DataFrame(series["bars"])
        mine = small[small["symbol"] == series["symbol"]].reset_index(drop=True)
        assert bars["close"].tolist() == mine["close"].tolist()


@pytest.mark.parametrize("path", ["examples/forecast.json", "examples/bars.csv", "docker-compose.yml",
                                  ".env.example", "requirements-cuda.txt", "Dockerfile.gpu"])
def test_files_the_readme_names_exist(path):
    assert path in README
    assert (ROOT / path).is_file()


def test_performance_section_has_a_row_per_benchmark():
    performance = section("Performance")
    for bench in sorted((ROOT / "bench").glob("*.py")):
        if bench.name != "__init__.py":
            assert re.search(rf"bench[./]{bench.stem}\b", performance), (
                f"bench/{bench.name} has no row in the README's Performance section")


def readme_cli_lines() -> list[str]:
    lines = []
    for block in code_blocks(README, "bash"):
        for line in block.splitlines():
            line = line.split("#")[0].strip()
            if line.startswith("kronos-jobs "):
                lines.append(line)
    return lines


def test_readme_cli_examples_parse(monkeypatch):
    import shlex

    monkeypatch.chdir(ROOT)  # `submit examples/bars.csv` checks that the file exists
    lines = readme_cli_lines()
    assert len(lines) >= 10
    for line in lines:
        parse_cli(shlex.split(line.replace("<job-id>", "0123abcd")))


def test_configuration_defaults_match_the_settings():
    cells = {}
    for row in re.findall(r"^\| `(KRONOS_[A-Z0-9_]+)` \| (.*?) \|", section("Configuration"), re.M):
        cells[row[0]] = row[1]
    for name, field in Settings.model_fields.items():
        if field.default is None or field.default == []:
            continue  # a derived or empty default, described in words
        if isinstance(field.default, list):
            shown = ",".join(str(item) for item in field.default)  # as the variable is written
        else:
            shown = str(field.default.value if hasattr(field.default, "value") else field.default)
        assert f"`{shown}`" in cells[f"KRONOS_{name.upper()}"], (
            f"KRONOS_{name.upper()}: README says {cells[f'KRONOS_{name.upper()}']}, Settings says {shown}")
