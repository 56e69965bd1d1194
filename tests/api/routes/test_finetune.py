"""POST /v1/jobs/finetune (upload and series store), its 4xx catalogue, and DELETE /v1/models/{id}."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from kronos_jobs.cli.sample_data import sample_bars
from kronos_jobs.core.names import DEFAULT_TENANT
from kronos_jobs.crud import models as model_crud
from kronos_jobs.crud import workers as worker_crud
from kronos_jobs.testing.checkpoints import save_tiny_checkpoint

PARAMS = {"lookback": 24, "predict_window": 4, "epochs": 1, "batch_size": 8}


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    return str(save_tiny_checkpoint(tmp_path_factory.mktemp("models") / "tiny-ft-api"))


@pytest.fixture
def settings(settings, checkpoint):
    """The root `settings` with the checkpoint's folder as the one root of KRONOS_MODEL_DIRS."""
    return settings.model_copy(update={"model_dirs": [Path(checkpoint).parent]})


@pytest.fixture(scope="module")
def csv_bytes() -> bytes:
    return sample_bars(2, 300).to_csv(index=False).encode()


def post(client: TestClient, request: dict, data: bytes, filename: str = "bars.csv"):
    return client.post("/v1/jobs/finetune", files={"file": (filename, data, "application/octet-stream")},
                       data={"request": json.dumps(request)})


def test_upload_is_queued_on_the_gpu_queue_with_a_warning(client, checkpoint, csv_bytes):
    response = post(client, {"model": checkpoint, **PARAMS}, csv_bytes)
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["kind"] == "finetune" and job["state"] == "queued" and job["queue"] == "finetune.gpu"
    assert job["routing_reason"].startswith("auto: fine-tunes go to the GPU queue")
    assert job["warnings"] == ["no live worker consumes finetune.gpu; the job stays queued until one starts "
                               "(kronos-jobs worker --pool gpu)"]
    assert response.headers["Location"] == f"/v1/jobs/{job['id']}"
    params = job["params"]
    assert params["train"] == "both" and params["tokenizer_learning_rate"] == 2e-4  # spec §6 defaults
    assert params["data_summary"]["n_symbols"] == 2 and params["source"] == "csv"
    windows = params["data_summary"]["train_windows"]
    assert job["progress"]["total"] == 2 * -(-windows // 8)  # two phases of one epoch, batches of 8
    assert client.get(f"/v1/jobs/{job['id']}").json()["kind"] == "finetune"


def test_cpu_only_when_asked_and_no_warning_with_a_live_worker(client, db: Session, checkpoint):
    worker_crud.register_worker(db, worker_id="cpu@h", hostname="h", pid=1, pool="cpu",
                                queues=["forecast.cpu", "finetune.cpu"], concurrency=1, torch_threads=1,
                                device_requested="cpu", device_resolved="cpu", device_name="cpu", device_warning=None,
                                device_info={})
    db.commit()
    parquet = io.BytesIO()
    sample_bars(1, 300).to_parquet(parquet)
    job = post(client, {"model": checkpoint, "device": "cpu", **PARAMS}, parquet.getvalue(), "bars.parquet").json()
    assert job["queue"] == "finetune.cpu" and job["warnings"] == [] and job["params"]["source"] == "parquet"
    # auto never falls back to the CPU queue for training, even with only a CPU worker alive
    assert post(client, {"model": checkpoint, **PARAMS}, parquet.getvalue(), "bars.parquet").json()["queue"] == "finetune.gpu"


def test_series_store_symbols(client, db: Session, checkpoint):
    from kronos_jobs.crud import series as series_crud

    bars = sample_bars(2, 300)
    series_crud.upsert_bars(db, tenant_id=DEFAULT_TENANT, bars=bars, freqs={s: "5min" for s in bars.symbol.unique()})
    db.commit()
    body = {"model": checkpoint, **PARAMS, "data": {"symbols": ["SIM000.XS", "SIM001.XS"]}}
    response = client.post("/v1/jobs/finetune", json=body)
    assert response.status_code == 202, response.text
    assert response.json()["params"]["data_summary"]["n_bars"] == 600 and response.json()["params"]["source"] == "store"
    end = bars.timestamp.iloc[20].isoformat()
    short = client.post("/v1/jobs/finetune", json={**body, "data": {"symbols": ["SIM000.XS"], "end": end}})
    assert short.status_code == 422 and short.json()["error"]["details"][0]["field"] == "file"


SMALL = sample_bars(2, 30).to_csv(index=False).encode()


@pytest.mark.parametrize(("request_", "data", "field"), [
    ({"model": "kronos-huge"}, None, "model"),
    ({"epochs": 0}, None, "request.epochs"),
    ({"batch_size": -1}, None, "request.batch_size"),
    ({"train": "everything"}, None, "request.train"),
    ({"device": "tpu"}, None, "request.device"),
    ({"validation_split": 0.9}, None, "request.validation_split"),
    ({"predictor_learning_rate": 0}, None, "request.predictor_learning_rate"),
    ({"adam_beta1": 1.5}, None, "request.adam_beta1"),
    ({"max_seconds": 0}, None, "request.max_seconds"),
    ({"max_steps": 0}, None, "request.max_steps"),
    ({"max_seconds": 10**6}, None, "max_seconds"),  # beyond KRONOS_FINETUNE_SOFT_TIME_LIMIT
    ({"learning_rate": 1e-3}, None, "request.learning_rate"),  # a typo is an error, not ignored
    ({"batch_size": 2, "accumulation_steps": 4}, None, "accumulation_steps"),
    ({"lookback": 10, "predict_window": 70}, None, "predict_window"),  # a horizon beyond the tiny model's context 64
    ({}, SMALL, "file"),  # too little data for one window
    ({"validation_split": 0.05}, sample_bars(1, 300).to_csv(index=False).encode(), "validation_split"),
    ({}, b"", "file"),
    ({}, b"symbol,timestamp,open\nA,2024-01-01,1\n", "file column high"),
])
def test_bad_requests_name_the_field(client, checkpoint, csv_bytes, request_, data, field):
    response = post(client, {"model": checkpoint, **PARAMS, **request_}, csv_bytes if data is None else data)
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["error"]["details"][0]["field"] == field, response.json()


def test_other_bad_bodies(client, checkpoint):
    assert client.post("/v1/jobs/finetune", json={"model": checkpoint}).json()["error"]["details"][0]["field"] == "data"
    missing = client.post("/v1/jobs/finetune", json={"model": checkpoint, "data": {"symbols": ["NOPE"]}})
    assert missing.status_code == 422 and missing.json()["error"]["details"][0]["field"] == "data.symbols[0]"
    no_file = client.post("/v1/jobs/finetune", files={"other": ("x", b"1")}, data={"request": "{}"})
    assert no_file.status_code == 422 and no_file.json()["error"]["details"][0]["field"] == "file"
    assert client.post("/v1/jobs/finetune", content=b"x", headers={"Content-Type": "text/plain"}).status_code == 415


def test_result_of_a_finetune_points_at_its_model(client, db: Session, checkpoint, csv_bytes):
    from sqlalchemy import update

    from kronos_jobs.db.models import Job

    job_id = post(client, {"model": checkpoint, **PARAMS}, csv_bytes).json()["id"]
    queued = client.get(f"/v1/jobs/{job_id}/result")
    assert queued.status_code == 409 and queued.json()["error"]["details"][0]["field"] == "kind"
    assert "GET /v1/jobs/" in queued.json()["error"]["message"]
    db.execute(update(Job).where(Job.id == job_id).values(
        state="succeeded", execution_metadata={"finetuned_model_id": "ft-abc"}))
    db.commit()
    for fmt in ("json", "csv"):
        done = client.get(f"/v1/jobs/{job_id}/result?format={fmt}")
        assert done.status_code == 409, done.text
        assert "its trained model is ft-abc (GET /v1/models/ft-abc)" in done.json()["error"]["message"]


def test_retire_a_finetuned_model(client, db: Session):
    model_crud.register_model(db, model_id="ft-x", tenant_id=DEFAULT_TENANT, kind="finetuned", max_context=64,
                              base_model="kronos-small", artifact_path="/nowhere", checksum="0" * 64)
    db.commit()
    retired = client.delete("/v1/models/ft-x")
    assert retired.status_code == 200 and retired.json()["retired_at"] is not None
    assert "ft-x" not in {m["id"] for m in client.get("/v1/models").json()["data"]}
    assert client.get("/v1/models/ft-x").json()["retired_at"] is not None  # still readable
    assert client.delete("/v1/models/kronos-small").status_code == 409
    assert client.delete("/v1/models/ft-none").status_code == 404


def test_separate_checkpoint_directories_and_long_windows(client, checkpoint, csv_bytes):
    """Upstream's layout (one directory per half) and its windows beyond the context, with a warning."""
    base = Path(checkpoint)
    (base / "model" / "kronos-jobs.json").write_text('{"max_context": 64}')  # the predictor's context length
    request = {"model": str(base / "model"), "tokenizer": str(base / "tokenizer"), "device": "cpu",
               **PARAMS, "lookback": 60, "predict_window": 10, "validation_split": 0.3}
    response = post(client, request, csv_bytes)
    assert response.status_code == 202, response.text
    job = response.json()
    assert job["params"]["tokenizer"] == str(base / "tokenizer")
    assert any("70 tokens per training window exceeds the model's context length 64" in w for w in job["warnings"])
    outside = post(client, {**request, "tokenizer": "/etc"}, csv_bytes)
    assert outside.status_code == 422 and outside.json()["error"]["details"][0]["field"] == "tokenizer"


def test_a_finetune_is_interactive_and_may_set_its_priority(client, checkpoint, csv_bytes):
    default = post(client, {"model": checkpoint, **PARAMS}, csv_bytes).json()
    assert (default["priority"], default["workload"]) == (6, "interactive")
    chosen = post(client, {"model": checkpoint, "priority": 2, **PARAMS}, csv_bytes)
    assert chosen.status_code == 202, chosen.text
    assert client.get(f"/v1/jobs/{chosen.json()['id']}").json()["priority"] == 2
    assert "priority" not in chosen.json()["params"]
    wrong = post(client, {"model": checkpoint, "priority": 10, **PARAMS}, csv_bytes)
    assert wrong.status_code == 422 and [d["field"] for d in wrong.json()["error"]["details"]] == ["request.priority"]
