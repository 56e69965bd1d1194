"""Per-process predictor cache: LRU by (model, device, dtype), load time, clear hub errors."""

from __future__ import annotations

import pytest

from kronos_jobs.jobs import model_cache
from kronos_jobs.jobs.registry import resolve_model


@pytest.fixture(autouse=True)
def _empty_cache():
    model_cache.clear()
    yield
    model_cache.clear()


def test_hit_after_miss_and_lru_eviction(settings, tiny_checkpoint, tmp_path):
    from kronos_jobs.testing.checkpoints import save_tiny_checkpoint

    settings = settings.model_copy(update={"model_cache_size": 1})
    first = resolve_model(str(tiny_checkpoint), model_dirs=[tiny_checkpoint.parent])
    entry, cached = model_cache.get_predictor(first, "cpu", settings)
    assert not cached and entry.load_seconds > 0 and len(entry.model_checksum) == 64
    again, cached = model_cache.get_predictor(first, "cpu", settings)
    assert cached and again is entry

    other = resolve_model(str(save_tiny_checkpoint(tmp_path / "other", seed=8)), model_dirs=[tmp_path])
    model_cache.get_predictor(other, "cpu", settings)
    assert [key[0] for key in model_cache.cached_keys()] == [other.key]  # the first one was evicted


def test_random_weights_are_reproducible(settings):
    import torch

    spec = resolve_model("random:mini")
    a = model_cache.load_pair(spec, settings)[0]
    b = model_cache.load_pair(spec, settings)[0]
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))
    assert a.checksum.startswith("random-seed-")


def test_unreachable_hub_says_what_to_do(settings, monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    settings = settings.model_copy(update={"hf_cache_dir": tmp_path / "empty-cache"})
    with pytest.raises(model_cache.ModelUnavailable) as caught:
        model_cache.get_predictor(resolve_model("kronos-small"), "cpu", settings)
    message = str(caught.value)
    assert "NeoQuasar/Kronos-small" in message and "local directory" in message and "random:small" in message
    assert model_cache.cached_keys() == []


def test_registered_checksum_mismatch_is_refused(settings, tiny_checkpoint):
    import dataclasses

    spec = dataclasses.replace(resolve_model(str(tiny_checkpoint), model_dirs=[tiny_checkpoint.parent]),
                               source="finetuned", checksum="0" * 64)
    with pytest.raises(model_cache.ModelUnavailable, match="does not match"):
        model_cache.get_predictor(spec, "cpu", settings)
