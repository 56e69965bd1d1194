"""Fine-tuning loop: loss goes down in both phases, resume is exact, stop conditions, fixed defects."""

from __future__ import annotations

import pytest
import torch

from model.finetune import (
    TRAINING_STATE_NAME,
    FinetuneConfig,
    FinetuneLoop,
    causal_eval,
    finetune_predictor,
    finetune_tokenizer,
)
from model.windows import BarWindows


@pytest.fixture
def bars(make_bars):
    return {"train": {"A": make_bars(260, seed=1), "B": make_bars(180, seed=2)},
            "val": [make_bars(100, seed=3)]}


def small_config(**overrides) -> FinetuneConfig:
    base = dict(epochs=2, batch_size=8, lookback=24, predict_window=6, tokenizer_learning_rate=3e-3,
                predictor_learning_rate=3e-3, samples_per_epoch=64, val_max_windows=32, log_interval=4, seed=5)
    return FinetuneConfig(**{**base, **overrides})


def make_loop(phase, tiny_tokenizer, tiny_model, bars, config, **kwargs) -> FinetuneLoop:
    if phase == "tokenizer":
        return FinetuneLoop("tokenizer", tiny_tokenizer, bars["train"], bars["val"], config, device="cpu", **kwargs)
    return FinetuneLoop("predictor", tiny_model, bars["train"], bars["val"], config, tokenizer=tiny_tokenizer,
                        device="cpu", **kwargs)


# ---- data ------------------------------------------------------------------------------------------


def test_windows_normalise_with_context_statistics_only(make_bars):
    df = make_bars(50, seed=0)
    ds = BarWindows([df], lookback=20, predict_window=5)
    assert len(ds) == 50 - 26 + 1
    x, stamp = ds[3]
    assert x.shape == (26, 6) and stamp.shape == (26, 5)
    torch.testing.assert_close(x[:20].mean(0), torch.zeros(6), atol=1e-4, rtol=0)
    # Changing the future rows does not change the normalised context (no target leak, #227).
    df2 = df.copy()
    df2.loc[23 + 3:, ["open", "high", "low", "close"]] *= 3.0
    x2, _ = BarWindows([df2], lookback=20, predict_window=5)[3]
    torch.testing.assert_close(x2[:20], x[:20], rtol=0, atol=0)
    assert stamp[0].tolist() == [45.0, 9.0, 1.0, 18.0, 6.0]  # row 3: 2024-06-18 09:45, a Tuesday


def test_windows_reject_bad_input(make_bars):
    df = make_bars(40)
    df.loc[7, "close"] = float("nan")
    with pytest.raises(ValueError, match="'close' at row 7"):
        BarWindows({"X": df}, lookback=10, predict_window=2)
    with pytest.raises(ValueError, match="timestamp"):
        BarWindows([make_bars(40).drop(columns="timestamps")], lookback=10, predict_window=2)
    with pytest.raises(ValueError, match="no window of lookback \\+ predict_window \\+ 1 = 31"):
        FinetuneLoop("tokenizer", torch.nn.Linear(1, 1), [make_bars(20)], config=small_config(lookback=24))


def test_config_validation():
    with pytest.raises(ValueError, match=r"accumulation_steps \(9\) must not exceed batch_size \(8\)"):
        FinetuneConfig(batch_size=8, accumulation_steps=9)
    with pytest.raises(ValueError, match="phase"):
        FinetuneLoop("both", torch.nn.Linear(1, 1), [], config=small_config())


# ---- training ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("phase", ["tokenizer", "predictor"])
def test_short_finetune_lowers_the_loss(phase, tiny_tokenizer, tiny_model, bars, tmp_path):
    events = []
    loop = make_loop(phase, tiny_tokenizer, tiny_model, bars, small_config(epochs=3, accumulation_steps=2),
                     checkpoint_dir=tmp_path, on_progress=events.append)
    before = loop.validate()
    result = loop.fit()
    assert result.stopped == "completed" and result.step == result.total_steps == 24
    assert (result.device, result.device_warning) == ("cpu", None) and not loop.model.training
    assert result.val_loss < 0.9 * before, (before, result.val_loss)
    assert set(events[0]) == {"phase", "epoch", "epochs", "step", "total_steps", "train_loss", "val_loss",
                              "lr", "elapsed"}
    epoch_ends = [e for e in events if e["val_loss"] is not None]
    assert [e["epoch"] for e in epoch_ends] == [1, 2, 3] and epoch_ends[-1]["step"] == 24
    # Fixed defect 13: AdamW keeps the configured betas; OneCycleLR does not cycle momentum.
    assert loop.optimizer.param_groups[0]["betas"] == (0.9, 0.95)
    assert (tmp_path / TRAINING_STATE_NAME).is_file() and result.best_model_dir == str(tmp_path / "best_model")
    reloaded = type(loop.model).from_pretrained(result.best_model_dir)
    assert reloaded.config == loop.model.config


def test_batch_size_one_keeps_the_batch_dimension(tiny_tokenizer, tiny_model, bars):
    loop = make_loop("predictor", tiny_tokenizer, tiny_model, bars, small_config(batch_size=1, max_steps=2))
    assert loop.fit().step == 2


def test_predictor_validation_is_causal_and_does_not_sample(tiny_tokenizer, tiny_model, bars):
    loop = make_loop("predictor", tiny_tokenizer, tiny_model, bars, small_config())
    rng = torch.get_rng_state()
    first = loop.validate()
    assert torch.equal(rng, torch.get_rng_state())  # teacher forcing: no multinomial draw
    assert loop.validate() == first
    # Under causal_eval the s2 logits at position t ignore every later input token.
    s1 = torch.randint(0, 16, (1, 10))
    s2 = torch.randint(0, 16, (1, 10))
    stamp = torch.zeros(1, 10, 5)
    s1b, s2b = s1.clone(), s2.clone()
    s1b[:, 6:], s2b[:, 6:] = (s1b[:, 6:] + 1) % 16, (s2b[:, 6:] + 3) % 16
    with causal_eval(tiny_model), torch.no_grad():
        assert not tiny_model.transformer[0].training and tiny_model.dep_layer.training
        _, a = tiny_model(s1, s2, stamp, use_teacher_forcing=True, s1_targets=s1)
        _, b = tiny_model(s1b, s2b, stamp, use_teacher_forcing=True, s1_targets=s1b)
    torch.testing.assert_close(a[:, :6], b[:, :6])
    assert not tiny_model.dep_layer.training  # restored (from_pretrained left it in eval)


# ---- resume and stopping ------------------------------------------------------------------------------


@pytest.mark.parametrize("phase", ["tokenizer", "predictor"])
def test_resume_continues_exactly(phase, tiny_tokenizer_dir, tiny_model_dir, bars, tmp_path):
    from model.tokenizer import KronosTokenizer
    from model.transformer import Kronos

    def fresh():
        return KronosTokenizer.from_pretrained(tiny_tokenizer_dir), Kronos.from_pretrained(tiny_model_dir)

    config = small_config(checkpoint_every_steps=5)
    full = make_loop(phase, *fresh(), bars, config)
    full.fit()

    interrupted = make_loop(phase, *fresh(), bars, config, checkpoint_dir=tmp_path)
    interrupted.should_stop = lambda: interrupted.step >= 11
    result = interrupted.fit()
    assert result.stopped == "cancelled" and result.step == 11
    saved_opt = interrupted.optimizer.state_dict()

    resumed = make_loop(phase, *fresh(), bars, config, checkpoint_dir=tmp_path)
    assert resumed.load_checkpoint()
    assert (resumed.step, resumed.epoch, resumed.batch_in_epoch) == (11, 1, 3)
    assert resumed.scheduler.last_epoch == 11
    assert resumed.scheduler.get_last_lr() == interrupted.scheduler.get_last_lr()
    opt = resumed.optimizer.state_dict()
    for pid, st in saved_opt["state"].items():
        assert torch.equal(opt["state"][pid]["exp_avg"], st["exp_avg"])
    assert resumed.fit().step == full.total_steps
    for key, value in full.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[key], value, rtol=0, atol=0, msg=key)


def test_entry_points_resume_from_checkpoint_dir(tiny_tokenizer, tiny_model, bars, tmp_path):
    config = small_config(epochs=1, log_interval=2)
    calls = []
    first = finetune_tokenizer(tiny_tokenizer, bars["train"], None, config, device="cpu", checkpoint_dir=tmp_path,
                               should_stop=lambda: len(calls) >= 3, on_progress=calls.append)
    assert first.stopped == "cancelled" and first.step == 6
    second = finetune_tokenizer(tiny_tokenizer, bars["train"], None, config, device="cpu", checkpoint_dir=tmp_path)
    assert second.stopped == "completed" and second.step == 8
    pred = finetune_predictor(tiny_model, tiny_tokenizer, bars["train"], bars["val"], small_config(max_steps=3),
                              device="cpu")
    assert (pred.stopped, pred.step, pred.total_steps) == ("max_steps", 3, 3)


def test_max_seconds_and_should_stop(tiny_tokenizer, tiny_model, bars):
    loop = make_loop("tokenizer", tiny_tokenizer, tiny_model, bars, small_config(max_seconds=1e-9))
    assert loop.fit().stopped == "max_seconds" and loop.step == 0
    loop = make_loop("tokenizer", tiny_tokenizer, tiny_model, bars, small_config(), should_stop=lambda: True)
    result = loop.fit()
    assert (result.stopped, result.step) == ("cancelled", 0)


def test_amp_is_off_on_cpu(tiny_tokenizer, tiny_model, bars):
    loop = make_loop("tokenizer", tiny_tokenizer, tiny_model, bars, small_config(amp=True, amp_dtype="float16"))
    assert not loop.use_amp and not loop.scaler.is_enabled()
