"""CUDA out-of-memory back-off in ``KronosPredictor._decode``, on CPU with the failure mocked.

``model.predictor.generate`` is wrapped to raise ``torch.OutOfMemoryError`` above a row limit (after
consuming a draw, as a real attempt would). Back-off is on by default only on CUDA; these tests turn
it on for a CPU predictor through its ``oom_backoff`` attribute, so every tensor stays on the CPU.
"""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch

import model.predictor as predictor_module
from kronos_jobs.testing.tiny import MINI_LIKE, M, assert_frames_equal, batch, make_modules, split
from model.predictor import KronosPredictor, _release_cached_memory

REAL_GENERATE = predictor_module.generate


class OomAbove:
    """Stands in for ``generate``: raises CUDA's out-of-memory error when asked for more than `limit` rows."""

    def __init__(self, limit: int, error: type[BaseException] = torch.OutOfMemoryError):
        self.limit, self.error, self.rows, self.raised = limit, error, [], []

    def __call__(self, model, tokenizer, x, *args, sample_count=1, generator=None, **kwargs):
        rows = x.shape[0] * sample_count
        self.rows.append(rows)
        if rows > self.limit:
            torch.rand(3, generator=generator)  # a failed attempt may have drawn already
            exc = self.error(f"CUDA out of memory. Tried to allocate {rows} rows")
            self.raised.append(exc)
            raise exc
        return REAL_GENERATE(model, tokenizer, x, *args, sample_count=sample_count, generator=generator, **kwargs)


def chunking(info: dict) -> dict:
    """The chunking part of ``last_decode_info`` (it also carries ``kernel``, tested in test_kernels.py)."""
    return {k: info[k] for k in ("requested_rows_per_chunk", "rows_per_chunk", "oom_retries")}


@pytest.fixture
def cuda_cache(monkeypatch):
    calls = []
    monkeypatch.setattr(torch.cuda, "empty_cache", lambda: calls.append(1))
    return calls


def backing_off_predictor(**kwargs) -> KronosPredictor:
    pred = KronosPredictor(*make_modules(MINI_LIKE), device="cpu", max_context=M, **kwargs)
    pred.oom_backoff = True  # what a CUDA predictor has by default
    return pred


@pytest.mark.parametrize(("lengths", "S", "limit", "rows", "retries"), [
    ([10, 10, 10, 7, 10], 3, 4, 3, 2),  # 4 series x 3 samples fail -> 6 fail -> 3: one series per chunk
    ([12], 5, 2, 2, 1),  # 5 samples fail -> 2 -> slices of one series' samples (2, 2, 1)
    ([9, 9], 2, 1, 1, 2),  # down to one row
], ids=["fewer-series", "sample-slices", "one-row"])
def test_greedy_output_equals_a_run_without_oom(monkeypatch, caplog, cuda_cache, lengths, S, limit, rows, retries):
    dfs, xts, yts = batch(lengths, 4)
    pred = backing_off_predictor()
    want = pred.predict_batch(dfs, xts, yts, 4, top_k=1, sample_count=S)
    assert chunking(pred.last_decode_info) == {"requested_rows_per_chunk": 64, "rows_per_chunk": 64, "oom_retries": 0}

    fake = OomAbove(limit)
    monkeypatch.setattr(predictor_module, "generate", fake)
    with caplog.at_level(logging.WARNING, logger="model.predictor"):
        got = pred.predict_batch(dfs, xts, yts, 4, top_k=1, sample_count=S)

    assert_frames_equal(got, want)
    assert chunking(pred.last_decode_info) == {"requested_rows_per_chunk": 64, "rows_per_chunk": rows, "oom_retries": retries}
    assert pred.oom_rows_cap == rows and len(fake.raised) == retries
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == retries  # one line per back-off, with the old and new sizes
    assert "CUDA out of memory" in warnings[0].message and "(was 64)" in warnings[0].message
    assert "seeded sampling" in warnings[0].message
    assert cuda_cache == []  # a CPU predictor never touches torch.cuda


def test_later_calls_start_from_the_learned_cap(monkeypatch):
    dfs, xts, yts = batch([10, 10, 10], 4)
    pred = backing_off_predictor()
    fake = OomAbove(4)
    monkeypatch.setattr(predictor_module, "generate", fake)
    pred.predict_batch(dfs, xts, yts, 4, top_k=1, sample_count=2)
    assert pred.oom_rows_cap == 3 and pred.max_batch_size == 64  # the user's setting is kept

    fake.rows.clear()
    pred.predict_batch(dfs, xts, yts, 4, top_k=1, sample_count=2)
    assert chunking(pred.last_decode_info) == {"requested_rows_per_chunk": 64, "rows_per_chunk": 3, "oom_retries": 0}
    assert max(fake.rows) <= 3 and len(fake.raised) == 1  # only the first call failed
    pred.predict_batch(dfs, xts, yts, 4, top_k=1, sample_count=2, max_batch_size=2)  # a smaller request wins
    assert pred.last_decode_info["rows_per_chunk"] == 2 and pred.oom_rows_cap == 3


def test_retried_chunk_redraws_from_where_it_started(monkeypatch):
    # The failed attempts drew from the generator; the retry rewinds it, so a back-off before the
    # first decoded chunk gives exactly the draws of a run at the smaller size.
    df, xt, yt = split(12, 4)
    pred = backing_off_predictor()
    want = pred.predict(df, xt, yt, 4, sample_count=8, seed=3, return_samples=True, max_batch_size=2)
    monkeypatch.setattr(predictor_module, "generate", OomAbove(2))
    got = pred.predict(df, xt, yt, 4, sample_count=8, seed=3, return_samples=True)
    assert chunking(pred.last_decode_info) == {"requested_rows_per_chunk": 64, "rows_per_chunk": 2, "oom_retries": 2}
    np.testing.assert_allclose(got.samples, want.samples, rtol=1e-5, atol=1e-6)


def test_one_row_that_does_not_fit_reraises_the_original_error(monkeypatch, cuda_cache):
    df, xt, yt = split(12, 4)
    pred = backing_off_predictor()
    fake = OomAbove(0)
    monkeypatch.setattr(predictor_module, "generate", fake)
    with pytest.raises(torch.OutOfMemoryError) as info:
        pred.predict(df, xt, yt, 4, sample_count=4, seed=0)
    assert info.value is fake.raised[-1] and fake.rows == [4, 2, 1]
    assert chunking(pred.last_decode_info) == {"requested_rows_per_chunk": 64, "rows_per_chunk": 1, "oom_retries": 2}
    assert cuda_cache == []


def test_cpu_predictor_does_not_back_off(monkeypatch, caplog, cuda_cache):
    # Off the GPU the error propagates unchanged after one attempt (a real CPU allocation failure
    # is a RuntimeError, which is never caught either).
    df, xt, yt = split(12, 4)
    pred = KronosPredictor(*make_modules(MINI_LIKE), device="cpu", max_context=M)
    assert pred.oom_backoff is False
    fake = OomAbove(0)
    monkeypatch.setattr(predictor_module, "generate", fake)
    with caplog.at_level(logging.WARNING, logger="model.predictor"), pytest.raises(torch.OutOfMemoryError):
        pred.predict(df, xt, yt, 4, sample_count=4, seed=0)
    assert fake.rows == [4] and pred.oom_rows_cap is None and cuda_cache == [] and not caplog.records
    assert pred.last_decode_info["oom_retries"] == 0


def test_other_allocation_errors_are_not_caught(monkeypatch):
    df, xt, yt = split(12, 4)
    pred = backing_off_predictor()
    fake = OomAbove(0, error=RuntimeError)
    monkeypatch.setattr(predictor_module, "generate", fake)
    with pytest.raises(RuntimeError):
        pred.predict(df, xt, yt, 4, sample_count=4, seed=0)
    assert fake.rows == [4] and pred.oom_rows_cap is None


def test_cuda_cache_is_released_only_on_cuda(cuda_cache):
    _release_cached_memory(torch.device("cpu"))
    assert cuda_cache == []
    _release_cached_memory(torch.device("cuda", 0))
    assert cuda_cache == [1]
