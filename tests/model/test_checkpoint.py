"""save_pretrained / from_pretrained: layout, round trip, strictness, tolerated buffers, hub errors."""

from __future__ import annotations

import json
import os
import shutil
import socket

import pytest
import torch
from safetensors.torch import load_file, save_file

from model.checkpoint import (
    CheckpointError,
    CheckpointMismatchError,
    CheckpointNotFoundError,
    file_sha256,
)
from model.tokenizer import KronosTokenizer
from model.transformer import Kronos


@pytest.fixture
def ckpt(tmp_path, tiny_tokenizer_dir):
    """A writable copy of the tiny tokenizer checkpoint."""
    path = tmp_path / "tok"
    shutil.copytree(tiny_tokenizer_dir, path)
    return path


def edit_weights(path, fn):
    state = load_file(path / "model.safetensors")
    fn(state)
    save_file(state, path / "model.safetensors")


def edit_config(path, fn):
    cfg = json.loads((path / "config.json").read_text())
    fn(cfg)
    (path / "config.json").write_text(json.dumps(cfg))


@pytest.fixture
def no_network(monkeypatch):
    """Fail the test if anything tries to open a network connection."""

    def refuse(*args, **kwargs):
        raise AssertionError("network access attempted")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


# ---- layout and round trip ---------------------------------------------------------------------


def test_layout_written_by_save_pretrained(tiny_tokenizer_dir, tiny_tokenizer_config):
    assert sorted(os.listdir(tiny_tokenizer_dir)) == ["README.md", "config.json", "model.safetensors"]
    text = (tiny_tokenizer_dir / "config.json").read_text()
    cfg = json.loads(text)
    assert cfg == tiny_tokenizer_config and list(cfg) == sorted(cfg)  # 16 keys, sorted, no attn_impl
    assert text.startswith('{\n  "attn_dropout_p"')  # indent 2
    assert len(load_file(tiny_tokenizer_dir / "model.safetensors")) == 68
    assert "pytorch_model_hub_mixin" in (tiny_tokenizer_dir / "README.md").read_text()


@pytest.mark.parametrize("cls_name", ["tokenizer", "kronos"])
def test_round_trip_is_bit_identical(tmp_path, cls_name, tiny_tokenizer_config, tiny_model_config):
    cls, kwargs = {"tokenizer": (KronosTokenizer, tiny_tokenizer_config),
                   "kronos": (Kronos, tiny_model_config)}[cls_name]
    torch.manual_seed(7)
    original = cls(**kwargs)
    original.save_pretrained(tmp_path / "a")
    loaded = cls.from_pretrained(tmp_path / "a")
    assert loaded.config == original.config and not loaded.training
    a, b = original.state_dict(), loaded.state_dict()
    assert list(a) == list(b)
    for key in a:
        assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
    # Saving the loaded model again gives the same bytes.
    loaded.save_pretrained(tmp_path / "b")
    assert file_sha256(tmp_path / "a" / "model.safetensors") == file_sha256(tmp_path / "b" / "model.safetensors")
    assert not [n for n in os.listdir(tmp_path / "b") if n.endswith(".tmp")]  # temp files replaced


def test_provenance_recorded(tiny_tokenizer_dir):
    tok = KronosTokenizer.from_pretrained(tiny_tokenizer_dir)
    assert tok.name_or_path == str(tiny_tokenizer_dir)
    assert tok.checksum == file_sha256(tiny_tokenizer_dir / "model.safetensors") and len(tok.checksum) == 64
    assert tok.checkpoint_metadata() == {"name_or_path": str(tiny_tokenizer_dir), "revision": None,
                                         "commit_hash": None, "checksum": tok.checksum}


def test_config_overrides(tiny_tokenizer_dir):
    tok = KronosTokenizer.from_pretrained(tiny_tokenizer_dir, attn_impl="eager", beta=0.5)
    assert tok.config.attn_impl == "eager" and tok.config.beta == 0.5
    with pytest.raises(CheckpointMismatchError, match="bogus"):
        KronosTokenizer.from_pretrained(tiny_tokenizer_dir, bogus=1)


# ---- strictness ----------------------------------------------------------------------------------


def test_missing_parameter_is_an_error(ckpt):
    edit_weights(ckpt, lambda s: s.pop("decoder.1.ffn.w2.weight"))
    with pytest.raises(CheckpointMismatchError, match=r"decoder\.1\.ffn\.w2\.weight.*config"):
        KronosTokenizer.from_pretrained(ckpt)


def test_unexpected_parameter_is_an_error(ckpt):
    edit_weights(ckpt, lambda s: s.update({"encoder.2.norm1.weight": torch.ones(32)}))
    with pytest.raises(CheckpointMismatchError, match=r"unexpected keys: \['encoder\.2\.norm1\.weight'\]"):
        KronosTokenizer.from_pretrained(ckpt)


def test_wrong_layer_count_in_config_names_the_keys(ckpt):
    edit_config(ckpt, lambda c: c.update(n_enc_layers=4))
    with pytest.raises(CheckpointMismatchError, match=r"missing parameter keys: \['encoder\.2\."):
        KronosTokenizer.from_pretrained(ckpt)


@pytest.mark.parametrize("present", [True, False])
def test_derived_buffers_are_tolerated(ckpt, tiny_tokenizer_dir, present):
    reference = KronosTokenizer.from_pretrained(tiny_tokenizer_dir)

    def drop(state):
        for key in [k for k in state if k.endswith(("inv_freq", "bsq.basis", "bsq.group_basis"))]:
            if present:
                state[key] = state[key].clone()
            else:
                del state[key]

    edit_weights(ckpt, drop)
    loaded = KronosTokenizer.from_pretrained(ckpt)
    for key, value in reference.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value), key
    x = torch.randn(1, 5, 6)
    assert all(torch.equal(a, b) for a, b in zip(loaded.encode(x, half=True), reference.encode(x, half=True)))


def test_shape_mismatch_names_key_and_shapes(ckpt):
    edit_weights(ckpt, lambda s: s.update({"head.bias": torch.zeros(7)}))
    with pytest.raises(CheckpointMismatchError, match=r"head\.bias: checkpoint has \(7,\), model expects \(6,\)"):
        KronosTokenizer.from_pretrained(ckpt)


def test_unknown_config_key(ckpt):
    edit_config(ckpt, lambda c: c.update(n_layers=2))
    with pytest.raises(CheckpointMismatchError, match=r"unknown key\(s\) \['n_layers'\]"):
        KronosTokenizer.from_pretrained(ckpt)


def test_missing_config_key(ckpt):
    edit_config(ckpt, lambda c: c.pop("group_size"))
    with pytest.raises(CheckpointMismatchError, match=r"missing key\(s\) \['group_size'\]"):
        KronosTokenizer.from_pretrained(ckpt)


def test_kronos_config_is_not_a_tokenizer_config(tiny_model_dir):
    with pytest.raises(CheckpointMismatchError, match="unknown key"):
        KronosTokenizer.from_pretrained(tiny_model_dir)


# ---- files and hub -------------------------------------------------------------------------------


def test_pickle_only_checkpoint_is_refused(ckpt):
    os.rename(ckpt / "model.safetensors", ckpt / "pytorch_model.bin")
    with pytest.raises(CheckpointNotFoundError, match="pytorch_model.bin.*safetensors"):
        KronosTokenizer.from_pretrained(ckpt)


def test_missing_local_directory(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="does not exist"):
        KronosTokenizer.from_pretrained(str(tmp_path / "nope"))


@pytest.mark.parametrize("how", ["env", "argument"])
def test_offline_hub_error_is_clear(monkeypatch, tmp_path, no_network, how):
    if how == "env":
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        kwargs = {}
    else:
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
        kwargs = {"local_files_only": True}
    with pytest.raises(CheckpointNotFoundError) as info:
        Kronos.from_pretrained("NeoQuasar/Kronos-unreachable", revision="0123abc",
                               cache_dir=tmp_path / "hf-cache", **kwargs)
    message = str(info.value)
    assert isinstance(info.value, CheckpointError) and isinstance(info.value, OSError)
    for part in ("'NeoQuasar/Kronos-unreachable'", "'0123abc'", "HF_HUB_OFFLINE", "cache_dir",
                 str(tmp_path / "hf-cache"), "local directory"):
        assert part in message


COMMIT = "0123456789abcdef0123456789abcdef01234567"


@pytest.fixture
def hub_cache(tmp_path, tiny_tokenizer_dir):
    """A Hugging Face cache holding the tiny tokenizer as ``NeoQuasar/Kronos-Tiny`` at COMMIT."""
    repo = tmp_path / "hf-cache" / "models--NeoQuasar--Kronos-Tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    shutil.copytree(tiny_tokenizer_dir, repo / "snapshots" / COMMIT)
    return tmp_path / "hf-cache"


@pytest.mark.parametrize("revision", [None, COMMIT])
def test_hub_id_loads_from_cache_offline(monkeypatch, hub_cache, no_network, tiny_tokenizer_dir, revision):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    tok = KronosTokenizer.from_pretrained("NeoQuasar/Kronos-Tiny", revision=revision, cache_dir=hub_cache)
    assert tok.checkpoint_metadata() == {
        "name_or_path": "NeoQuasar/Kronos-Tiny", "revision": revision, "commit_hash": COMMIT,
        "checksum": file_sha256(tiny_tokenizer_dir / "model.safetensors")}


def test_invalid_hub_id(no_network, tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="neither an existing local directory nor a valid hub repo id"):
        KronosTokenizer.from_pretrained("bad repo id!!", cache_dir=tmp_path, local_files_only=True)
