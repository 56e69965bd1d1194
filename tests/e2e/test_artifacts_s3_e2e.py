"""Several hosts, no shared files: real worker processes on Redis + PostgreSQL, each with its own
data directory, and an S3 endpoint (moto's standalone server) as KRONOS_ARTIFACTS_URL.

Host A starts a fine-tune and is shut down (warm) mid-training: the checkpoint goes to the store.
Host B resumes it from the store and registers the model there. Host C, which never saw either
host's disk, forecasts with the model (fetched into its cache, checksum verified), and a model
whose object is missing fails its job with an error naming the model.
"""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from kronos_jobs.core.names import DEFAULT_TENANT
from kronos_jobs.core.settings import Settings
from kronos_jobs.crud import models as model_crud
from kronos_jobs.db.session import session_scope
from kronos_jobs.jobs.artifact_store import MANIFEST_NAME
from kronos_jobs.jobs.finetune import artifacts_dir, model_id_for
from kronos_jobs.testing.checkpoints import save_tiny_checkpoint
from kronos_jobs.testing.object_store import AWS_ENV, S3Server
from kronos_jobs.testing.services import TEST_DATABASE_URL_ENV, TEST_REDIS_URL_ENV, claim_redis_db, require_service
from kronos_jobs.cli.sample_data import sample_bars
from model.finetune import TRAINING_STATE_NAME
from tests.e2e.harness import REPO, WORKER_ENV, Stack, finished, fresh_schema, submit, submit_finetune_job, wait_for

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.timeout(480)]

BASE_MODEL = "tiny-model"  # relative: each host resolves it under its own KRONOS_MODEL_DIRS


@pytest.fixture(scope="module")
def hosts(tmp_path_factory):
    root = tmp_path_factory.mktemp("s3-hosts")
    redis_url = claim_redis_db(require_service(TEST_REDIS_URL_ENV))
    database_url, drop = fresh_schema(require_service(TEST_DATABASE_URL_ENV))
    s3 = S3Server(root / "moto.log")
    bucket = s3.bucket()
    shared = {k: v for k, v in os.environ.items() if not k.startswith(("KRONOS_", "AWS_")) or k.startswith("KRONOS_TEST_")}
    shared.update({**WORKER_ENV, **AWS_ENV}, PYTHONPATH=str(REPO), KRONOS_BROKER_URL=redis_url, KRONOS_DATABASE_URL=database_url,
                  KRONOS_ARTIFACTS_URL=f"s3://{bucket}/kronos", KRONOS_S3_ENDPOINT_URL=s3.endpoint_url)

    def host(name: str) -> Stack:
        env = dict(shared, KRONOS_DATA_DIR=str(root / name / "data"), KRONOS_MODEL_DIRS=str(root / name / "models"))
        settings = Settings(**{k[len("KRONOS_"):].lower(): v for k, v in env.items()
                               if k.startswith("KRONOS_") and not k.startswith("KRONOS_TEST_")})
        stack = Stack(settings, env, root / f"{name}.log")
        stack.checkpoint = save_tiny_checkpoint(root / name / "models" / BASE_MODEL)  # same seed: same base weights
        return stack

    from kronos_jobs.db.migrate import upgrade

    stacks = {name: host(name) for name in ("a", "b", "c")}
    upgrade(stacks["a"].settings)
    yield stacks, s3, bucket
    for stack in stacks.values():
        stack.stop_worker()
    s3.stop()
    drop()
    __import__("redis").Redis.from_url(redis_url).flushdb()


def test_a_finetune_moves_between_hosts_and_serves_a_host_that_shares_no_files(hosts):
    stacks, s3, bucket = hosts
    a, b, c = stacks["a"], stacks["b"], stacks["c"]
    assert len({str(s.settings.data_dir) for s in (a, b, c)}) == 3
    fs = s3.filesystem()

    # --- host A trains until a warm shutdown; its checkpoint is in the store ------------------------------
    a.start_worker()
    job_id = submit_finetune_job(a, model=BASE_MODEL, epochs=1, samples_per_epoch=400 * 8, checkpoint_every_steps=100_000,
                                 log_interval=1, eval_windows=4)
    wait_for(a, job_id, lambda j: j.state == "running" and j.progress_done >= 3)
    os.kill(a.proc.pid, signal.SIGTERM)
    try:
        a.proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        pytest.fail(f"host A did not finish its warm shutdown:\n{a.log.read_text()[-3000:]}")
    job = wait_for(a, job_id, lambda j: j.state == "queued", timeout=20)
    step = job.execution_metadata["given_back"][0]["step"]
    state_key = f"{bucket}/kronos/{job_id}/predictor/{TRAINING_STATE_NAME}"
    assert fs.exists(state_key), fs.find(f"{bucket}/kronos")

    # --- host B resumes from the store and registers the model there -----------------------------------
    b.start_worker()
    job = wait_for(b, job_id, finished, timeout=200)
    assert job.state == "succeeded", (job.error, b.log.read_text()[-3000:])
    assert job.execution_metadata["resumed_from"] == [{"phase": "predictor", "step": step, "epoch": 0}]
    with session_scope(b.settings) as session:
        version = model_crud.get_model(session, tenant_id=DEFAULT_TENANT, model_id=model_id_for(job_id))
        artifact_path, checksum = version.artifact_path, version.checksum
    assert artifact_path == f"s3://{bucket}/kronos/{job_id}/final"
    # The training states are deleted just after the finishing commit (deleting them before it would
    # lose them to a crash in between), so the test waits for that step instead of racing it.
    deadline = time.monotonic() + 60
    while True:
        fs.invalidate_cache()
        keys = {k.split(f"{job_id}/", 1)[1] for k in fs.find(f"{bucket}/kronos/{job_id}")}
        if all(k.startswith("final/") for k in keys) or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    assert {"final/kronos-artifact.json", "final/model/model.safetensors", "final/tokenizer/model.safetensors"} <= keys
    assert all(k.startswith("final/") for k in keys), keys
    assert not fs.exists(state_key)  # training states are dropped once the model is registered
    assert not artifacts_dir(b.settings, job_id).exists()
    b.stop_worker()

    # --- host C forecasts with it: fetched once into its own cache, verified ---------------------------
    assert not c.settings.effective_model_cache_dir.exists()
    c.start_worker()
    forecast_id = submit(c, sample_bars(1, 60, seed=2), model=model_id_for(job_id), lookback=24, quantiles=None)
    forecast = wait_for(c, forecast_id, finished, timeout=120)
    assert forecast.state == "succeeded", (forecast.error, c.log.read_text()[-3000:])
    assert forecast.execution_metadata["model_source"] == "finetuned"
    assert forecast.execution_metadata["model_checksum"] == checksum
    assert (c.settings.effective_model_cache_dir / checksum / MANIFEST_NAME).is_file()

    # --- a registered model whose object is gone: a job error naming it, the worker lives on -----------
    with session_scope(c.settings) as session:
        model_crud.register_model(session, model_id="ft-missing", tenant_id=DEFAULT_TENANT, kind="finetuned",
                                  max_context=64, artifact_path=f"s3://{bucket}/kronos/nothing-here/final",
                                  checksum="f" * 64)
    missing_id = submit(c, sample_bars(1, 60, seed=2), model="ft-missing", lookback=24, quantiles=None)
    missing = wait_for(c, missing_id, finished, timeout=120)
    assert missing.state == "failed" and missing.error["code"] == "artifact_unavailable", missing.error
    assert "model 'ft-missing'" in missing.error["message"] and "missing from the artifact store" in missing.error["message"]
    assert c.proc.poll() is None
    for log in (a.log, b.log, c.log):
        assert AWS_ENV["AWS_SECRET_ACCESS_KEY"] not in log.read_text()
