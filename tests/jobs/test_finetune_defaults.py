"""The job's fine-tune defaults are spelled twice on purpose: `kronos_jobs.jobs.finetune_submit`
is imported by the API, which must not import torch, and `model.finetune` needs torch. This test
keeps the two copies of spec §6's defaults equal."""

from __future__ import annotations

import dataclasses

from kronos_jobs.jobs.finetune_submit import FinetuneParams
from model.finetune import FinetuneConfig


def test_job_defaults_match_the_training_loop_defaults():
    job = {f.name: f.default for f in dataclasses.fields(FinetuneParams) if f.default is not dataclasses.MISSING}
    loop = {f.name: f.default for f in dataclasses.fields(FinetuneConfig) if f.default is not dataclasses.MISSING}
    # Service choices that differ from the library on purpose: jobs checkpoint (resume after a
    # crash), use AMP whenever the worker is on CUDA, and report progress more often.
    service_choices = {"amp", "checkpoint_every_steps", "log_interval"}
    shared = sorted((set(job) & set(loop)) - service_choices)
    assert len(shared) >= 10, shared
    assert {k: job[k] for k in shared} == {k: loop[k] for k in shared}
