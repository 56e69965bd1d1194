"""The model registry table: fine-tuned versions, each visible only to the tenant that made it.

Published checkpoints are not stored here: their one home is `kronos_jobs/jobs/registry.py`
(`PUBLISHED_MODELS`), which `GET /v1/models` lists ahead of these rows.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session

from kronos_jobs.core.errors import Conflict, NotFound
from kronos_jobs.db.models import ModelVersion, utcnow

logger = logging.getLogger(__name__)

FINETUNED = "finetuned"  # ModelVersion.kind of a fine-tune's output


def list_models(session: Session, *, tenant_id: str, include_retired: bool = False) -> list[ModelVersion]:
    """The tenant's models, by creation time."""
    query = select(ModelVersion).where(ModelVersion.tenant_id == tenant_id)
    if not include_retired:
        query = query.where(ModelVersion.retired_at.is_(None))
    query = query.order_by(ModelVersion.created_at, ModelVersion.id)
    return list(session.scalars(query))


def get_model(session: Session, *, tenant_id: str, model_id: str) -> ModelVersion:
    """The model (retired ones included, so old jobs still resolve); NotFound otherwise."""
    model = session.scalar(select(ModelVersion).where(ModelVersion.id == model_id, ModelVersion.tenant_id == tenant_id))
    if model is None:
        raise NotFound(f"no model {model_id!r}", details=[{"field": "model", "message": "not found"}])
    return model


def register_model(
    session: Session,
    *,
    model_id: str,
    tenant_id: str,
    kind: str,
    max_context: int,
    base_model: str | None = None,
    model_repo: str | None = None,
    model_revision: str | None = None,
    tokenizer_repo: str | None = None,
    tokenizer_revision: str | None = None,
    artifact_path: str | None = None,
    checksum: str | None = None,
    job_id: str | None = None,
    data_summary: dict[str, Any] | None = None,
    hyperparameters: dict[str, Any] | None = None,
    metrics: dict[str, Any] | None = None,
) -> ModelVersion:
    """Add a model version; Conflict if the id is taken."""
    if session.get(ModelVersion, model_id) is not None:
        raise Conflict(f"model id {model_id!r} already exists", details=[{"field": "model_id", "message": "taken"}])
    model = ModelVersion(
        id=model_id, tenant_id=tenant_id, kind=kind, max_context=max_context, base_model=base_model,
        model_repo=model_repo, model_revision=model_revision, tokenizer_repo=tokenizer_repo,
        tokenizer_revision=tokenizer_revision, artifact_path=artifact_path, checksum=checksum, job_id=job_id,
        data_summary=data_summary or {}, hyperparameters=hyperparameters or {}, metrics=metrics or {},
        created_at=utcnow(),
    )
    session.add(model)
    session.flush()
    logger.info("model %s registered (%s, tenant %s)", model_id, kind, tenant_id)
    return model


def retire_model(session: Session, *, tenant_id: str, model_id: str) -> ModelVersion:
    """Hide the tenant's model from listings and new jobs (published models have no row to retire)."""
    model = get_model(session, tenant_id=tenant_id, model_id=model_id)
    if model.retired_at is None:
        model.retired_at = utcnow()
        session.flush()
    return model
