"""model/dense.py: the packed oneDNN kernel and the BLAS fallback compute the same affine map."""

from __future__ import annotations

import pytest
import torch

import model.dense as dense
from kronos_jobs.testing.oracle import oracle_predict_batch
from model.dense import Dense
from model.predictor import KronosPredictor
from tests.model.test_predictor import MINI_LIKE, M, assert_frames_equal, batch, make_modules


def reference(x, w, b):
    y = x.double() @ w.double().t()
    return y if b is None else y + b.double()


@pytest.mark.parametrize("rows", [1, 3, 8, 65])
@pytest.mark.parametrize("with_bias", [True, False])
def test_dense_matches_float64_reference(rows, with_bias):
    g = torch.Generator().manual_seed(rows)
    w, b = torch.randn(96, 40, generator=g), torch.randn(96, generator=g) if with_bias else None
    x = torch.randn(rows, 7, 40, generator=g)[:, -1]  # a strided view, as decoding passes x̂[:, -1]
    layer = Dense(w, b)
    with torch.inference_mode():
        y = layer(x)
    assert y.shape == (rows, 96) and y.dtype == torch.float32
    torch.testing.assert_close(y.double(), reference(x, w, b), rtol=1e-5, atol=1e-5)


def test_onednn_is_used_on_this_cpu_build():
    # The fast path is the point of the module; a torch upgrade that silently loses it should fail here.
    assert dense.onednn_usable()
    assert Dense(torch.randn(8, 4)).packed


def test_half_precision_and_missing_onednn_use_addmm(monkeypatch):
    w, b = torch.randn(12, 6), torch.randn(12)
    x = torch.randn(3, 6)
    low = Dense(w, b, torch.bfloat16)
    assert not low.packed and low.weight.dtype == torch.bfloat16 and low.weight.shape == (6, 12)
    with torch.inference_mode():
        assert low(x.bfloat16()).dtype == torch.bfloat16
    monkeypatch.setattr(dense, "onednn_usable", lambda: False)
    blas = Dense(w, b)
    assert not blas.packed
    torch.testing.assert_close(blas(x).double(), reference(x, w, b), rtol=1e-5, atol=1e-5)


def test_a_packed_layer_refuses_other_dtypes():
    layer = Dense(torch.randn(8, 4))
    with pytest.raises(TypeError, match="float32"):
        layer(torch.randn(2, 4).bfloat16())


@pytest.mark.parametrize("L, P", [(10, 6), (23, 5)], ids=["grow-then-slide", "longer"])
def test_greedy_equals_oracle_on_the_blas_path_too(monkeypatch, L, P):
    monkeypatch.setattr(dense, "onednn_usable", lambda: False)
    model, tokenizer = make_modules(MINI_LIKE)
    dfs, xts, yts = batch([L, L], P)
    want = oracle_predict_batch(tokenizer, model.eval(), dfs, xts, yts, P, max_context=M, top_k=1)
    predictor = KronosPredictor(model, tokenizer, device="cpu", max_context=M)
    got = predictor.predict_batch(dfs, xts, yts, P, top_k=1)
    assert not predictor._packed_model().fusion.packed
    assert_frames_equal(got, want)
