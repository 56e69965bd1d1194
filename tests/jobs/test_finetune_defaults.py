"""A fine-tune's defaults are declared once, in `model.finetune.FinetuneConfig`. The job layer's
`FinetuneParams` writes the training-loop fields out again because the API imports it and must not
import torch (`model/` does); the API schema takes its defaults from `FinetuneParams`. These tests
keep every copy equal and check that the worker hands every shared field to the training loop."""

from __future__ import annotations

import dataclasses

from api.schemas import FinetuneParamsIn
from kronos_jobs.jobs.finetune_submit import FinetuneParams
from kronos_jobs.jobs.training import JOB_LEVEL_FIELDS, loop_config
from model.finetune import FinetuneConfig


def defaults(cls) -> dict:
    return {f.name: f.default for f in dataclasses.fields(cls) if f.default is not dataclasses.MISSING}


def test_job_defaults_are_the_training_loop_defaults():
    job, loop = defaults(FinetuneParams), defaults(FinetuneConfig)
    shared = sorted(set(job) & set(loop))
    assert {"amp", "log_interval", "checkpoint_every_steps", "epochs", "batch_size", "lookback"} <= set(shared)
    assert {k: job[k] for k in shared} == {k: loop[k] for k in shared}


def test_api_defaults_are_the_job_defaults():
    api = {name: field.default for name, field in FinetuneParamsIn.model_fields.items()}
    job = defaults(FinetuneParams)
    assert {k: api[k] for k in job if k != "model"} == {k: v for k, v in job.items() if k != "model"}


def another_value(value):
    """A valid value other than the default, so a field the worker forgot would show."""
    if isinstance(value, bool):
        return not value
    if value is None or isinstance(value, int):
        return (value or 1) + 1
    return value * 0.5


def test_the_worker_hands_every_shared_field_to_the_training_loop():
    job_fields = {f.name for f in dataclasses.fields(FinetuneParams)}
    changed = {f.name: another_value(f.default) for f in dataclasses.fields(FinetuneConfig)
               if f.name in job_fields and f.name not in JOB_LEVEL_FIELDS}
    assert len(changed) >= 15, sorted(changed)
    config = loop_config(FinetuneParams(model="random:mini", tokenizer_epochs=3, **changed), "tokenizer")
    assert {k: getattr(config, k) for k in changed} == changed
    assert config.epochs == 3
