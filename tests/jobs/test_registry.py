"""The model table: published names, random weights, local directories, fine-tuned ids."""

from __future__ import annotations

import shutil

import pytest

from kronos_jobs.core.errors import InvalidRequest
from kronos_jobs.jobs.registry import PUBLISHED_MODELS, RANDOM_WEIGHTS_LABEL, resolve_model
from kronos_jobs.testing.checkpoints import TINY_MAX_CONTEXT, save_tiny_checkpoint


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
    spec = resolve_model(str(tiny_checkpoint), model_dirs=[tiny_checkpoint.parent])
    assert spec.source == "local" and spec.max_context == TINY_MAX_CONTEXT
    assert spec.model_path.endswith("/model") and spec.tokenizer_path.endswith("/tokenizer")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InvalidRequest, match="lacks a checkpoint"):
        resolve_model(str(tmp_path / "empty"), model_dirs=[tmp_path])


@pytest.fixture
def model_root(tmp_path):
    """A models root holding `tiny/`, next to a directory outside it that also holds a checkpoint."""
    root = tmp_path / "models"
    save_tiny_checkpoint(root / "tiny")
    shutil.copytree(root / "tiny", tmp_path / "outside")
    return root


def test_names_relative_to_a_root_and_absolute_inside_it(model_root, tmp_path):
    relative = resolve_model("tiny", model_dirs=[tmp_path / "elsewhere", model_root])
    absolute = resolve_model(str(model_root / "tiny"), model_dirs=[model_root])
    assert relative.source == absolute.source == "local"
    assert relative.model_path == absolute.model_path == str((model_root / "tiny" / "model").resolve())
    assert relative.name == "tiny"  # the job keeps the name it was given
    inner = resolve_model("sub/../tiny", model_dirs=[model_root])  # `..` that stays inside is fine
    assert inner.model_path == relative.model_path


def test_symlinked_root_is_followed(model_root, tmp_path):
    (tmp_path / "link-to-models").symlink_to(model_root)
    spec = resolve_model("tiny", model_dirs=[tmp_path / "link-to-models"])
    assert spec.model_path == str((model_root / "tiny" / "model").resolve())


def escapes(model_root, tmp_path):
    (model_root / "escape").symlink_to(tmp_path / "outside")
    return ["../outside", "tiny/../../outside", str(tmp_path / "outside"), str(model_root / ".." / "outside"),
            "escape", str(model_root / "escape"), "/etc", "/", "..", "~"]


def test_paths_out_of_the_roots_are_unknown_models(model_root, tmp_path):
    for name in escapes(model_root, tmp_path):  # every one of them holds or is a real directory
        with pytest.raises(InvalidRequest) as caught:
            resolve_model(name, model_dirs=[model_root])
        assert caught.value.field == "model", name
        assert "KRONOS_MODEL_DIRS" in caught.value.message


def test_no_existence_oracle(model_root, tmp_path):
    """An existing path outside the roots and a missing one get the same message, name aside."""
    def message(name: str) -> str:
        with pytest.raises(InvalidRequest) as caught:
            resolve_model(name, model_dirs=[model_root])
        return caught.value.message.replace(repr(name), "<name>")

    assert message("/etc") == message("/no-such-dir-here") == message(str(tmp_path / "outside"))
    assert message("../outside") == message("../missing") == message("missing") == message("x\x00y")


def test_without_roots_no_local_directory_is_accepted(tiny_checkpoint):
    with pytest.raises(InvalidRequest) as caught:
        resolve_model(str(tiny_checkpoint))
    assert caught.value.field == "model"


def test_outside_paths_reach_the_models_table_as_ids_only(session, model_root, tmp_path):
    """With a session, an outside path is looked up as a registered id: the same message again."""
    for name in ("/etc", "/no-such-dir-here", str(tmp_path / "outside")):
        with pytest.raises(InvalidRequest) as caught:
            resolve_model(name, session, model_dirs=[model_root])
        assert "KRONOS_MODEL_DIRS" in caught.value.message and caught.value.field == "model"


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
