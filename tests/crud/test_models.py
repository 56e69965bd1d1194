"""crud.models: fine-tuned models per tenant, retirement (published ones live in the registry)."""

from __future__ import annotations

import pytest

from kronos_jobs.core.errors import Conflict, NotFound
from kronos_jobs.crud import models as model_crud
from kronos_jobs.testing.factories import make_job


def test_finetuned_models_are_tenant_scoped(session):
    job = make_job(session, tenant_id="acme", kind="finetune")
    model_crud.register_model(session, model_id="ft-1", tenant_id="acme", kind=model_crud.FINETUNED,
                              max_context=512, base_model="kronos-small", artifact_path="/a/ft-1", checksum="c" * 64,
                              job_id=job.id, metrics={"val_loss": 1.5})
    session.commit()
    assert [m.id for m in model_crud.list_models(session, tenant_id="acme")] == ["ft-1"]
    assert [m.id for m in model_crud.list_models(session, tenant_id="other")] == []
    assert model_crud.get_model(session, tenant_id="acme", model_id="ft-1").metrics == {"val_loss": 1.5}
    with pytest.raises(NotFound):
        model_crud.get_model(session, tenant_id="other", model_id="ft-1")


def test_duplicate_id_conflicts(session):
    model_crud.register_model(session, model_id="ft-1", tenant_id="acme", kind="finetuned", max_context=512)
    with pytest.raises(Conflict):
        model_crud.register_model(session, model_id="ft-1", tenant_id="other", kind="finetuned", max_context=512)


def test_retire_hides_from_listing_but_still_resolves(session):
    model_crud.register_model(session, model_id="ft-1", tenant_id="acme", kind="finetuned", max_context=512)
    retired = model_crud.retire_model(session, tenant_id="acme", model_id="ft-1")
    session.commit()
    assert retired.retired_at is not None
    assert "ft-1" not in [m.id for m in model_crud.list_models(session, tenant_id="acme")]
    assert "ft-1" in [m.id for m in model_crud.list_models(session, tenant_id="acme", include_retired=True)]
    assert model_crud.get_model(session, tenant_id="acme", model_id="ft-1").retired_at is not None
    with pytest.raises(NotFound):  # published models have no row; the route refuses them first (409)
        model_crud.retire_model(session, tenant_id="acme", model_id="kronos-mini")
