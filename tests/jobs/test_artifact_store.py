"""The artifact store against a real S3 endpoint (moto's standalone server, spoken to over HTTP):
models fetched once per checksum and verified, missing or corrupt objects as errors naming the
model, a fine-tune's state handed from one host's folder to another's, credentials never logged."""

from __future__ import annotations

import logging

import pytest

from kronos_jobs.cli.sample_data import sample_bars
from kronos_jobs.core.errors import ArtifactUnavailable
from kronos_jobs.core.names import DEFAULT_TENANT, JobState
from kronos_jobs.crud import models as model_crud
from kronos_jobs.db.session import session_scope
from kronos_jobs.jobs.artifact_store import (
    MANIFEST_NAME,
    ArtifactStore,
    FinetuneArtifacts,
    fetch_model,
    file_sha256,
    is_remote_url,
    write_manifest,
)
from kronos_jobs.jobs.finetune import artifacts_dir, model_id_for, run_finetune_job
from kronos_jobs.jobs.forecast import run_forecast_job
from kronos_jobs.testing.checkpoints import save_tiny_checkpoint
from kronos_jobs.testing.factories import load_job, submit_finetune_job, submit_forecast_job, worker_identity
from kronos_jobs.testing.object_store import AWS_ENV, S3Server
from model.finetune import TRAINING_STATE_NAME


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    server = S3Server(tmp_path_factory.mktemp("moto") / "moto.log")
    yield server
    server.stop()


@pytest.fixture
def aws_env(monkeypatch):
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)


@pytest.fixture
def s3_settings(settings, s3, aws_env):
    return settings.model_copy(update={"artifacts_url": f"s3://{s3.bucket()}/artifacts", "s3_endpoint_url": s3.endpoint_url})


def upload_model(tmp_path, settings, name="ft-x"):
    """A tiny model pair with its manifest, uploaded as a fine-tune would; (url, checksum)."""
    final = save_tiny_checkpoint(tmp_path / "upload" / name)
    write_manifest(final)
    url = f"{settings.artifacts_url}/{name}/final"
    ArtifactStore(url, endpoint_url=settings.s3_endpoint_url).upload_tree(final, last=(MANIFEST_NAME,))
    return url, file_sha256(final / "model" / "model.safetensors")


def test_urls_are_remote_only_with_an_object_store_protocol(tmp_path):
    assert is_remote_url("s3://bucket/prefix") and is_remote_url("gs://b/p")
    assert not is_remote_url(str(tmp_path)) and not is_remote_url(f"file://{tmp_path}") and not is_remote_url(None)


def test_a_model_is_fetched_once_verified_and_then_reused(tmp_path, s3, s3_settings):
    url, checksum = upload_model(tmp_path, s3_settings)
    folder = fetch_model(s3_settings, name="ft-x", url=url, checksum=checksum)
    assert folder == s3_settings.effective_model_cache_dir / checksum
    assert file_sha256(folder / "model" / "model.safetensors") == checksum
    assert (folder / "tokenizer" / "config.json").is_file() and (folder / MANIFEST_NAME).is_file()
    assert [p.name for p in folder.parent.iterdir()] == [checksum]  # no temp folder left behind

    ArtifactStore(url, endpoint_url=s3.endpoint_url).remove()  # the store forgets it: the cache still serves
    assert fetch_model(s3_settings, name="ft-x", url=url, checksum=checksum) == folder


def test_a_missing_object_is_a_clear_error_naming_the_model(s3_settings):
    with pytest.raises(ArtifactUnavailable, match=r"model 'ft-gone'.*is missing from the artifact store") as err:
        fetch_model(s3_settings, name="ft-gone", url=f"{s3_settings.artifacts_url}/nothing/final", checksum="0" * 64)
    assert err.value.code == "artifact_unavailable"


def test_a_corrupt_object_is_refused_and_nothing_is_cached(tmp_path, s3, s3_settings):
    url, checksum = upload_model(tmp_path, s3_settings)
    fs = s3.filesystem()
    key = url.removeprefix("s3://") + "/tokenizer/model.safetensors"
    fs.pipe_file(key, fs.cat_file(key)[:-8] + b"\0" * 8)  # same size, other bytes
    with pytest.raises(ArtifactUnavailable, match=r"model 'ft-x'.*tokenizer/model.safetensors is corrupt"):
        fetch_model(s3_settings, name="ft-x", url=url, checksum=checksum)
    assert list(s3_settings.effective_model_cache_dir.iterdir()) == []


def test_a_manifest_that_disagrees_with_the_registry_is_refused(tmp_path, s3_settings):
    url, _ = upload_model(tmp_path, s3_settings)
    with pytest.raises(ArtifactUnavailable, match="differs from the registered " + "1" * 64):
        fetch_model(s3_settings, name="ft-x", url=url, checksum="1" * 64)


def test_a_finetunes_state_moves_to_another_hosts_folder(tmp_path, s3_settings):
    host_a = s3_settings
    host_b = s3_settings.model_copy(update={"data_dir": tmp_path / "host-b"})
    a, b = FinetuneArtifacts(host_a, "job1"), FinetuneArtifacts(host_b, "job1")
    assert a.mirrored and a.work_dir != b.work_dir
    phase = a.work_dir / "predictor"
    (phase / "best_model").mkdir(parents=True)
    (phase / "best_model" / "config.json").write_text("{}")
    (phase / TRAINING_STATE_NAME).write_bytes(b"state-at-step-5")
    a.checkpointed(phase)
    (phase / TRAINING_STATE_NAME).write_bytes(b"state-at-step-10")
    a.checkpointed(phase)

    assert b.restore(["tokenizer", "predictor"]) == ["predictor"]
    assert (b.work_dir / "predictor" / TRAINING_STATE_NAME).read_bytes() == b"state-at-step-10"
    assert (b.work_dir / "predictor" / "best_model" / "config.json").read_text() == "{}"

    b.remove()  # a cancelled job: nothing left here or in the store
    assert not b.work_dir.exists() and FinetuneArtifacts(host_a, "job1").store.list_files() == []


def test_credentials_never_reach_logs_or_errors(tmp_path, s3_settings, caplog):
    caplog.set_level(logging.DEBUG)
    url, checksum = upload_model(tmp_path, s3_settings)
    fetch_model(s3_settings, name="ft-x", url=url, checksum=checksum)
    with pytest.raises(ArtifactUnavailable) as err:
        fetch_model(s3_settings, name="ft-y", url=f"{s3_settings.artifacts_url}/none", checksum="2" * 64)
    for secret in (AWS_ENV["AWS_SECRET_ACCESS_KEY"], AWS_ENV["AWS_ACCESS_KEY_ID"]):
        assert secret not in caplog.text and secret not in str(err.value)


def test_a_finetune_in_an_object_store_serves_a_forecast_from_another_data_dir(
        job_settings, tiny_checkpoint, bars, s3, aws_env, tmp_path):
    store = {"artifacts_url": f"s3://{s3.bucket()}/kronos", "s3_endpoint_url": s3.endpoint_url}
    trainer = job_settings.model_copy(update=store)
    job_id, _ = submit_finetune_job(trainer, tiny_checkpoint, bars)
    assert run_finetune_job(job_id, settings=trainer, identity=worker_identity(trainer)) is JobState.SUCCEEDED
    with session_scope(trainer) as session:
        version = model_crud.get_model(session, tenant_id=DEFAULT_TENANT, model_id=model_id_for(job_id))
        artifact_path, checksum = version.artifact_path, version.checksum
    assert artifact_path == f"{store['artifacts_url']}/{job_id}/final"
    assert not artifacts_dir(trainer, job_id).exists()  # the local working copy is gone...
    assert (trainer.effective_model_cache_dir / checksum / MANIFEST_NAME).is_file()  # ...kept as this host's cache
    keys = ArtifactStore(f"{store['artifacts_url']}/{job_id}", endpoint_url=s3.endpoint_url).list_files()
    assert all(k.startswith("final/") for k in keys) and "final/model/model.safetensors" in keys

    # Same database, a different data dir: nothing on disk is shared with the trainer.
    other = job_settings.model_copy(update={**store, "data_dir": tmp_path / "other-host"})
    forecast_id = submit_forecast_job(other, tiny_checkpoint, sample_bars(1, 60, seed=2), model=model_id_for(job_id),
                                      lookback=24, pred_len=4)
    assert run_forecast_job(forecast_id, settings=other, identity=worker_identity(other)) is JobState.SUCCEEDED
    job = load_job(other, forecast_id)
    assert job.execution_metadata["model_source"] == "finetuned", job.error
    assert (other.effective_model_cache_dir / checksum / "model" / "model.safetensors").is_file()
