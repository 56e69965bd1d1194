"""Models a forecast can name: the published checkpoints and the tenant's fine-tuned versions."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from api.deps import CallerDep, SessionDep
from api.schemas import ErrorResponse, ModelPublic, ModelsPublic
from kronos_jobs.core.errors import InvalidTransition
from kronos_jobs.crud import models as model_crud
from kronos_jobs.jobs.registry import PUBLISHED_MODELS, PublishedModel

router = APIRouter(prefix="/v1/models", tags=["models"])


def _published(name: str, spec: PublishedModel) -> ModelPublic:
    # The registry is the one home of published models; the models table holds fine-tuned ones only.
    return ModelPublic(
        id=name, kind="published", model_repo=spec.model_repo, model_revision=spec.model_revision,
        tokenizer_repo=spec.tokenizer_repo, tokenizer_revision=spec.tokenizer_revision, max_context=spec.max_context,
        hyperparameters={"size": spec.size, "params": spec.params},
    )


@router.get("", response_model=ModelsPublic)
def list_models(session: SessionDep, caller: CallerDep) -> ModelsPublic:
    """List published and fine-tuned models."""
    published = [_published(name, spec) for name, spec in PUBLISHED_MODELS.items()]
    stored = [ModelPublic.from_row(row) for row in model_crud.list_models(session, tenant_id=caller.tenant_id)]
    return ModelsPublic(data=published + stored)


@router.get("/{model_id}", response_model=ModelPublic, responses={404: {"model": ErrorResponse}})
def read_model(model_id: Annotated[str, Path(max_length=128)], session: SessionDep, caller: CallerDep) -> ModelPublic:
    """Read one model."""
    if model_id in PUBLISHED_MODELS:
        return _published(model_id, PUBLISHED_MODELS[model_id])
    return ModelPublic.from_row(model_crud.get_model(session, tenant_id=caller.tenant_id, model_id=model_id))


@router.delete("/{model_id}", response_model=ModelPublic, responses={404: {"model": ErrorResponse}, 409: {"model": ErrorResponse}})
def retire_model(model_id: Annotated[str, Path(max_length=128)], session: SessionDep, caller: CallerDep) -> ModelPublic:
    """Retire a fine-tuned model: new jobs cannot name it; its jobs and files stay."""
    if model_id in PUBLISHED_MODELS:
        raise InvalidTransition(f"model {model_id!r} is published and cannot be retired",
                                details=[{"field": "model_id", "message": "published"}])
    return ModelPublic.from_row(model_crud.retire_model(session, tenant_id=caller.tenant_id, model_id=model_id))
