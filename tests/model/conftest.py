"""Shared fixtures for model tests: tiny random checkpoints saved and loaded through the real code path.

The checkpoints are built once per session with ``save_pretrained`` into a temp directory; tests
load them with ``from_pretrained`` (a fresh module per test, so a test may train or mutate it).
"""

from __future__ import annotations

import pytest
import torch

from kronos_jobs.testing.tiny import TINY_KRONOS_CONFIG, TINY_TOKENIZER_CONFIG, generate_bars

# The build machine has 2 shared cores; tiny configs do not gain from more threads.
torch.set_num_threads(1)


@pytest.fixture(scope="session")
def tiny_tokenizer_config():
    """Keyword arguments (upstream style) of the tiny tokenizer of spec §3.5."""
    return dict(TINY_TOKENIZER_CONFIG)


@pytest.fixture(scope="session")
def tiny_model_config():
    """Keyword arguments (upstream style) of the tiny Kronos predictor."""
    return dict(TINY_KRONOS_CONFIG)


@pytest.fixture(scope="session")
def tiny_tokenizer_dir(tmp_path_factory):
    """Directory with config.json + model.safetensors of a tiny random KronosTokenizer."""
    from model.tokenizer import KronosTokenizer

    torch.manual_seed(1234)
    path = tmp_path_factory.mktemp("tiny-tokenizer")
    KronosTokenizer(**TINY_TOKENIZER_CONFIG).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """Directory with config.json + model.safetensors of a tiny random Kronos predictor."""
    from model.transformer import Kronos

    torch.manual_seed(4321)
    path = tmp_path_factory.mktemp("tiny-kronos")
    Kronos(**TINY_KRONOS_CONFIG).save_pretrained(path)
    return path


@pytest.fixture
def tiny_tokenizer(tiny_tokenizer_dir):
    """A fresh tiny tokenizer loaded with ``from_pretrained`` (eval mode)."""
    from model.tokenizer import KronosTokenizer

    return KronosTokenizer.from_pretrained(tiny_tokenizer_dir)


@pytest.fixture
def tiny_model(tiny_model_dir):
    """A fresh tiny Kronos loaded with ``from_pretrained`` (eval mode)."""
    from model.transformer import Kronos

    return Kronos.from_pretrained(tiny_model_dir)


@pytest.fixture
def make_bars():
    """Factory fixture: ``make_bars(n, seed=0, freq="5min")`` -> DataFrame of synthetic bars."""
    return generate_bars
