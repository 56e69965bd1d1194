"""Fine-tunes end to end with real worker processes (the forecast e2e stacks: embedded, Redis + PostgreSQL).

A worker child SIGKILLed mid-training is replaced; the redelivered task waits for the dead child's
lease to lapse, resumes from the last checkpoint and succeeds exactly once. A running fine-tune is
cancelled. The registered model serves a forecast through the same worker.
"""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch

from kronos_jobs.cli.sample_data import sample_bars
from kronos_jobs.core.names import DEFAULT_TENANT
from kronos_jobs.crud import jobs as job_crud
from kronos_jobs.crud import models as model_crud
from kronos_jobs.db.session import session_scope
from kronos_jobs.jobs.finetune import artifacts_dir, model_id_for
from model.finetune import TRAINING_STATE_NAME
from tests.e2e.harness import CHECKPOINT_EVERY, finished, submit, submit_finetune_job, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(400)]

def test_killed_worker_child_resumes_from_its_checkpoint_and_succeeds_once(stack):
    job_id = submit_finetune_job(stack, epochs=4, samples_per_epoch=160)  # 80 steps, a few seconds each way
    job = wait_for(stack, job_id, lambda j: j.state == "running" and j.progress_done >= 2 * CHECKPOINT_EVERY + 2)
    child_pid = int(job.lease_owner.split(":")[1])
    assert child_pid != stack.proc.pid
    os.kill(child_pid, signal.SIGKILL)
    # The dead child wrote its last checkpoint before dying; nobody writes until its lease lapses.
    state = torch.load(artifacts_dir(stack.settings, job_id) / "predictor" / TRAINING_STATE_NAME, weights_only=True)
    assert state["step"] >= 2 * CHECKPOINT_EVERY and state["step"] < job.progress_total

    job = wait_for(stack, job_id, finished, timeout=300)
    assert job.state == "succeeded", (job.error, stack.log.read_text()[-3000:])
    meta = job.execution_metadata
    assert job.attempts == 2 and meta["worker_pid"] != child_pid
    assert meta["resumed_from"] == [{"phase": "predictor", "step": state["step"], "epoch": state["epoch"]}]
    assert job.progress_done == job.progress_total
    with session_scope(stack.settings) as session:
        versions = [m for m in model_crud.list_models(session, tenant_id=DEFAULT_TENANT) if m.job_id == job_id]
        assert [m.id for m in versions] == [model_id_for(job_id)]  # registered exactly once
        phases = versions[0].metrics["phases"]["predictor"]
    assert phases["val_loss_after"] < phases["val_loss_before"] and phases["steps"] == job.progress_total
    assert stack.proc.poll() is None  # the worker parent survived and replaced its child

    # The registered id serves a forecast on the same worker; its metadata names the model.
    forecast_id = submit(stack, sample_bars(1, 60, seed=2), model=model_id_for(job_id), lookback=24, quantiles=None)
    forecast = wait_for(stack, forecast_id, finished)
    assert forecast.state == "succeeded", forecast.error
    assert forecast.execution_metadata["model"] == model_id_for(job_id)
    assert forecast.execution_metadata["model_source"] == "finetuned"


def test_cancel_a_running_finetune(stack):
    job_id = submit_finetune_job(stack, epochs=30)
    wait_for(stack, job_id, lambda j: j.state == "running" and j.progress_done >= 4)
    with session_scope(stack.settings) as session:
        job_crud.request_cancel(session, tenant_id=DEFAULT_TENANT, job_id=job_id)
    job = wait_for(stack, job_id, finished, timeout=60)
    assert job.state == "cancelled" and job.progress_done < job.progress_total and job.attempts == 1
    # The worker removes partial artifacts just after recording `cancelled` (only once it knows it
    # still owned the job), so the folder may outlive the state change by a moment.
    deadline = time.monotonic() + 15
    while artifacts_dir(stack.settings, job_id).exists() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not artifacts_dir(stack.settings, job_id).exists()
