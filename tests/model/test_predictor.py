"""KronosPredictor: the fast cached decoder must give the oracle's tokens (spec §5.5, §7.4), plus API checks."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from kronos_jobs.testing.oracle import oracle_predict_batch
from kronos_jobs.testing.tiny import (
    COLS,
    MINI_LIKE,
    SMALL_LIKE,
    M,
    assert_frames_equal,
    batch,
    make_modules,
    split,
)
from model.predictor import Forecast, KronosPredictor


@pytest.fixture(scope="module", params=["mini", "small"])
def modules(request):
    return make_modules(MINI_LIKE if request.param == "mini" else SMALL_LIKE)


# ---- oracle equality ----------------------------------------------------------------------------

@pytest.mark.parametrize("L, P", [(5, 6), (10, 6), (16, 4), (23, 5), (3, 16)],
                         ids=["short", "grow-then-slide", "equal", "longer", "P=M"])
@pytest.mark.parametrize("B", [1, 3])
def test_greedy_equals_oracle(modules, L, P, B):
    model, tokenizer = modules
    dfs, xts, yts = batch([L] * B, P)
    want = oracle_predict_batch(tokenizer, model.eval(), dfs, xts, yts, P, max_context=M, top_k=1)
    got = KronosPredictor(model, tokenizer, device="cpu", max_context=M).predict_batch(dfs, xts, yts, P, top_k=1)
    assert_frames_equal(got, want)


def test_window_recomputes_split_into_passes_equal_oracle(modules, monkeypatch):
    from model.decoding import PackedKronos

    # One sequence per pass: the prefill of the growing windows (length 10, with a cache to fill)
    # and the sliding recomputes (length 20 > M) both run pass by pass.
    monkeypatch.setattr(PackedKronos, "CPU_WINDOW_ROWS", 12)
    model, tokenizer = modules
    dfs, xts, yts = batch([10, 20, 10, 20, 10], 5)
    got = KronosPredictor(model, tokenizer, device="cpu", max_context=M).predict_batch(dfs, xts, yts, 5, top_k=1)
    want = [oracle_predict_batch(tokenizer, model.eval(), [d], [x], [y], 5, max_context=M, top_k=1)[0]
            for d, x, y in zip(dfs, xts, yts)]
    assert_frames_equal(got, want)


def test_mixed_context_lengths_equal_oracle_per_length(modules):
    model, tokenizer = modules
    lengths, P = [5, 20, 12, 5, 16], 6
    dfs, xts, yts = batch(lengths, P)
    got = KronosPredictor(model, tokenizer, device="cpu", max_context=M).predict_batch(dfs, xts, yts, P, top_k=1)
    want = [oracle_predict_batch(tokenizer, model.eval(), [d], [x], [y], P, max_context=M, top_k=1)[0]
            for d, x, y in zip(dfs, xts, yts)]
    assert_frames_equal(got, want)


@pytest.mark.parametrize("L", [7, 20])
@pytest.mark.parametrize("sampling", [dict(top_p=0.9), dict(top_k=3, T=0.8), dict(top_p=1.0, T=1.3)])
def test_seeded_sampling_gives_the_oracle_tokens(modules, L, sampling):
    model, tokenizer = modules
    dfs, xts, yts = batch([L, L], 5)
    want = oracle_predict_batch(tokenizer, model.eval(), dfs, xts, yts, 5, max_context=M, sample_count=3,
                                seed=11, **sampling)
    got = KronosPredictor(model, tokenizer, device="cpu", max_context=M).predict_batch(
        dfs, xts, yts, 5, sample_count=3, seed=11, **sampling)
    assert_frames_equal(got, want)


# ---- seeds, batching, chunking ----------------------------------------------------------------

def test_same_seed_repeats_and_different_seed_varies(modules):
    model, tokenizer = modules
    pred = KronosPredictor(model, tokenizer, device="cpu", max_context=M)
    df, xt, yt = split(12, 8)
    runs = [pred.predict(df, xt, yt, 8, T=1.5, top_p=1.0, sample_count=2, seed=s) for s in (1, 1, 2)]
    pd.testing.assert_frame_equal(runs[0], runs[1])
    assert not np.allclose(runs[0].to_numpy(), runs[2].to_numpy())


def test_sampling_does_not_touch_global_rng(modules):
    model, tokenizer = modules
    df, xt, yt = split(8, 4)
    torch.manual_seed(0)
    before = torch.rand(3)
    torch.manual_seed(0)
    KronosPredictor(model, tokenizer, device="cpu", max_context=M).predict(df, xt, yt, 4, seed=3)
    assert torch.equal(torch.rand(3), before)


@pytest.mark.parametrize("max_batch_size", [1, 2, 64])
def test_batch_equals_per_series_greedy(modules, max_batch_size):
    model, tokenizer = modules
    pred = KronosPredictor(model, tokenizer, device="cpu", max_context=M)
    dfs, xts, yts = batch([9, 9, 18, 9], 5)
    together = pred.predict_batch(dfs, xts, yts, 5, top_k=1, sample_count=2, max_batch_size=max_batch_size)
    alone = [pred.predict(d, x, y, 5, top_k=1, sample_count=2) for d, x, y in zip(dfs, xts, yts)]
    assert_frames_equal(together, alone)


@pytest.mark.parametrize("max_batch_size", [1, 3, 64])
def test_progress_reports_every_decoding_step_and_changes_nothing(modules, max_batch_size):
    model, tokenizer = modules
    pred = KronosPredictor(model, tokenizer, device="cpu", max_context=M)
    dfs, xts, yts = batch([9, 9, 18], 5)
    calls = []
    kw = dict(top_k=1, sample_count=2, max_batch_size=max_batch_size)
    with_progress = pred.predict_batch(dfs, xts, yts, 5, progress=lambda done, total: calls.append((done, total)), **kw)
    assert_frames_equal(with_progress, pred.predict_batch(dfs, xts, yts, 5, **kw))
    total = 3 * 2 * 5  # series x samples x steps
    assert {t for _, t in calls} == {total}
    done = [d for d, _ in calls]
    assert done == sorted(done) and done[-1] == total and len(done) >= 5  # at least once per step
    assert len(set(done)) == len(done)  # every call reports something new


# ---- outputs ------------------------------------------------------------------------------------

def test_output_frame_matches_upstream_layout(modules):
    model, tokenizer = modules
    df, xt, yt = split(10, 4)
    yt = yt.rename("timestamps")
    out = KronosPredictor(model, tokenizer, device="cpu", max_context=M).predict(df, xt, yt, 4, seed=0)
    assert isinstance(out, pd.DataFrame) and list(out.columns) == COLS
    assert out.shape == (4, 6) and (out.dtypes == np.float32).all()
    assert isinstance(out.index, pd.DatetimeIndex) and out.index.name == "timestamps"
    assert list(out.index) == list(yt)


def test_quantiles_and_samples(modules):
    model, tokenizer = modules
    pred = KronosPredictor(model, tokenizer, device="cpu", max_context=M)
    dfs, xts, yts = batch([10, 14], 4)
    kw = dict(T=1.2, top_p=0.95, sample_count=5, seed=4)
    res = pred.predict_batch(dfs, xts, yts, 4, quantiles=[0.1, 0.5, 0.9], return_samples=True, **kw)
    plain = pred.predict_batch(dfs, xts, yts, 4, **kw)
    for f, mean in zip(res, plain):
        assert isinstance(f, Forecast)
        pd.testing.assert_frame_equal(f.mean, mean)
        assert f.samples.shape == (5, 4, 6) and f.samples.dtype == np.float32
        assert sorted(f.quantiles) == [0.1, 0.5, 0.9]
        for level, q in f.quantiles.items():
            assert q.shape == (4, 6) and list(q.columns) == COLS
            np.testing.assert_allclose(q.to_numpy(), np.quantile(f.samples, level, axis=0), rtol=1e-6)
        assert (f.quantiles[0.1].to_numpy() <= f.quantiles[0.9].to_numpy() + 1e-6).all()
    only_q = pred.predict(dfs[0], xts[0], yts[0], 4, quantiles=[0.5], **kw)
    assert isinstance(only_q, Forecast) and only_q.samples is None


def test_datetimeindex_timestamps_and_missing_volume_columns(modules):
    model, tokenizer = modules
    pred = KronosPredictor(model, tokenizer, device="cpu", max_context=M)
    df, xt, yt = split(10, 3)
    a = pred.predict(df, xt, yt, 3, top_k=1)
    b = pred.predict(df, pd.DatetimeIndex(xt), pd.DatetimeIndex(yt), 3, top_k=1)
    np.testing.assert_array_equal(a.to_numpy(), b.to_numpy())
    # without volume, volume and amount are zero even if amount is given (spec §5.2)
    no_vol = pred.predict(df.drop(columns=["volume"]), xt, yt, 3, top_k=1)
    zeroed = pred.predict(df.assign(volume=0.0, amount=0.0), xt, yt, 3, top_k=1)
    np.testing.assert_array_equal(no_vol.to_numpy(), zeroed.to_numpy())
    no_amount = pred.predict(df.drop(columns=["amount"]), xt, yt, 3, top_k=1)
    derived = df.assign(amount=df["volume"] * df[["open", "high", "low", "close"]].mean(axis=1))
    np.testing.assert_array_equal(no_amount.to_numpy(), pred.predict(derived, xt, yt, 3, top_k=1).to_numpy())


# ---- bad inputs ---------------------------------------------------------------------------------

def _bad(df, xt, yt):
    nan_df = df.copy()
    nan_df.iloc[2, 1] = np.nan
    inf_df = df.copy()
    inf_df.iloc[3, 4] = np.inf
    return {
        "nan": (dict(df=nan_df), "df"),
        "inf": (dict(df=inf_df), "df"),
        "no close": (dict(df=df.drop(columns=["close"])), "df"),
        "pred_len > max_context": (dict(pred_len=M + 1, y_timestamp=pd.date_range("2025", periods=M + 1)), "pred_len"),
        "pred_len 0": (dict(pred_len=0), "pred_len"),
        "x_timestamp length": (dict(x_timestamp=xt.iloc[:-1]), "x_timestamp"),
        "y_timestamp length": (dict(y_timestamp=yt.iloc[:-1]), "y_timestamp"),
        "T=0": (dict(T=0.0), "T"),
        "T<0": (dict(T=-1.0), "T"),
        "top_p=0": (dict(top_p=0.0), "top_p"),
        "top_p>1": (dict(top_p=1.5), "top_p"),
        "top_k<0": (dict(top_k=-1), "top_k"),
        "sample_count=0": (dict(sample_count=0), "sample_count"),
        "quantile 1": (dict(quantiles=[0.5, 1.0]), "quantiles"),
        "quantile 0": (dict(quantiles=[0.0]), "quantiles"),
        "max_batch_size 0": (dict(max_batch_size=0), "max_batch_size"),
    }


@pytest.mark.parametrize("case", list(_bad(*split(10, 4)).keys()))
def test_bad_input_raises_value_error_naming_the_argument(case):
    model, tokenizer = make_modules(MINI_LIKE)
    pred = KronosPredictor(model, tokenizer, device="cpu", max_context=M)
    df, xt, yt = split(10, 4)
    change, name = _bad(df, xt, yt)[case]
    kwargs = dict(df=df, x_timestamp=xt, y_timestamp=yt, pred_len=4) | change
    with pytest.raises(ValueError, match=name):
        pred.predict(**kwargs)


def test_batch_errors_name_the_series_and_lists():
    model, tokenizer = make_modules(MINI_LIKE)
    pred = KronosPredictor(model, tokenizer, device="cpu", max_context=M)
    dfs, xts, yts = batch([8, 8], 3)
    with pytest.raises(ValueError, match="x_timestamp_list"):
        pred.predict_batch(dfs, xts[:1], yts, 3)
    bad = dfs[1].copy()
    bad.iloc[0, 0] = np.nan
    with pytest.raises(ValueError, match=r"df\[1\]"):
        pred.predict_batch([dfs[0], bad], xts, yts, 3)


def test_constructor_checks_and_autocast_needs_cuda_or_native_cpu_bf16(monkeypatch):
    # CPU bfloat16 needs AVX-512 BF16 or AMX (tests/model/test_kernels.py); this CPU is told it has neither.
    monkeypatch.setattr("model.predictor.native_bf16_reason", lambda: "no native bfloat16 (test)")
    model, tokenizer = make_modules(MINI_LIKE)
    with pytest.raises(ValueError, match="autocast_dtype"):
        KronosPredictor(model, tokenizer, device="cpu", autocast_dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="max_context"):
        KronosPredictor(model, tokenizer, device="cpu", max_context=0)


# ---- construction through the real loader ---------------------------------------------------------

def test_from_pretrained_builds_eval_modules_on_the_resolved_device(tiny_model_dir, tiny_tokenizer_dir):
    pred = KronosPredictor.from_pretrained(tiny_model_dir, tiny_tokenizer_dir, device="cpu", max_context=M)
    assert pred.device == torch.device("cpu") and pred.device_warning is None
    assert not pred.model.training and not pred.tokenizer.training
    df, xt, yt = split(20, 4)
    got = pred.predict(df, xt, yt, 4, top_k=1)
    want = oracle_predict_batch(pred.tokenizer, pred.model, [df], [xt], [yt], 4, max_context=M, top_k=1)
    assert_frames_equal([got], want)


def test_predictor_sets_eval_mode_itself():
    model, tokenizer = make_modules(SMALL_LIKE)
    model.train(), tokenizer.train()
    pred = KronosPredictor(model, tokenizer, device="cpu", max_context=M)
    assert not model.training and not tokenizer.training
    df, xt, yt = split(10, 3)
    pd.testing.assert_frame_equal(pred.predict(df, xt, yt, 3, top_k=1), pred.predict(df, xt, yt, 3, top_k=1))


def test_weights_changed_in_place_are_picked_up():
    model, tokenizer = make_modules(MINI_LIKE, seed=3)
    pred = KronosPredictor(model, tokenizer, device="cpu", max_context=M)
    df, xt, yt = split(12, 6)
    pred.predict(df, xt, yt, 6, top_k=1)
    with torch.no_grad():  # e.g. a fine-tuning step on the same module
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    got = pred.predict(df, xt, yt, 6, top_k=1)
    want = oracle_predict_batch(tokenizer, model, [df], [xt], [yt], 6, max_context=M, top_k=1)
    assert_frames_equal([got], want)


def test_cpu_prediction_never_calls_torch_cuda(monkeypatch):
    def boom(*args, **kwargs):
        raise AssertionError("torch.cuda used on a CPU predictor")

    for name in ("is_available", "synchronize", "empty_cache", "current_device", "device_count"):
        monkeypatch.setattr(torch.cuda, name, boom)
    model, tokenizer = make_modules(MINI_LIKE)
    pred = KronosPredictor(model, tokenizer, device="cpu", max_context=M)
    df, xt, yt = split(20, 5)
    pred.predict(df, xt, yt, 5, sample_count=2, seed=0, quantiles=[0.5])


def test_last_timings_are_recorded(modules):
    model, tokenizer = modules
    pred = KronosPredictor(model, tokenizer, device="cpu", max_context=M)
    df, xt, yt = split(8, 3)
    pred.predict(df, xt, yt, 3, top_k=1)
    assert set(pred.last_timings) == {"prepare_s", "decode_s", "postprocess_s"}
    assert all(v >= 0 for v in pred.last_timings.values())


def test_reduced_precision_path_runs_and_stays_close():
    # The predictor allows autocast on CUDA only; CPU autocast exercises the same code path here
    # (bf16 packed weights and caches, float32 sampling) without a GPU.
    from model.decoding import PackedKronos, generate

    model, tokenizer = make_modules({**MINI_LIKE, "ffn_dropout_p": 0.0, "resid_dropout_p": 0.0})
    model.eval(), tokenizer.eval()
    g = torch.Generator().manual_seed(0)
    x, xs, ys = torch.randn(2, 12, 6, generator=g), torch.zeros(2, 12, 5), torch.zeros(2, 8, 5)
    ref = generate(model, tokenizer, x, xs, ys, 8, M, top_k=1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = generate(model, tokenizer, x, xs, ys, 8, M, top_k=1, packed=PackedKronos(model, torch.bfloat16))
    assert out.shape == ref.shape == (2, 1, 8, 6)
    assert torch.isfinite(out.float()).all()
    assert (out.float() - ref).abs().max() < 0.5  # normalised units; bf16 is opt-in and not exact
