"""A warm worker shutdown checkpoints a running fine-tune and gives its job back (in-process, no broker).

The drain flag is the real one (`kronos_jobs.runtime.drain`): a shared byte a test raises from inside a
training step, as the worker parent's signal handler would between two steps.
"""

from __future__ import annotations

import multiprocessing
import time
from unittest import mock

import pytest
import torch

from kronos_jobs.core.errors import JobCancelled, JobGivenBack, LeaseLost
from kronos_jobs.core.names import DEFAULT_TENANT, JobState
from kronos_jobs.crud import jobs as job_crud
from kronos_jobs.db.session import session_scope
from kronos_jobs.jobs import recovery
from kronos_jobs.jobs.finetune import artifacts_dir, run_finetune_job
from kronos_jobs.runtime import drain, worker
from kronos_jobs.testing.factories import load_job as load
from kronos_jobs.testing.factories import submit_finetune_job as submit
from kronos_jobs.testing.factories import worker_identity
from model.finetune import TRAINING_STATE_NAME, FinetuneLoop

# One epoch and a checkpoint interval beyond it: the only checkpoint is the one the shutdown writes.
ONE_LONG_EPOCH = {"train": "predictor", "epochs": 1, "samples_per_epoch": None, "checkpoint_every_steps": 1000}
DRAIN_AT_STEP = 4  # the flag goes up during this step; the loop stops before the next one


@pytest.fixture
def drain_flag(monkeypatch):
    """A fresh drain flag for this test, as `start_worker` maps it before forking the pool."""
    monkeypatch.setattr(drain, "_flag", None)
    drain.open_flag()
    return drain


def drain_during_step(step: int, also=None):
    """Patch the loop so the worker's drain flag is raised while `step` trains (and `also()` runs)."""
    real_step = FinetuneLoop._train_step

    def train_step(self, indices):
        if self.step == step:
            drain.request_drain()
            if also is not None:
                also()
        return real_step(self, indices)

    return mock.patch.object(FinetuneLoop, "_train_step", train_step)


def saved_step(settings, job_id) -> int:
    path = artifacts_dir(settings, job_id) / "predictor" / TRAINING_STATE_NAME
    return torch.load(path, weights_only=True)["step"]


def test_drain_checkpoints_gives_back_and_the_next_delivery_resumes_there(job_settings, tiny_checkpoint, bars,
                                                                           drain_flag, caplog):
    job_id, _ = submit(job_settings, tiny_checkpoint, bars, **ONE_LONG_EPOCH)
    with drain_during_step(DRAIN_AT_STEP), caplog.at_level("INFO"), pytest.raises(JobGivenBack):
        run_finetune_job(job_id, settings=job_settings, identity=worker_identity(job_settings), draining=drain.draining)

    job = load(job_settings, job_id)
    stopped_at = DRAIN_AT_STEP + 1
    assert job.state == "queued" and job.lease_owner is None and job.lease_expires_at is None
    assert job.attempts == 0 and job.error is None  # not counted as a failed delivery
    assert stopped_at < job.progress_total and saved_step(job_settings, job_id) == stopped_at
    [entry] = job.execution_metadata["given_back"]
    assert entry["reason"] == "worker_shutdown" and entry["phase"] == "predictor" and entry["step"] == stopped_at
    assert f"checkpointed for worker shutdown at step {stopped_at}" in caplog.text

    drain.open_flag()  # the next worker is not draining
    assert run_finetune_job(job_id, settings=job_settings, identity=worker_identity(job_settings), draining=drain.draining) is JobState.SUCCEEDED
    job = load(job_settings, job_id)
    assert job.attempts == 1 and job.progress_done == job.progress_total
    meta = job.execution_metadata
    assert meta["resumed_from"] == [{"phase": "predictor", "step": stopped_at, "epoch": 0}]
    assert meta["given_back"] == [entry]


def test_cancel_wins_over_the_give_back(job_settings, tiny_checkpoint, bars, drain_flag):
    job_id, _ = submit(job_settings, tiny_checkpoint, bars, **ONE_LONG_EPOCH)

    def cancel():
        with session_scope(job_settings) as session:
            job_crud.request_cancel(session, tenant_id=DEFAULT_TENANT, job_id=job_id)

    # The cancel lands after the loop last read the job row: the give-back's UPDATE must see it.
    with drain_during_step(DRAIN_AT_STEP, also=cancel):
        assert run_finetune_job(job_id, settings=job_settings, identity=worker_identity(job_settings), draining=drain.draining) is JobState.CANCELLED
    job = load(job_settings, job_id)
    assert job.state == "cancelled" and job.error["code"] == "cancelled" and job.lease_owner is None
    assert not artifacts_dir(job_settings, job_id).exists()


def test_without_the_flag_nothing_changes(job_settings, tiny_checkpoint, bars, monkeypatch):
    monkeypatch.setattr(drain, "_flag", None)  # outside a worker: never draining
    drain.request_drain()
    assert not drain.draining()
    job_id, _ = submit(job_settings, tiny_checkpoint, bars, **ONE_LONG_EPOCH, max_steps=3)
    assert run_finetune_job(job_id, settings=job_settings, identity=worker_identity(job_settings), draining=drain.draining) is JobState.SUCCEEDED
    assert load(job_settings, job_id).execution_metadata["given_back"] == []


def test_a_draining_worker_does_not_start_a_finetune(job_settings, tiny_checkpoint, bars, drain_flag):
    # Celery's consumer takes a message or two after the signal, even the task a child just re-sent.
    job_id, _ = submit(job_settings, tiny_checkpoint, bars, **ONE_LONG_EPOCH)
    drain.request_drain()
    with pytest.raises(JobGivenBack, match="not started"):
        run_finetune_job(job_id, settings=job_settings, identity=worker_identity(job_settings), draining=drain.draining)
    job = load(job_settings, job_id)
    assert (job.state, job.attempts, job.lease_owner) == ("queued", 0, None)
    assert not artifacts_dir(job_settings, job_id).exists()


# --- the database step -----------------------------------------------------------------------------


def claimed(settings, checkpoint, bars, owner="w:1:a"):
    job_id, _ = submit(settings, checkpoint, bars, **ONE_LONG_EPOCH)
    with session_scope(settings) as session:
        job_crud.claim_job(session, job_id=job_id, owner=owner, lease_seconds=60)
    return job_id


def test_give_back_requeues_releases_and_uncounts(job_settings, tiny_checkpoint, bars):
    job_id = claimed(job_settings, tiny_checkpoint, bars)
    with session_scope(job_settings) as session:
        job_crud.give_back_job(session, job_id=job_id, owner="w:1:a", execution_metadata={"given_back": [{"step": 3}]})
    job = load(job_settings, job_id)
    assert (job.state, job.lease_owner, job.lease_expires_at, job.attempts) == ("queued", None, None, 0)
    assert job.execution_metadata == {"given_back": [{"step": 3}]}
    with session_scope(job_settings) as session:  # claimable again at once, by anyone
        assert job_crud.claim_job(session, job_id=job_id, owner="w:2:b", lease_seconds=60).attempts == 1


def test_give_back_needs_the_lease_and_loses_to_a_cancel(job_settings, tiny_checkpoint, bars):
    job_id = claimed(job_settings, tiny_checkpoint, bars)
    with session_scope(job_settings) as session, pytest.raises(LeaseLost):
        job_crud.give_back_job(session, job_id=job_id, owner="someone-else")
    with session_scope(job_settings) as session:
        job_crud.request_cancel(session, tenant_id=DEFAULT_TENANT, job_id=job_id)
    with session_scope(job_settings) as session, pytest.raises(JobCancelled):
        job_crud.give_back_job(session, job_id=job_id, owner="w:1:a")
    job = load(job_settings, job_id)
    assert job.state == "running" and job.lease_owner == "w:1:a"  # the owner records the cancel


def test_the_reconciler_resends_a_given_back_job_whose_resend_failed(job_settings, tiny_checkpoint, bars):
    job_id = claimed(job_settings, tiny_checkpoint, bars)
    with session_scope(job_settings) as session:
        job_crud.give_back_job(session, job_id=job_id, owner="w:1:a")
    with mock.patch.object(recovery, "send_job") as send, session_scope(job_settings) as session:
        assert recovery.requeue_stale_jobs(session, job_settings, queued_older_than=0) == [job_id]
    send.assert_called_once_with(job_settings, job_id, "finetune.cpu", priority=6)  # a person asked for it


# --- the flag itself ------------------------------------------------------------------------------


def _wait_for_drain(ready, seen) -> None:
    ready.set()
    deadline = time.monotonic() + 30
    while not drain.draining() and time.monotonic() < deadline:
        time.sleep(0.01)
    seen.value = drain.draining()


def test_warm_shutdown_raises_the_flag_a_forked_child_sees(drain_flag):
    worker._on_shutting_down(sig="SIGQUIT", how="Cold")
    assert not drain.draining()  # a cold shutdown keeps today's behaviour
    context = multiprocessing.get_context("fork")  # how the prefork pool makes its children
    ready, seen = context.Event(), context.Value("b", 0)
    child = context.Process(target=_wait_for_drain, args=(ready, seen))
    child.start()
    assert ready.wait(30)
    worker._on_shutting_down(sig="SIGTERM", how="Warm")  # in the parent, after the fork
    child.join(30)
    assert drain.draining() and child.exitcode == 0 and seen.value == 1
    drain.open_flag()  # a (re)started worker begins undrained
    assert not drain.draining()
