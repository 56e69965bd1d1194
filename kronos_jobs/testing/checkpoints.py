"""Tiny random Kronos checkpoints, saved and loaded through the real code path.

The configs (kronos_jobs/testing/tiny.py) are small, so a test or a bench builds one in milliseconds;
`save_tiny_checkpoint` writes a model + tokenizer in the local-directory layout that
`kronos_jobs.jobs.registry.resolve_model` reads.
"""

from __future__ import annotations

from pathlib import Path

import torch

from kronos_jobs.jobs.registry import save_local_model
from kronos_jobs.testing.tiny import TINY_KRONOS_CONFIG, TINY_TOKENIZER_CONFIG
from model.tokenizer import KronosTokenizer
from model.transformer import Kronos

TINY_MAX_CONTEXT = 64


def save_tiny_checkpoint(directory: Path, seed: int = 7, max_context: int = TINY_MAX_CONTEXT) -> Path:
    """A tiny random model + tokenizer saved under `directory`; the global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model, tokenizer = Kronos(**TINY_KRONOS_CONFIG), KronosTokenizer(**TINY_TOKENIZER_CONFIG)
    return save_local_model(directory, model, tokenizer, max_context=max_context)
