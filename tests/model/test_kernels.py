"""model/kernels.py: each decode matmul's kernel is the fastest one (by a controllable timer) that
agrees with float64; the choice is cached on disk per key and reused; a forced kernel wins; every
path decodes the oracle's tokens; the predictor reports the choice and warms up at construction."""

from __future__ import annotations

import json
import threading

import pytest
import torch

import model.predictor as predictor_module
from model import kernels
from model.dense import Dense, onednn_usable
from model.kernels import KernelCache, KernelPlanner, cache_key
from model.predictor import KronosPredictor
from kronos_jobs.testing.oracle import oracle_predict_batch
from kronos_jobs.testing.tiny import MINI_LIKE, M, assert_frames_equal, batch, make_modules

pytestmark = pytest.mark.skipif(not onednn_usable(), reason="the choice needs both kernels (a oneDNN build)")

SHAPE = (24, 16, True)  # (out_features, in_features, has bias)


class FakeTimer:
    """seconds(kernel, rows) from a table; records every call. Never reads a clock."""

    def __init__(self, table=None, default=1.0):
        self.table, self.default, self.calls = table or {}, default, []

    def __call__(self, layer: Dense, x: torch.Tensor) -> float:
        kernel = next(iter(set(layer.kernels.values())))  # the planner times single-kernel layers
        self.calls.append((kernel, x.shape[0]))
        return self.table.get((kernel, x.shape[0]), self.table.get(kernel, self.default))


class NoTimer:
    def __call__(self, layer, x):
        raise AssertionError("nothing may be measured here")


def planner(tmp_path, timer, **kwargs) -> KernelPlanner:
    return KernelPlanner(window_rows=M, cache_dir=tmp_path, timer=timer, **kwargs)


@pytest.mark.parametrize("fast", ["addmm", "onednn"])
def test_the_fastest_kernel_that_agrees_is_chosen(tmp_path, fast):
    slow = "onednn" if fast == "addmm" else "addmm"
    plan = planner(tmp_path, FakeTimer({fast: 1e-4, slow: 2e-4})).plan(SHAPE)
    assert plan == {"one": fast, "few": fast, "many": fast}


def test_each_row_regime_gets_its_own_winner_and_dense_dispatches_on_rows(tmp_path, monkeypatch):
    # addmm wins at one row only, as it did for half the shapes on the EPYC.
    timer = FakeTimer({("addmm", 1): 1.0, ("onednn", 1): 2.0, "addmm": 2.0, "onednn": 1.0})
    p = planner(tmp_path, timer)
    plan = p.plan(SHAPE)
    assert plan == {"one": "addmm", "few": "onednn", "many": "onednn"}
    assert sorted(set(timer.calls)) == sorted({(k, r) for k in ("addmm", "onednn")
                                               for r in (1, kernels.FEW_ROWS_MEASURED, M)})
    layer = Dense(torch.randn(24, 16), torch.randn(24), kernels=plan)
    assert layer.weight is not None and layer.packed_weight is not None  # both layouts are kept
    used = []
    monkeypatch.setattr(Dense, "_addmm", lambda self, x: used.append(("addmm", x.shape[0])) or x)
    monkeypatch.setattr(Dense, "_packed", lambda self, x: used.append(("onednn", x.shape[0])) or x)
    layer = Dense(torch.randn(24, 16), torch.randn(24), kernels=plan)  # binds the patched methods
    for rows in (1, 2, 64, 65, 512):
        layer(torch.randn(rows, 16))
    assert used == [("addmm", 1), ("onednn", 2), ("onednn", 64), ("onednn", 65), ("onednn", 512)]


def test_a_kernel_that_disagrees_with_float64_is_never_chosen(tmp_path, monkeypatch, caplog):
    real = Dense._packed
    monkeypatch.setattr(Dense, "_packed", lambda self, x: real(self, x) * (1 + 1e-3))  # fast but wrong
    p = planner(tmp_path, FakeTimer({"onednn": 1e-9, "addmm": 1.0}))
    with caplog.at_level("WARNING", logger="model.kernels"):
        plan = p.plan(SHAPE)
    assert plan == {"one": "addmm", "few": "addmm", "many": "addmm"}
    assert "onednn disagrees with float64" in caplog.text
    assert all(entry["rejected"] == ["onednn"] and set(entry["seconds"]) == {"addmm"} for entry in p.records.values())


def test_no_agreeing_kernel_is_an_error_not_a_guess(tmp_path, monkeypatch):
    monkeypatch.setattr(Dense, "_packed", lambda self, x: torch.full((x.shape[0], 24), float("nan")))
    monkeypatch.setattr(Dense, "_addmm", lambda self, x: torch.zeros(x.shape[0], 24) + 1e3)
    with pytest.raises(RuntimeError, match="agrees with float64"):
        planner(tmp_path, FakeTimer()).plan(SHAPE)


def test_the_choice_is_cached_on_disk_per_key_and_reused(tmp_path):
    first = planner(tmp_path, FakeTimer({"addmm": 1.0, "onednn": 2.0}))
    assert first.plan(SHAPE)["one"] == "addmm"
    first.flush()
    stored = json.loads((tmp_path / kernels.CACHE_FILE).read_text())
    key = cache_key(*SHAPE, 1)
    assert set(stored) == {cache_key(*SHAPE, r) for r in (1, kernels.FEW_ROWS_MEASURED, M)}
    assert kernels.cpu_model() in key and torch.__version__ in key and f"{torch.get_num_threads()} threads" in key
    assert stored[key]["kernel"] == "addmm" and stored[key]["seconds"] == {"addmm": 1.0, "onednn": 2.0}

    again = planner(tmp_path, NoTimer())  # another process on the same machine: nothing measured
    assert again.plan(SHAPE) == first.plan(SHAPE) and again.info()["source"] == "disk cache"

    other_shape = planner(tmp_path, FakeTimer({"onednn": 1.0, "addmm": 2.0}))  # a new key is measured
    assert other_shape.plan((24, 16, False))["few"] == "onednn" and other_shape.info()["source"] == "measured"

    threads = torch.get_num_threads()
    torch.set_num_threads(threads + 1)
    try:  # another thread count is another key
        timer = FakeTimer({"onednn": 1.0, "addmm": 2.0})
        assert planner(tmp_path, timer).plan(SHAPE)["one"] == "onednn" and timer.calls
    finally:
        torch.set_num_threads(threads)


def test_a_corrupt_cache_file_is_measured_again(tmp_path, caplog):
    (tmp_path / kernels.CACHE_FILE).write_text("{not json")
    timer = FakeTimer({"addmm": 1.0, "onednn": 2.0})
    p = planner(tmp_path, timer)
    with caplog.at_level("WARNING", logger="model.kernels"):
        assert p.plan(SHAPE)["many"] == "addmm"
    assert "unreadable" in caplog.text and timer.calls
    p.flush()
    assert json.loads((tmp_path / kernels.CACHE_FILE).read_text())  # rewritten whole
    (tmp_path / kernels.CACHE_FILE).write_text(json.dumps({cache_key(*SHAPE, 1): {"kernel": "rm -rf"}}))
    assert KernelCache(tmp_path).load() == {}  # an entry naming no known kernel is ignored


def test_concurrent_writers_leave_one_whole_file_with_every_entry(tmp_path):
    cache = KernelCache(tmp_path)
    writers = [threading.Thread(target=cache.store, args=({f"key {i}": {"kernel": "addmm", "seconds": {}}},))
               for i in range(12)]
    for w in writers:
        w.start()
    for w in writers:
        w.join()
    assert set(cache.load()) == {f"key {i}" for i in range(12)}
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".kernels-")] == []  # no temp file left


def test_a_forced_kernel_wins_and_measures_nothing(tmp_path):
    for kernel in kernels.KERNELS:
        p = planner(tmp_path, NoTimer(), requested=kernel)
        assert p.plan(SHAPE) == dict.fromkeys(("one", "few", "many"), kernel)
        assert p.info()["source"] == "forced" and p.info()["kernel"] == kernel
    assert not (tmp_path / kernels.CACHE_FILE).exists()
    with pytest.raises(ValueError, match="cpu_kernel"):
        KernelPlanner("mkl")


@pytest.mark.parametrize("cpu_kernel", ["auto", "addmm", "onednn", "mixed"])
@pytest.mark.parametrize("L, P", [(10, 6), (23, 5)], ids=["grow-then-slide", "longer"])
def test_greedy_equals_oracle_on_every_path(tmp_path, monkeypatch, cpu_kernel, L, P):
    if cpu_kernel == "mixed":  # a timer that makes the regimes disagree: addmm at 1 row, oneDNN above
        timer = FakeTimer({("addmm", 1): 1.0, ("onednn", 1): 2.0, "addmm": 2.0, "onednn": 1.0})
        monkeypatch.setattr(kernels, "time_layer", timer)
    model, tokenizer = make_modules(MINI_LIKE)
    dfs, xts, yts = batch([L, L], P)
    want = oracle_predict_batch(tokenizer, model.eval(), dfs, xts, yts, P, max_context=M, top_k=1)
    predictor = KronosPredictor(model, tokenizer, device="cpu", max_context=M, kernel_cache_dir=tmp_path,
                                cpu_kernel="auto" if cpu_kernel == "mixed" else cpu_kernel)
    got = predictor.predict_batch(dfs, xts, yts, P, top_k=1)
    assert_frames_equal(got, want)
    assert predictor.kernel_info["kernel"] == cpu_kernel if cpu_kernel != "auto" else \
        predictor.kernel_info["kernel"] in ("addmm", "onednn", "mixed")
    one = {plan["one"] for plan in predictor.kernel_info["by_shape"].values()}
    assert one == ({"addmm"} if cpu_kernel in ("addmm", "mixed") else {"onednn"} if cpu_kernel == "onednn" else one)


def test_the_choice_is_in_last_decode_info(tmp_path):
    model, tokenizer = make_modules(MINI_LIKE)
    predictor = KronosPredictor(model, tokenizer, device="cpu", max_context=M, kernel_cache_dir=tmp_path)
    dfs, xts, yts = batch([12], 3)
    predictor.predict_batch(dfs, xts, yts, 3, top_k=1)
    info = predictor.last_decode_info["kernel"]
    assert info == predictor.kernel_info
    assert info["precision"] == "fp32" and info["requested"] == "auto" and info["cpu"] == kernels.cpu_model()
    assert info["source"] in ("measured", "disk cache") and info["threads"] == torch.get_num_threads()
    d, f, V = MINI_LIKE["d_model"], MINI_LIKE["ff_dim"], 2 ** MINI_LIKE["s1_bits"]
    assert {f"{3 * d}x{d}+b", f"{d}x{d}+b", f"{2 * f}x{d}", f"{d}x{f}", f"{V}x{d}+b"} <= set(info["by_shape"])
    json.dumps(info)  # job metadata is JSON
    # Built again in a new predictor: the disk cache answers.
    again = KronosPredictor(model, tokenizer, device="cpu", max_context=M, kernel_cache_dir=tmp_path)
    assert again.kernel_info["source"] == "disk cache" and again.kernel_info["by_shape"] == info["by_shape"]


def test_construction_warms_up_without_side_effects(tmp_path):
    model, tokenizer = make_modules(MINI_LIKE)
    rng = torch.get_rng_state()
    cold = KronosPredictor(model, tokenizer, device="cpu", max_context=M, kernel_cache_dir=tmp_path, warm_up=False)
    assert cold._packed is None and cold.kernel_info == {} and cold.warm_up_seconds == 0.0
    warm = KronosPredictor(model, tokenizer, device="cpu", max_context=M, kernel_cache_dir=tmp_path)
    assert warm._packed is not None and warm.kernel_info and warm.warm_up_seconds > 0
    assert warm.last_timings == {} and warm.last_decode_info == {}
    assert torch.equal(torch.get_rng_state(), rng)
    dfs, xts, yts = batch([12], 3)
    assert_frames_equal(warm.predict_batch(dfs, xts, yts, 3, top_k=1), cold.predict_batch(dfs, xts, yts, 3, top_k=1))


def test_native_bf16_detection_reads_the_cpu_flags(monkeypatch):
    monkeypatch.setattr(kernels, "cpu_flags", lambda: frozenset({"avx2", "avx512f"}))
    assert "AVX-512 BF16" in kernels.native_bf16_reason()
    for flag in ("avx512_bf16", "amx_bf16"):
        monkeypatch.setattr(kernels, "cpu_flags", lambda flag=flag: frozenset({"avx2", flag}))
        assert kernels.native_bf16_reason() is None


def test_cpu_bf16_is_refused_without_native_support_and_approximate_with_it(monkeypatch, tmp_path):
    model, tokenizer = make_modules({**MINI_LIKE, "ffn_dropout_p": 0.0, "resid_dropout_p": 0.0})
    monkeypatch.setattr(predictor_module, "native_bf16_reason", lambda: "the CPU (test) has neither")
    with pytest.raises(ValueError, match="native bfloat16 support: the CPU \\(test\\)"):
        KronosPredictor(model, tokenizer, device="cpu", max_context=M, autocast_dtype=torch.bfloat16)
    with pytest.raises(ValueError, match="must be torch.bfloat16"):
        KronosPredictor(model, tokenizer, device="cpu", max_context=M, autocast_dtype=torch.float16)

    # Where the CPU has it (emulated here), the same path runs and says it is approximate.
    monkeypatch.setattr(predictor_module, "native_bf16_reason", lambda: None)
    low = KronosPredictor(model, tokenizer, device="cpu", max_context=M, autocast_dtype=torch.bfloat16,
                          kernel_cache_dir=tmp_path)
    fp32 = KronosPredictor(model, tokenizer, device="cpu", max_context=M, kernel_cache_dir=tmp_path)
    dfs, xts, yts = batch([12, 12], 6)
    got, want = low.predict_batch(dfs, xts, yts, 6, top_k=1), fp32.predict_batch(dfs, xts, yts, 6, top_k=1)
    assert low.kernel_info["precision"] == "approximate-bf16" and low.kernel_info["kernel"] == "addmm"
    assert low.last_decode_info["kernel"]["precision"] == "approximate-bf16"
    assert fp32.kernel_info["precision"] == "fp32"
    assert all(g.shape == w.shape and bool(g.notna().all().all()) for g, w in zip(got, want))
