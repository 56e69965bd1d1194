"""Fixtures for job-service tests: a tiny random local checkpoint, settings that use it, and the
fine-tune tests' bars (factories live in kronos_jobs/testing/)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kronos_jobs.cli.sample_data import sample_bars
from kronos_jobs.testing.checkpoints import save_tiny_checkpoint


@pytest.fixture(scope="session")
def tiny_checkpoint(tmp_path_factory) -> Path:
    """A tiny checkpoint alone in its own models root: settings use `model_dirs=[tiny_checkpoint.parent]`."""
    return save_tiny_checkpoint(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture
def job_settings(db_settings, tiny_checkpoint):
    """A migrated test database with a short lease, 2-series chunks and the tiny checkpoint's folder as model root."""
    return db_settings.model_copy(update={"lease_seconds": 4, "heartbeat_seconds": 0.5, "max_batch_size": 2,
                                          "model_dirs": [tiny_checkpoint.parent]})


@pytest.fixture(scope="module")
def bars():
    """Three symbols of 260 sample session bars: enough windows for a tiny fine-tune."""
    return sample_bars(3, 260, seed=4)
