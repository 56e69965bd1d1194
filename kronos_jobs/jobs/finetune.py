"""The fine-tune job lifecycle, owned in one place (mirrors `jobs/forecast.py`).

`run_finetune_job` claims the job's lease and heartbeats it, trains with the one loop in
`model/finetune.py` (tokenizer, predictor or both, in that order; AMP on CUDA), reports progress on
the job row (phase, epoch, step / total, train and validation loss, ETA), stops at the next step when
a cancel is requested, and on success reloads the saved checkpoint through `from_pretrained`
(keys, shapes and sha256 verified), evaluates it on held-out windows and registers it as a model
version — registration, metadata and the final state in ONE transaction.

Delivery and resume (the choice, and why):
* Fine-tune tasks keep the app-wide late acknowledgement with reject-on-worker-lost
  (`celery_app.py`) instead of early ack + a reaper. A worker child killed mid-run (SIGKILL, OOM,
  node loss) leaves its message unacknowledged, so the broker redelivers it at once — no extra
  reconciler path is needed to restart training; the beat reconciler still re-sends jobs whose
  message a broker lost outright.
* What guarantees "never two runs at once" is the database lease, not the broker: the redelivered
  task finds the dead owner's lease still live, retries when it lapses (`LeaseHeld`), then claims
  the job. A copy Redis redelivers past its visibility timeout (default 2 x the hard time limit)
  meets the same live lease, which the running copy renews every KRONOS_HEARTBEAT_SECONDS.
* The new owner resumes from `<artifacts>/<job id>/<phase>/training_state.pt`: weights, optimizer,
  scheduler, AMP scaler, step counters and RNG state, written atomically (temp file + rename) every
  `checkpoint_every_steps` steps and at each epoch end. The steps since the last checkpoint are
  redone; the batches are the same because the epoch order depends only on (seed, epoch).
* A warm shutdown of the worker (SIGTERM: a deploy) loses no steps: the parent raises the drain
  flag (`runtime/drain.py`, which the task hands in), the loop stops at its next step boundary and
  checkpoints, and the job is given back (`queued`, lease released, the attempt not counted,
  `given_back` in its metadata) and its task sent again, so another worker resumes from exactly
  that step. A cancel requested
  meanwhile wins. If the re-send fails, the job is still `queued` in the database and the beat
  reconciler re-sends it. A cold shutdown (SIGQUIT) or a kill resumes from the last periodic
  checkpoint, as above.

`<artifacts>` is KRONOS_ARTIFACTS_URL: a local folder, or an object store that every checkpoint is
uploaded to and that a new owner on another host downloads the state from first
(jobs/artifact_store.py, the one place that moves these files).

Artifacts policy: succeeded → only `<artifacts>/<job id>/final/` (model/, tokenizer/ and their
sha256 manifest: the registered version) is kept; the training states are deleted. Cancelled or
failed → the whole `<artifacts>/<job id>/` directory is deleted once the state is recorded.
Retiring a model keeps its files for KRONOS_RETAIN_RETIRED_MODELS_DAYS (jobs/retention.py; old
jobs stay readable, new jobs cannot name it).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any, Callable

from kronos_jobs.core.errors import (
    JobCancelled,
    JobGivenBack,
    LeaseLost,
    StoppedForShutdown,
)
from kronos_jobs.core.identity import WorkerIdentity
from kronos_jobs.core.names import JobState
from kronos_jobs.core.settings import Settings
from kronos_jobs.crud import jobs as job_crud
from kronos_jobs.crud import models as model_crud
from kronos_jobs.crud import results as result_crud
from kronos_jobs.db.models import utcnow
from kronos_jobs.db.session import session_scope
from kronos_jobs.jobs.artifact_store import FinetuneArtifacts
from kronos_jobs.jobs.finetune_submit import FinetuneParams, resolve_finetune_model
from kronos_jobs.jobs.lease import LeaseHeartbeat, raise_if_held
from kronos_jobs.jobs.lifecycle import Delivery, new_owner, run_delivery
from kronos_jobs.jobs.training import Progress, train_pair

logger = logging.getLogger(__name__)

MODEL_ID_PREFIX = "ft-"


def model_id_for(job_id: str) -> str:
    """The registry id of a fine-tune's model: stable per job, so a redelivery cannot register twice."""
    return f"{MODEL_ID_PREFIX}{job_id}"


def artifacts_dir(settings: Settings, job_id: str) -> Path:
    """The job's local working folder (mirrored to KRONOS_ARTIFACTS_URL when that is an object store)."""
    return FinetuneArtifacts(settings, job_id).work_dir


# --- progress on the job row --------------------------------------------------------------------------


class JobProgress(Progress):
    """Writes progress to the job row (at most every `interval` s, and on every loop report) and
    turns the job's cancel flag, or the worker's drain flag, into the loop's stop signal."""

    def __init__(self, totals: dict[str, int], *, settings: Settings, job_id: str, owner: str,
                 heartbeat: LeaseHeartbeat, draining: Callable[[], bool], interval: float = 1.0):
        super().__init__(totals)
        self.settings, self.job_id, self.owner, self.heartbeat = settings, job_id, owner, heartbeat
        self.interval = interval
        self.draining = draining
        self.last_write = 0.0
        self.cancelled = False

    def flush(self, force: bool = False) -> bool:
        if self.heartbeat.lost:
            raise LeaseLost(f"job {self.job_id}: lease lost while training")
        now = time.monotonic()
        if not force and now - self.last_write < self.interval:
            return self.cancelled
        self.last_write = now
        with session_scope(self.settings) as session:
            self.cancelled = job_crud.update_progress(session, job_id=self.job_id, owner=self.owner, done=self.done,
                                                      total=self.total, detail=self.snapshot())
        return self.cancelled

    def should_stop(self) -> bool:
        # The drain flag is one byte of shared memory, so it is read before every step; the cancel
        # flag costs a query, so it is read every `interval`. A cancel seen first wins; one arriving
        # after the drain is caught by give_back_job's WHERE clause.
        if not super().should_stop() and self.draining():
            self.stop_reason = "worker_shutdown"
        return self.stop_reason is not None


# --- the job lifecycle --------------------------------------------------------------------------------


@dataclasses.dataclass
class _Run(Delivery):
    params: FinetuneParams
    data_summary: dict[str, Any]
    given_back: list[dict[str, Any]]  # earlier deliveries that checkpointed for a worker shutdown
    identity: WorkerIdentity
    draining: Callable[[], bool]
    priority: int = 6
    workload: str = "interactive"
    queue_wait_seconds: float | None = None  # submit -> first claim


def never_draining() -> bool:
    """The drain flag of a process that is not a worker: no warm shutdown ever begins."""
    return False


def run_finetune_job(job_id: str, *, settings: Settings, identity: WorkerIdentity,
                     draining: Callable[[], bool] = never_draining) -> JobState | None:
    """Run one delivery of a fine-tune job on the worker `identity` (its resolved device included);
    the final state, or None when this delivery did nothing. `draining` is the worker's drain flag
    (runtime/worker.py): once it is up, training checkpoints and gives the job back.

    Raises LeaseLost / LeaseHeld (another delivery owns the job), JobGivenBack (this worker is
    shutting down: the job is queued again and its task must be re-sent) and transient errors (the
    task retries). Every other outcome is recorded on the job before returning.
    """

    if draining():
        # Celery's consumer goes on taking messages for a moment after the shutdown signal, so a
        # draining worker can be handed this job, even the task it just re-sent. Leave the job
        # queued, unclaimed, and send the task again for a worker that is not shutting down.
        raise JobGivenBack(f"job {job_id} not started: this worker is shutting down")
    owner = new_owner()
    t0 = time.perf_counter()
    try:
        with session_scope(settings) as session:
            context = job_crud.claim_context(session, job_id=job_id)
            wait = job_crud.seconds_waiting(context) if context is not None else None
            job = job_crud.claim_job(session, job_id=job_id, owner=owner, lease_seconds=settings.lease_seconds,
                                     wait_seconds=wait)
            run = _Run(job_id=job.id, owner=owner, tenant_id=job.tenant_id, params=FinetuneParams.from_value(job.params),
                       data_summary=dict(job.params.get("data_summary") or {}), queue=job.queue,
                       device_requested=job.device_requested, attempt=job.attempts, queued_at=job.created_at,
                       started_at=job.started_at, t0=t0,
                       given_back=list((job.execution_metadata or {}).get("given_back") or []),
                       identity=identity, draining=draining, priority=job.priority, workload=job.workload,
                       queue_wait_seconds=job.queue_wait_seconds)
    except JobCancelled:
        _remove_artifacts(settings, job_id)
        logger.info("job %s cancelled elapsed=%.3fs (before it started)", job_id, time.perf_counter() - t0)
        return JobState.CANCELLED
    except LeaseLost as exc:
        raise_if_held(job_id, settings, exc)
        raise
    logger.info("job %s running elapsed=%.3fs attempt=%d owner=%s", job_id, run.elapsed(), run.attempt, owner)
    heartbeat = LeaseHeartbeat(settings, job_id, owner)
    heartbeat.start()
    try:
        return _execute(run, settings, heartbeat)
    finally:
        heartbeat.stop()


def _execute(run: _Run, settings: Settings, heartbeat: LeaseHeartbeat) -> JobState:
    meta: dict[str, Any] = {}

    def work() -> JobState:
        try:
            return _train_and_register(run, settings, heartbeat, meta)
        except StoppedForShutdown as exc:
            return _give_back(run, settings, exc, meta)  # raises JobGivenBack unless a cancel won

    return run_delivery(
        run, settings, work,
        fail=lambda error: _finish(run, settings, JobState.FAILED, meta=meta, error=error),
        cancelled=lambda exc: _cancelled(run, settings, meta, exc),
        time_limit_message=f"the fine-tune exceeded its {settings.finetune_soft_time_limit} s soft time limit "
                           "(KRONOS_FINETUNE_SOFT_TIME_LIMIT); set max_seconds below it",
    )


def _train_and_register(run: _Run, settings: Settings, heartbeat: LeaseHeartbeat, meta: dict[str, Any]) -> JobState:
    identity = run.identity
    params = run.params
    meta.update(identity.job_metadata())
    meta.update(device_requested=run.device_requested, queue=run.queue, attempt=run.attempt, seed=params.seed,
                train=params.train, given_back=run.given_back)
    with session_scope(settings) as session:
        bars, _ = result_crud.load_job_input(session, job_id=run.job_id)
        spec = resolve_finetune_model(params, session, tenant_id=run.tenant_id, model_dirs=settings.effective_model_dirs)
    meta.update(spec.metadata())
    artifacts = FinetuneArtifacts(settings, run.job_id)
    artifacts.restore(params.phases)  # another host may have checkpointed this job: resume from its state
    holder: dict[str, JobProgress] = {}

    def progress_factory(totals: dict[str, int]) -> JobProgress:
        holder["progress"] = JobProgress(totals, settings=settings, job_id=run.job_id, owner=run.owner, heartbeat=heartbeat,
                                         draining=run.draining)
        return holder["progress"]

    started = time.perf_counter()
    outcome = train_pair(params, bars, spec, work_dir=artifacts.work_dir, device=identity.device, settings=settings,
                         progress_factory=progress_factory, on_checkpoint=artifacts.checkpointed)
    meta.update(resumed_from=outcome.resumed_from, amp=outcome.amp, training_device=outcome.device,
                timings={"training_seconds": round(time.perf_counter() - started, 6)})
    if outcome.resumed_from:
        logger.info("job %s resumed from %s", run.job_id, outcome.resumed_from)

    # --- register + finish in ONE transaction --------------------------------------------------------
    model_id = model_id_for(run.job_id)
    artifact_path = artifacts.publish(outcome.final_dir)  # uploaded (manifest last) before it is registered
    meta.update(finetuned_model_id=model_id, artifact_path=artifact_path, model_checksum=outcome.model_checksum,
                tokenizer_checksum=outcome.tokenizer_checksum)
    progress = holder["progress"]
    with session_scope(settings) as session:
        job_crud.update_progress(session, job_id=run.job_id, owner=run.owner, done=progress.done, total=progress.total,
                                 detail=dict(progress.snapshot(), eta_seconds=0))
        model_crud.register_model(
            session, model_id=model_id, tenant_id=run.tenant_id, kind=model_crud.FINETUNED, max_context=spec.max_context,
            base_model=params.model, artifact_path=artifact_path, checksum=outcome.model_checksum,
            job_id=run.job_id, data_summary={**run.data_summary, "name": params.name, "description": params.description},
            hyperparameters={**params.hyperparameters(), "device": outcome.device, "amp": outcome.amp},
            metrics=outcome.metrics(),
        )
        _finish_row(session, run, JobState.SUCCEEDED, meta, None)
    _log(run, JobState.SUCCEEDED, f"model={model_id}")
    artifacts.discard_states(params.phases, checksum=outcome.model_checksum)  # the registered model is final/
    return JobState.SUCCEEDED


def _cancelled(run: _Run, settings: Settings, meta: dict[str, Any], exc: JobCancelled) -> JobState:
    return _finish(run, settings, JobState.CANCELLED, meta=meta,
                   error={"code": "cancelled", "message": f"cancelled by request while running ({exc})"})


def _give_back(run: _Run, settings: Settings, stop: StoppedForShutdown, meta: dict[str, Any]) -> JobState:
    """The worker is shutting down and the loop checkpointed: put the job back in the queue (lease
    released, attempt not counted) and raise JobGivenBack so the task is sent again. The artifacts
    stay: the next delivery resumes from them. A cancel requested meanwhile wins."""

    entry = {"reason": "worker_shutdown", "phase": stop.phase, "step": stop.step, "worker_id": meta.get("worker_id"),
             "worker_pid": os.getpid(), "at": utcnow().isoformat(), "message": str(stop)}
    try:
        with session_scope(settings) as session:
            job_crud.give_back_job(session, job_id=run.job_id, owner=run.owner,
                                   execution_metadata={"given_back": [*run.given_back, entry]})
    except JobCancelled as exc:
        return _cancelled(run, settings, meta, exc)
    _log(run, JobState.QUEUED, f"{stop}; given back to the queue")
    raise JobGivenBack(f"job {run.job_id}: {stop}")


def _finish_row(session, run: _Run, state: JobState, meta: dict[str, Any], error: dict[str, Any] | None) -> None:
    finished_at = utcnow()
    meta.update(priority=run.priority, workload=run.workload)
    meta.setdefault("timings", {}).update(
        queue_wait_seconds=run.queue_wait_seconds,  # submit -> first claim
        queued_at=run.queued_at.isoformat() if run.queued_at else None,
        started_at=run.started_at.isoformat() if run.started_at else None,
        finished_at=finished_at.isoformat(), elapsed_seconds=round(run.elapsed(), 6))
    job_crud.finish_job(session, job_id=run.job_id, owner=run.owner, state=state, error=error, execution_metadata=meta)


def _finish(run: _Run, settings: Settings, state: JobState, *, meta: dict[str, Any] | None = None,
            error: dict[str, Any] | None = None) -> JobState:
    """A cancelled or failed fine-tune: record it, then delete its partial artifacts."""
    meta = dict(meta or {})
    with session_scope(settings) as session:
        _finish_row(session, run, state, meta, error)
    _remove_artifacts(settings, run.job_id)
    _log(run, state, f"code={error['code']}" if error else "")
    return state


def _remove_artifacts(settings: Settings, job_id: str) -> None:
    FinetuneArtifacts(settings, job_id).remove()


def _log(run: _Run, state: JobState, extra: str = "") -> None:
    logger.info("job %s %s elapsed=%.3fs%s", run.job_id, state.value, run.elapsed(), f" {extra}" if extra else "")
