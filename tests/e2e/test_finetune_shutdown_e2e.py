"""A warm worker shutdown (SIGTERM, a deploy) mid fine-tune, end to end with real worker processes.

The fine-tune checkpoints at its next step, goes back to `queued` and its task is sent again; a
second worker resumes from exactly that step and succeeds. Runs on the embedded default and on
Redis + PostgreSQL (the forecast e2e's `stack` fixture: one worker, two prefork children).
"""

from __future__ import annotations

import os
import signal
import subprocess

import pytest
import torch

from kronos_jobs.jobs.finetune import artifacts_dir
from model.finetune import TRAINING_STATE_NAME
from tests.e2e.harness import finished, submit_finetune_job, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(240)]

STEPS = 400  # one epoch of them: a few seconds of training, far more than the SIGTERM takes to land


def test_warm_shutdown_checkpoints_gives_back_and_another_worker_resumes(stack):
    # One epoch and a checkpoint interval beyond it: the only checkpoint is the one the shutdown writes.
    job_id = submit_finetune_job(stack, epochs=1, samples_per_epoch=STEPS * 8, checkpoint_every_steps=100_000,
                                 log_interval=1, eval_windows=4)
    assert stack.env.get("KRONOS_LOG_LEVEL") == "INFO"
    running = wait_for(stack, job_id, lambda j: j.state == "running" and j.progress_done >= 3)
    first_child = int(running.lease_owner.split(":")[1])

    os.kill(stack.proc.pid, signal.SIGTERM)  # warm shutdown: only the parent is signalled
    try:
        stack.proc.wait(timeout=90)  # the child gives the job back, so the parent need not wait for training
    except subprocess.TimeoutExpired:
        pytest.fail(f"the worker did not finish its warm shutdown:\n{stack.log.read_text()[-3000:]}")

    job = wait_for(stack, job_id, lambda j: j.state != "running", timeout=10)
    assert job.state == "queued" and job.lease_owner is None and job.attempts == 0, stack.log.read_text()[-3000:]
    [given_back] = job.execution_metadata["given_back"]
    step = given_back["step"]
    state = torch.load(artifacts_dir(stack.settings, job_id) / "predictor" / TRAINING_STATE_NAME, weights_only=True)
    assert state["step"] == step and running.progress_done <= step < job.progress_total
    assert given_back["reason"] == "worker_shutdown" and given_back["worker_pid"] == first_child
    assert f"checkpointed for worker shutdown at step {step}" in stack.log.read_text()

    stack.start_worker()  # the re-sent task waits in the broker for the next worker
    job = wait_for(stack, job_id, finished, timeout=150)
    assert job.state == "succeeded", (job.error, stack.log.read_text()[-3000:])
    meta = job.execution_metadata
    assert job.attempts == 1 and meta["worker_pid"] != first_child
    assert meta["resumed_from"] == [{"phase": "predictor", "step": step, "epoch": 0}]
    assert meta["given_back"] == [given_back] and job.progress_done == job.progress_total
