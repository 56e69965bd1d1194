"""Models a forecast can name: the published checkpoints and the tenant's fine-tuned versions."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from api.deps import CallerDep, SessionDep, SettingsDep
from api.schemas import ErrorResponse, ModelPublic, ModelsPublic
from kronos_jobs.core.errors import InvalidTransition
from kronos_jobs.crud import models as model_crud
from kronos_jobs.jobs.registry import (
    PUBLISHED_MODELS,
    RANDOM_MODELS,
    RANDOM_WEIGHTS_LABEL,
    PublishedModel,
    from_random_weights,
    local_model_names,
    random_spec,
    resolve_model,
)

router = APIRouter(prefix="/v1/models", tags=["models"])


def _published(name: str, spec: PublishedModel) -> ModelPublic:
    # The registry is the one home of published models; the models table holds fine-tuned ones only.
    return ModelPublic(
        id=name, kind="published", model_repo=spec.model_repo, model_revision=spec.model_revision,
        tokenizer_repo=spec.tokenizer_repo, tokenizer_revision=spec.tokenizer_revision, max_context=spec.max_context,
        hyperparameters={"size": spec.size, "params": spec.params},
    )


def _random(name: str) -> ModelPublic:
    spec = random_spec(name)
    return ModelPublic(id=name, kind="random", label=RANDOM_WEIGHTS_LABEL, max_context=spec.max_context,
                       hyperparameters={"size": spec.size})


def _local(name: str, model_dirs) -> ModelPublic:
    spec = resolve_model(name, model_dirs=model_dirs)
    return ModelPublic(id=name, kind="local", model_repo=spec.model_path, tokenizer_repo=spec.tokenizer_path,
                       max_context=spec.max_context)


def _stored(row, session, tenant_id: str) -> ModelPublic:
    public = ModelPublic.from_row(row)
    if from_random_weights(row, session, tenant_id):
        public.label = RANDOM_WEIGHTS_LABEL
    return public


@router.get("", response_model=ModelsPublic)
def list_models(session: SessionDep, caller: CallerDep, settings: SettingsDep) -> ModelsPublic:
    """List every name a job may use: published, random:*, local checkpoint directories, fine-tuned."""
    published = [_published(name, spec) for name, spec in PUBLISHED_MODELS.items()]
    random = [_random(name) for name in RANDOM_MODELS]
    local = [_local(name, settings.effective_model_dirs) for name in local_model_names(settings.effective_model_dirs)]
    stored = [_stored(row, session, caller.tenant_id)
              for row in model_crud.list_models(session, tenant_id=caller.tenant_id)]
    return ModelsPublic(data=published + random + local + stored)


@router.get("/{model_id}", response_model=ModelPublic, responses={404: {"model": ErrorResponse}})
def read_model(model_id: Annotated[str, Path(max_length=128)], session: SessionDep, caller: CallerDep) -> ModelPublic:
    """Read one model."""
    if model_id in PUBLISHED_MODELS:
        return _published(model_id, PUBLISHED_MODELS[model_id])
    if model_id in RANDOM_MODELS:
        return _random(model_id)
    return _stored(model_crud.get_model(session, tenant_id=caller.tenant_id, model_id=model_id), session,
                   caller.tenant_id)


@router.delete("/{model_id}", response_model=ModelPublic, responses={404: {"model": ErrorResponse}, 409: {"model": ErrorResponse}})
def retire_model(model_id: Annotated[str, Path(max_length=128)], session: SessionDep, caller: CallerDep) -> ModelPublic:
    """Retire a fine-tuned model: new jobs cannot name it; its jobs and files stay."""
    if model_id in PUBLISHED_MODELS:
        raise InvalidTransition(f"model {model_id!r} is published and cannot be retired",
                                details=[{"field": "model_id", "message": "published"}])
    return ModelPublic.from_row(model_crud.retire_model(session, tenant_id=caller.tenant_id, model_id=model_id))
