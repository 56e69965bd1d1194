"""`kronos-jobs prune [--dry-run]` on the embedded default database."""

from __future__ import annotations

import json
from datetime import timedelta

import pytest
from click.testing import CliRunner

from kronos_jobs.cli.commands import main
from kronos_jobs.core.errors import Gone
from kronos_jobs.core.names import DEFAULT_TENANT, JobState
from kronos_jobs.crud import jobs as job_crud
from kronos_jobs.core.settings import Settings
from kronos_jobs.db.migrate import upgrade
from kronos_jobs.db.models import utcnow
from kronos_jobs.db.session import session_scope
from kronos_jobs.testing.factories import make_job


def test_prune_dry_run_prints_what_would_go_then_prune_deletes_it(tmp_path, monkeypatch):
    monkeypatch.setenv("KRONOS_DATA_DIR", str(tmp_path / "data"))
    settings = Settings()
    upgrade(settings)
    with session_scope(settings) as session:
        job = make_job(session, commit=False)
        job.state, job.finished_at = JobState.SUCCEEDED.value, utcnow() - timedelta(days=400)
        job_id = job.id

    runner = CliRunner()
    dry = runner.invoke(main, ["prune", "--dry-run"])
    assert dry.exit_code == 0, dry.output
    assert "jobs:            would delete 1 job rows" in dry.output
    assert json.loads(runner.invoke(main, ["prune", "--dry-run", "--json"]).output)["jobs"] == 1

    done = runner.invoke(main, ["prune"])
    assert done.exit_code == 0 and "jobs:            deleted 1 job rows" in done.output
    again = runner.invoke(main, ["prune", "--json"])
    assert json.loads(again.output)["jobs"] == 0
    with session_scope(settings) as session, pytest.raises(Gone):
        job_crud.get_job(session, tenant_id=DEFAULT_TENANT, job_id=job_id)
