"""Client commands run in process against the real API (TestClient is an httpx.Client)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from api.main import create_app
from kronos_jobs.cli import main
from kronos_jobs.core.settings import Settings


@pytest.fixture
def http(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture
def cli(http: TestClient, settings: Settings):
    runner = CliRunner()

    def run(*args: str) -> Any:
        return runner.invoke(main, list(args), obj={"settings": settings, "http": http}, catch_exceptions=False)

    return run
