"""The model table: published names, random weights, local directories, fine-tuned ids."""

from __future__ import annotations

import pytest

from kronos_jobs.errors import InvalidRequest
from kronos_jobs.registry import PUBLISHED_MODELS, RANDOM_WEIGHTS_LABEL, resolve_model
from tests.jobs.conftest import TINY_MAX_CONTEXT, tiny_checkpoint  # noqa: F401 (fixture)


@pytest.mark.parametrize(
    "name, repo, tokenizer, context",
    [
        ("kronos-mini", "NeoQuasar/Kronos-mini", "NeoQuasar/Kronos-Tokenizer-2k", 2048),
        ("kronos-small", "NeoQuasar/Kronos-small", "NeoQuasar/Kronos-Tokenizer-base", 512),
        ("kronos-base", "NeoQuasar/Kronos-base", "NeoQuasar/Kronos-Tokenizer-base", 512),
    ],
)
def test_published_models_pair_model_and_tokenizer(name, repo, tokenizer, context):
    spec = resolve_model(name)
    assert (spec.source, spec.model_path, spec.tokenizer_path, spec.max_context) == ("hub", repo, tokenizer, context)


def test_pinned_revisions_from_the_spec():
    small = resolve_model("kronos-small")
    assert small.model_revision == "901c26c1332695a2a8f243eb2f37243a37bea320"
    assert small.tokenizer_revision == "0e0117387f39004a9016484a186a908917e22426"
    assert PUBLISHED_MODELS["kronos-mini"].model_revision is None  # main until verified


def test_random_weights_are_labelled():
    spec = resolve_model("random:mini")
    assert spec.source == "random" and spec.label == RANDOM_WEIGHTS_LABEL and spec.max_context == 2048
    assert spec.metadata()["label"] == RANDOM_WEIGHTS_LABEL
    with pytest.raises(InvalidRequest) as caught:
        resolve_model("random:huge")
    assert caught.value.field == "model"


def test_local_directory(tiny_checkpoint, tmp_path):
    spec = resolve_model(str(tiny_checkpoint))
    assert spec.source == "local" and spec.max_context == TINY_MAX_CONTEXT
    assert spec.model_path.endswith("/model") and spec.tokenizer_path.endswith("/tokenizer")
    with pytest.raises(InvalidRequest, match="lacks a checkpoint"):
        resolve_model(str(tmp_path))


@pytest.mark.parametrize("name", ["kronos-large", "", "NeoQuasar/Kronos-small"])
def test_unknown_names_list_the_choices(name):
    with pytest.raises(InvalidRequest) as caught:
        resolve_model(name)
    assert caught.value.details[0]["field"] == "model"
    assert "kronos-small" in caught.value.message and "random:small" in caught.value.message


def test_finetuned_ids_come_from_the_models_table(session, tiny_checkpoint):
    from kronos_jobs.crud import models as model_crud

    model_crud.register_model(session, model_id="ft-test", tenant_id="default", kind="finetuned", max_context=32,
                              base_model="kronos-small", artifact_path=str(tiny_checkpoint), checksum="abc")
    session.commit()
    spec = resolve_model("ft-test", session)
    assert (spec.source, spec.max_context, spec.checksum) == ("finetuned", 32, "abc")
    with pytest.raises(InvalidRequest):
        resolve_model("ft-test", session, tenant_id="someone-else")
