"""pyproject.toml and the requirements files: what `pip install` will do on a fresh machine."""

from __future__ import annotations

import fnmatch
import importlib
import re
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def requirement_lines(path: str) -> list[str]:
    lines = [line.split("#")[0].strip() for line in (ROOT / path).read_text().splitlines()]
    return [line for line in lines if line]


def test_console_script_points_at_the_cli():
    target = PYPROJECT["project"]["scripts"]["kronos-jobs"]
    module, _, attribute = target.partition(":")
    main = getattr(importlib.import_module(module), attribute)
    assert callable(main)
    assert {"up", "demo", "api", "worker", "beat", "db"} <= set(main.commands)


def test_dependencies_come_from_requirements_txt_only():
    # Listing torch in pyproject as well would let `pip install -e .` alone resolve a CUDA build.
    assert "dependencies" not in PYPROJECT["project"]
    assert PYPROJECT["project"]["dynamic"] == ["dependencies"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["dependencies"] == {"file": ["requirements.txt"]}
    # setuptools reads plain requirement lines only: no pip options, no -r includes.
    assert not [line for line in requirement_lines("requirements.txt") if line.startswith("-")]


def test_torch_is_pinned_exactly_everywhere():
    for path in ("requirements.txt", "requirements-cuda.txt"):
        torch = [line for line in requirement_lines(path) if re.match(r"torch\b", line)]
        assert torch == ["torch==2.13.0"], (path, torch)
    assert "torch" not in (ROOT / "requirements-dev.txt").read_text()


def test_packages_and_migrations_are_shipped():
    include = PYPROJECT["tool"]["setuptools"]["packages"]["find"]["include"]
    for package in ("model", "kronos_jobs", "kronos_jobs.db", "api", "api.routes"):
        assert any(fnmatch.fnmatch(package, pattern) for pattern in include), package
    patterns = PYPROJECT["tool"]["setuptools"]["package-data"]["kronos_jobs.db"]
    migrations = ROOT / "kronos_jobs" / "db" / "migrations"
    shipped = [p for p in migrations.rglob("*") if p.is_file() and "__pycache__" not in p.parts]
    assert any(p.name == "env.py" for p in shipped)
    matched = {p for pattern in patterns for p in (ROOT / "kronos_jobs" / "db").glob(pattern)}  # setuptools' glob rules
    missing = [p.relative_to(ROOT).as_posix() for p in shipped if p not in matched and p.suffix != ".pyc"]
    assert not missing, f"not package data: {missing}"


def test_no_pytest_config_in_pyproject():
    # pytest.ini is the one place; a second one would be silently ignored.
    assert "pytest" not in PYPROJECT.get("tool", {})
