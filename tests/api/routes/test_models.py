"""GET /v1/models and /v1/models/{id}."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from kronos_jobs.core.names import DEFAULT_TENANT
from kronos_jobs.crud import models as model_crud
from kronos_jobs.jobs.registry import PUBLISHED_MODELS, RANDOM_MODELS


def test_list_models_has_published_and_finetuned(client: TestClient, db: Session) -> None:
    model_crud.register_model(db, model_id="ft-abc", tenant_id=DEFAULT_TENANT, kind="finetuned", max_context=512,
                              base_model="kronos-small", artifact_path="/tmp/ft-abc", checksum="0" * 64)
    db.commit()
    listed = client.get("/v1/models").json()["data"]
    # registry order, the random architectures, then the tenant's rows (no local directories here)
    assert [m["id"] for m in listed] == [*PUBLISHED_MODELS, *RANDOM_MODELS, "ft-abc"]
    models = {m["id"]: m for m in listed}
    assert models["kronos-mini"]["hyperparameters"] == {"size": "mini", "params": "4.1M"}
    assert models["kronos-small"]["model_repo"] == "NeoQuasar/Kronos-small"
    assert models["kronos-small"]["max_context"] == 512
    assert models["ft-abc"]["kind"] == "finetuned" and models["ft-abc"]["base_model"] == "kronos-small"
    assert models["ft-abc"]["label"] is None and models["random:small"]["label"] == "random weights"


def test_finetunes_of_random_weights_say_so(client: TestClient, db: Session) -> None:
    for model_id, base in (("ft-r1", "random:mini"), ("ft-r2", "ft-r1"), ("ft-p", "kronos-small")):
        model_crud.register_model(db, model_id=model_id, tenant_id=DEFAULT_TENANT, kind="finetuned", max_context=64,
                                  base_model=base, artifact_path=f"/tmp/{model_id}", checksum="0" * 64)
    db.commit()
    models = {m["id"]: m for m in client.get("/v1/models").json()["data"]}
    assert models["ft-r1"]["label"] == models["ft-r2"]["label"] == "random weights"  # a fine-tune of a fine-tune too
    assert models["ft-p"]["label"] is None
    assert client.get("/v1/models/ft-r2").json()["label"] == "random weights"


def test_read_model(client: TestClient) -> None:
    assert client.get("/v1/models/kronos-mini").json()["tokenizer_repo"] == "NeoQuasar/Kronos-Tokenizer-2k"
    missing = client.get("/v1/models/kronos-huge")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
