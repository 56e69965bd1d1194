"""GET /v1/models and /v1/models/{id}."""

from __future__ import annotations

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from kronos_jobs.core.names import DEFAULT_TENANT
from kronos_jobs.crud import models as model_crud
from kronos_jobs.jobs.registry import PUBLISHED_MODELS


def test_list_models_has_published_and_finetuned(client: TestClient, db: Session) -> None:
    model_crud.register_model(db, model_id="ft-abc", tenant_id=DEFAULT_TENANT, kind="finetuned", max_context=512,
                              base_model="kronos-small", artifact_path="/tmp/ft-abc", checksum="0" * 64)
    db.commit()
    listed = client.get("/v1/models").json()["data"]
    assert [m["id"] for m in listed] == [*PUBLISHED_MODELS, "ft-abc"]  # registry order, then the tenant's rows
    models = {m["id"]: m for m in listed}
    assert models["kronos-mini"]["hyperparameters"] == {"size": "mini", "params": "4.1M"}
    assert models["kronos-small"]["model_repo"] == "NeoQuasar/Kronos-small"
    assert models["kronos-small"]["max_context"] == 512
    assert models["ft-abc"]["kind"] == "finetuned" and models["ft-abc"]["base_model"] == "kronos-small"


def test_read_model(client: TestClient) -> None:
    assert client.get("/v1/models/kronos-mini").json()["tokenizer_repo"] == "NeoQuasar/Kronos-Tokenizer-2k"
    missing = client.get("/v1/models/kronos-huge")
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "not_found"
