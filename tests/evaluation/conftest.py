"""Backtest tests share the job tests' tiny checkpoint and migrated database."""

from tests.jobs.conftest import job_settings, tiny_checkpoint  # noqa: F401 - fixtures
