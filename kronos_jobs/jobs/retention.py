"""Retention: what the service deletes, and when. Ages count from `finished_at` (`retired_at` for
models); a setting of 0 keeps that kind of record forever.

| what | setting | default | what remains |
|---|---|---|---|
| a finished job's input bars | KRONOS_RETAIN_INPUTS_DAYS | 30 | the job with its metadata and result; `input_pruned_at` set |
| a finished job's result rows | KRONOS_RETAIN_RESULTS_DAYS | 365 | the job row; `GET .../result` answers 410 Gone |
| finished job rows | KRONOS_RETAIN_JOBS_DAYS | 365 | a tombstone (id, tenant, date): `GET /v1/jobs/{id}` answers 410 |
| finished schedule runs | KRONOS_RETAIN_SCHEDULE_RUNS_DAYS | 365 | a tombstone: the run answers 410 |
| a retired model's artifact files | KRONOS_RETAIN_RETIRED_MODELS_DAYS | 90 | the model row (`artifact_pruned_at` set) |

Never deleted: queued or running jobs, the series store's bars (the user's data, managed through
`/v1/series`), schedules themselves, live models.

Why batches: a year of nightly results is millions of rows. Each statement deletes at most
KRONOS_PRUNE_BATCH_ROWS rows in its own short transaction, so workers writing results and the API
reading them never wait behind one long DELETE, and an interrupted prune simply resumes next time.
Results go before inputs before job rows, so deleting a job row never cascades into a large delete.
"""

from __future__ import annotations

import dataclasses
import logging
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from kronos_jobs.core.settings import Settings
from kronos_jobs.crud import retention as crud
from kronos_jobs.db.models import utcnow
from kronos_jobs.db.session import session_scope
from kronos_jobs.jobs.artifact_store import is_remote_url, remove_artifact

logger = logging.getLogger(__name__)

JOBS_PER_SCAN = 200  # jobs looked at per scan; their rows are still deleted KRONOS_PRUNE_BATCH_ROWS at a time


@dataclasses.dataclass
class PruneReport:
    """What a prune deleted (or, with dry_run, would delete)."""

    dry_run: bool
    cutoffs: dict[str, str | None]
    inputs: int = 0
    input_bytes: int | None = None  # counted by a dry run only
    result_jobs: int = 0
    result_rows: int = 0
    jobs: int = 0
    schedule_runs: int = 0
    model_artifacts: list[str] = dataclasses.field(default_factory=list)
    skipped_artifacts: list[str] = dataclasses.field(default_factory=list)  # outside the artifact store: left alone

    def lines(self) -> list[str]:
        verb = "would delete" if self.dry_run else "deleted"
        size = f" ({self.input_bytes / 1e6:.1f} MB)" if self.input_bytes is not None else ""
        out = [
            f"inputs:          {verb} {self.inputs} job inputs{size} (finished before {self.cutoffs['inputs'] or 'never'})",
            f"results:         {verb} {self.result_rows} forecast rows of {self.result_jobs} jobs "
            f"(finished before {self.cutoffs['results'] or 'never'})",
            f"jobs:            {verb} {self.jobs} job rows (finished before {self.cutoffs['jobs'] or 'never'})",
            f"schedule runs:   {verb} {self.schedule_runs} runs (finished before {self.cutoffs['schedule_runs'] or 'never'})",
            f"model artifacts: {verb} {len(self.model_artifacts)} retired models' files"
            + (f": {', '.join(self.model_artifacts)}" if self.model_artifacts else ""),
        ]
        if self.skipped_artifacts:
            out.append(f"left alone (not under KRONOS_ARTIFACTS_URL): {', '.join(self.skipped_artifacts)}")
        return out

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def cutoffs(settings: Settings, now: datetime) -> dict[str, datetime | None]:
    """The instant before which each kind of record is due; None when it is kept forever."""
    days = {"inputs": settings.retain_inputs_days, "results": settings.retain_results_days,
            "jobs": settings.retain_jobs_days, "schedule_runs": settings.retain_schedule_runs_days,
            "models": settings.retain_retired_models_days}
    return {kind: (now - timedelta(days=n) if n else None) for kind, n in days.items()}


def prune(settings: Settings, *, now: datetime | None = None, dry_run: bool = False) -> PruneReport:
    """Delete what retention lets go (module docstring), in bounded transactions; or count it."""
    now = now or utcnow()
    due = cutoffs(settings, now)
    report = PruneReport(dry_run=dry_run, cutoffs={k: v.isoformat() if v else None for k, v in due.items()})
    if dry_run:
        _count(settings, due, report)
        return report
    batch = settings.prune_batch_rows
    if due["results"]:
        _prune_results(settings, due["results"], now, batch, report)
    if due["inputs"]:
        while ids := _in_session(settings, crud.due_inputs, finished_before=due["inputs"], limit=min(batch, JOBS_PER_SCAN)):
            with session_scope(settings) as session:
                crud.delete_inputs(session, job_ids=ids, at=now)
            report.inputs += len(ids)
    if due["jobs"]:
        while jobs := _in_session(settings, crud.due_jobs, finished_before=due["jobs"], limit=min(batch, JOBS_PER_SCAN)):
            with session_scope(settings) as session:
                report.jobs += crud.delete_jobs(session, jobs=jobs, at=now)
    if due["schedule_runs"]:
        while runs := _in_session(settings, crud.due_runs, finished_before=due["schedule_runs"], limit=min(batch, JOBS_PER_SCAN)):
            with session_scope(settings) as session:
                report.schedule_runs += crud.delete_runs(session, runs=runs, at=now)
    if due["models"]:
        _prune_model_artifacts(settings, due["models"], now, report)
    logger.info("prune: %s", "; ".join(line.strip() for line in report.lines()))
    return report


def _in_session(settings: Settings, query, **kwargs):
    with session_scope(settings) as session:
        return query(session, **kwargs)


def _prune_results(settings: Settings, before: datetime, now: datetime, batch: int, report: PruneReport) -> None:
    while ids := _in_session(settings, crud.due_results, finished_before=before, limit=JOBS_PER_SCAN):
        while True:  # one bounded DELETE per transaction until these jobs have no rows left
            with session_scope(settings) as session:
                deleted = crud.delete_forecast_rows(session, job_ids=ids, limit=batch)
            report.result_rows += deleted
            if deleted < batch:
                break
        with session_scope(settings) as session:
            crud.mark_results_pruned(session, job_ids=ids, at=now)
        report.result_jobs += len(ids)


def _inside_store(settings: Settings, location: str) -> bool:
    """Only files this service wrote are deleted: under KRONOS_ARTIFACTS_URL (or KRONOS_ARTIFACTS_DIR)."""
    root = settings.effective_artifacts_url.rstrip("/")
    if is_remote_url(location):
        return is_remote_url(root) and location.startswith(root + "/")
    path = Path(location).resolve()
    roots = [settings.effective_artifacts_dir] + ([] if is_remote_url(root) else [Path(root).resolve()])
    return any(path != r and path.is_relative_to(r) for r in roots)


def _prune_model_artifacts(settings: Settings, before: datetime, now: datetime, report: PruneReport,
                           dry_run: bool = False) -> None:
    after = ""
    while models := _in_session(settings, _due_models, retired_before=before, limit=100, after=after):
        for model_id, location in models:
            after = model_id
            if not _inside_store(settings, location):
                report.skipped_artifacts.append(model_id)
                continue
            report.model_artifacts.append(model_id)
            if dry_run:
                continue
            remove_artifact(settings, location)
            with session_scope(settings) as session:
                crud.mark_artifact_pruned(session, model_id=model_id, at=now)


def _due_models(session, **kwargs) -> list[tuple[str, str]]:
    return [(m.id, m.artifact_path) for m in crud.due_model_artifacts(session, **kwargs)]


def _count(settings: Settings, due: dict[str, datetime | None], report: PruneReport) -> None:
    with session_scope(settings) as session:
        if due["inputs"]:
            report.inputs, report.input_bytes = crud.count_inputs(session, finished_before=due["inputs"])
        if due["results"]:
            report.result_jobs, report.result_rows = crud.count_results(session, finished_before=due["results"])
        if due["jobs"]:
            report.jobs = crud.count_jobs(session, finished_before=due["jobs"])
        if due["schedule_runs"]:
            report.schedule_runs = crud.count_runs(session, finished_before=due["schedule_runs"])
    if due["models"]:
        _prune_model_artifacts(settings, due["models"], due["models"], report, dry_run=True)
