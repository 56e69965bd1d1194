"""Upstream's fine-tuning scripts, call for call, on our package.

The tests make the calls that upstream's ``finetune_csv/train_sequential.py`` (tokenizer phase, then
predictor phase, then a forecast with the result) and ``finetune/`` (``train_tokenizer.py``,
``train_predictor.py``, ``qlib_test.py``) make, in the same order and through the same names, on
tiny random checkpoints saved with our ``save_pretrained`` and data built here. The datasets and
loops are written here from spec §6; nothing is copied from upstream.

``test_*_loss_curve_*`` check the numbers: a few fine-tuning steps from the same seed follow the loss
curve that a float64 transcription of the spec (``spec_tokenizer.py``) gives for the same batches.
"""

from __future__ import annotations

import json
import math
import random

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F

from kronos_jobs.testing.tiny import generate_bars
from model import Kronos, KronosPredictor, KronosTokenizer
from model.kronos import auto_regressive_inference, calc_time_stamps
from tests.model.spec_tokenizer import float64_params, tokenizer_training_loss

FEATURES = ["open", "high", "low", "close", "volume", "amount"]
TIME_FEATURES = ["minute", "hour", "weekday", "day", "month"]


# ---- data, as upstream's two pipelines prepare it (spec §6.1, §6.2) ---------------------------------

class CsvKlineWindows(torch.utils.data.Dataset):
    """The CSV pipeline's dataset: chronological split, windows normalised over the whole window."""

    def __init__(self, csv_path, split, lookback, predict, clip=5.0, train_ratio=0.8, val_ratio=0.2):
        df = pd.read_csv(csv_path)
        df["timestamps"] = pd.to_datetime(df["timestamps"])
        df = df.sort_values("timestamps").reset_index(drop=True)
        stamps = calc_time_stamps(df["timestamps"])
        n = len(df)
        lo, hi = {"train": (0, int(n * train_ratio)), "val": (int(n * train_ratio), int(n * (train_ratio + val_ratio)))}[split]
        self.x = df[FEATURES].to_numpy(np.float32)[lo:hi]
        self.stamp = stamps[TIME_FEATURES].to_numpy(np.float32)[lo:hi]
        self.window, self.clip, self.split, self.epoch = lookback + predict + 1, clip, split, 0

    def set_epoch_seed(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.x) - self.window + 1

    def __getitem__(self, idx):
        span = len(self.x) - self.window + 1
        start = (idx * 9973 + (self.epoch + 1) * 104729) % span if self.split == "train" else idx % span
        x = self.x[start:start + self.window]
        x = np.clip((x - x.mean(0)) / (x.std(0) + 1e-5), -self.clip, self.clip)
        return torch.from_numpy(x), torch.from_numpy(self.stamp[start:start + self.window].copy())


class QlibStyleWindows(torch.utils.data.Dataset):
    """The Qlib pipeline's dataset: random (symbol, start) pairs, normalised over the lookback rows."""

    def __init__(self, frames: dict, lookback, predict, n_samples, seed, clip=5.0):
        self.frames, self.lookback, self.window = frames, lookback, lookback + predict + 1
        self.pairs = [(sym, s) for sym, df in frames.items() for s in range(len(df) - self.window + 1)]
        self.n_samples, self.seed, self.clip = min(n_samples, len(self.pairs)), seed, clip
        self.rng = random.Random(seed)

    def set_epoch_seed(self, epoch):
        self.rng.seed(self.seed + epoch)

    def __len__(self):
        return self.n_samples

    def __getitem__(self, idx):
        sym, start = self.pairs[self.rng.randint(0, len(self.pairs) - 1)]
        df = self.frames[sym].iloc[start:start + self.window]
        x = df[FEATURES].to_numpy(np.float32)
        past = x[: self.lookback]
        x = np.clip((x - past.mean(0)) / (past.std(0) + 1e-5), -self.clip, self.clip)
        return torch.from_numpy(x), torch.from_numpy(calc_time_stamps(df["timestamps"]).to_numpy(np.float32).copy())


def _loaders(train_set, val_set, batch_size):
    return (torch.utils.data.DataLoader(train_set, batch_size=batch_size, shuffle=True, drop_last=True),
            torch.utils.data.DataLoader(val_set, batch_size=batch_size, shuffle=False))


# ---- the two phases, with upstream's calls ------------------------------------------------------------

def train_tokenizer_phase(tokenizer, train_loader, val_loader, epochs, lr, save_dir, accumulation_steps=1):
    optimizer = torch.optim.AdamW(tokenizer.parameters(), lr=lr, weight_decay=0.1)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, steps_per_epoch=len(train_loader),
                                                    epochs=epochs, pct_start=0.03, div_factor=10)
    best, history = float("inf"), []
    for epoch in range(epochs):
        tokenizer.train()
        train_loader.dataset.set_epoch_seed(epoch * 10000)
        for batch_x, _ in train_loader:
            optimizer.zero_grad()
            step = batch_x.shape[0] // accumulation_steps
            for j in range(accumulation_steps):
                part = batch_x[j * step:(j + 1) * step]
                (z_pre, z), bsq_loss, _, _ = tokenizer(part)
                loss = (F.mse_loss(z_pre, part) + F.mse_loss(z, part) + bsq_loss) / 2 / accumulation_steps
                loss.backward()
            torch.nn.utils.clip_grad_norm_(tokenizer.parameters(), max_norm=2.0)
            optimizer.step()
            scheduler.step()
            history.append(loss.item() * accumulation_steps)
        tokenizer.eval()
        with torch.no_grad():
            val = np.mean([F.mse_loss(tokenizer(x)[0][1], x).item() for x, _ in val_loader])
        if val < best:
            best = val
            tokenizer.save_pretrained(save_dir)
    return best, history


def predictor_val_loss(model, tokenizer, val_loader):
    model.eval()
    losses = []
    with torch.no_grad():
        for batch_x, batch_stamp in val_loader:
            s1, s2 = tokenizer.encode(batch_x, half=True)
            logits = model(s1[:, :-1], s2[:, :-1], batch_stamp[:, :-1, :])
            losses.append(model.head.compute_loss(logits[0], logits[1], s1[:, 1:], s2[:, 1:])[0].item())
    return float(np.mean(losses))


def train_predictor_phase(model, tokenizer, train_loader, val_loader, epochs, lr, save_dir):
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.1)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, steps_per_epoch=len(train_loader),
                                                    epochs=epochs, pct_start=0.03, div_factor=10)
    best, history = float("inf"), []
    for epoch in range(epochs):
        model.train()
        train_loader.dataset.set_epoch_seed(epoch * 10000)
        for batch_x, batch_stamp in train_loader:
            with torch.no_grad():
                token_seq_0, token_seq_1 = tokenizer.encode(batch_x, half=True)
            token_in = [token_seq_0[:, :-1], token_seq_1[:, :-1]]
            token_out = [token_seq_0[:, 1:], token_seq_1[:, 1:]]
            logits = model(token_in[0], token_in[1], batch_stamp[:, :-1, :])
            loss, s1_loss, s2_loss = model.head.compute_loss(logits[0], logits[1], token_out[0], token_out[1])
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=3.0)
            optimizer.step()
            scheduler.step()
            history.append(loss.item())
            assert s1_loss.ndim == s2_loss.ndim == 0
        val = predictor_val_loss(model, tokenizer, val_loader)
        if val < best:
            best = val
            model.save_pretrained(save_dir)
    return best, history


# ---- finetune_csv/train_sequential.py ---------------------------------------------------------------

def test_train_sequential_call_pattern(tmp_path, tiny_tokenizer_dir, tiny_model_dir):
    torch.manual_seed(42)
    np.random.seed(42)
    random.seed(42)
    csv = tmp_path / "bars.csv"
    generate_bars(420, seed=3).to_csv(csv, index=False)
    lookback, predict, batch = 24, 8, 16
    base = tmp_path / "outputs" / "exp"
    tokenizer_best = base / "tokenizer" / "best_model"
    basemodel_best = base / "basemodel" / "best_model"

    def loaders():
        return _loaders(CsvKlineWindows(csv, "train", lookback, predict), CsvKlineWindows(csv, "val", lookback, predict),
                        batch)

    # phase 1: tokenizer, from the pretrained checkpoint
    tokenizer = KronosTokenizer.from_pretrained(tiny_tokenizer_dir).to("cpu")
    train_loader, val_loader = loaders()
    tok_best, tok_hist = train_tokenizer_phase(tokenizer, train_loader, val_loader, epochs=2, lr=2e-3,
                                               save_dir=tokenizer_best)
    assert (tokenizer_best / "config.json").is_file() and math.isfinite(tok_best)

    # phase 2: predictor on the fine-tuned tokenizer; pre_trained_predictor=false builds the
    # architecture from the pretrained config.json with upstream's fallback defaults (spec §2.4)
    tokenizer = KronosTokenizer.from_pretrained(tokenizer_best)
    arch = json.loads((tiny_model_dir / "config.json").read_text())
    model = Kronos(
        s1_bits=arch.get("s1_bits", 10), s2_bits=arch.get("s2_bits", 10), n_layers=arch.get("n_layers", 12),
        d_model=arch.get("d_model", 832), n_heads=arch.get("n_heads", 16), ff_dim=arch.get("ff_dim", 2048),
        ffn_dropout_p=arch.get("ffn_dropout_p", 0.2), attn_dropout_p=arch.get("attn_dropout_p", 0.0),
        resid_dropout_p=arch.get("resid_dropout_p", 0.2), token_dropout_p=arch.get("token_dropout_p", 0.0),
        learn_te=arch.get("learn_te", True))
    tokenizer, model = tokenizer.to("cpu"), model.to("cpu")
    train_loader, val_loader = loaders()
    initial_val = predictor_val_loss(model, tokenizer, val_loader)
    best, hist = train_predictor_phase(model, tokenizer, train_loader, val_loader, epochs=3, lr=2e-3,
                                       save_dir=basemodel_best)
    steps = len(train_loader)
    assert np.mean(hist[-steps:]) < np.mean(hist[:5]) - 0.1, "the predictor's training loss goes down"
    assert best < initial_val - 0.1, "and so does its validation loss"

    # then a forecast with what was saved, as upstream's examples load it
    predictor = KronosPredictor(Kronos.from_pretrained(basemodel_best), KronosTokenizer.from_pretrained(tokenizer_best),
                                device="cpu", max_context=512)
    df = pd.read_csv(csv, parse_dates=["timestamps"])
    out = predictor.predict(df=df.loc[:99, FEATURES], x_timestamp=df.loc[:99, "timestamps"],
                            y_timestamp=df.loc[100:109, "timestamps"], pred_len=10, T=1.0, top_p=0.9,
                            sample_count=1, verbose=False)
    assert out.shape == (10, 6) and np.isfinite(out.to_numpy()).all()


# ---- finetune/ (train_tokenizer.py, train_predictor.py, qlib_test.py) ----------------------------------

def test_qlib_pipeline_call_pattern(tmp_path, tiny_tokenizer_dir, tiny_model_dir):
    seed = 100
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    frames = {f"SH60000{i}": generate_bars(160, seed=10 + i, freq="1D", start="2020-01-01") for i in range(3)}
    lookback, predict, batch = 20, 5, 8
    train_set = QlibStyleWindows({k: v.iloc[:120] for k, v in frames.items()}, lookback, predict, 160, seed)
    val_set = QlibStyleWindows({k: v.iloc[100:] for k, v in frames.items()}, lookback, predict, 48, seed + 1)
    train_loader, val_loader = _loaders(train_set, val_set, batch)
    save = tmp_path / "outputs" / "models"

    tokenizer = KronosTokenizer.from_pretrained(tiny_tokenizer_dir)
    _, tok_hist = train_tokenizer_phase(tokenizer, train_loader, val_loader, epochs=1, lr=2e-4,
                                       save_dir=save / "finetune_tokenizer" / "checkpoints" / "best_model",
                                       accumulation_steps=2)
    assert all(math.isfinite(v) for v in tok_hist)

    tokenizer = KronosTokenizer.from_pretrained(save / "finetune_tokenizer" / "checkpoints" / "best_model").eval()
    model = Kronos.from_pretrained(tiny_model_dir)
    initial_val = predictor_val_loss(model, tokenizer, val_loader)
    best, hist = train_predictor_phase(model, tokenizer, train_loader, val_loader, epochs=3, lr=2e-3,
                                       save_dir=save / "finetune_predictor" / "checkpoints" / "best_model")
    assert np.mean(hist[-len(train_loader):]) < np.mean(hist[:5]) - 0.1
    assert best < initial_val

    # back-test: sequential windows normalised by their context, averaged sample paths
    tokenizer = KronosTokenizer.from_pretrained(save / "finetune_tokenizer" / "checkpoints" / "best_model").eval()
    model = Kronos.from_pretrained(save / "finetune_predictor" / "checkpoints" / "best_model").eval()
    xs, stamps, ystamps = [], [], []
    for df in frames.values():
        ctx, fut = df.iloc[130:150], df.iloc[150:155]
        x = ctx[FEATURES].to_numpy(np.float32)
        xs.append((x - x.mean(0)) / (x.std(0) + 1e-5))
        stamps.append(calc_time_stamps(ctx["timestamps"]).to_numpy(np.float32))
        ystamps.append(calc_time_stamps(fut["timestamps"]).to_numpy(np.float32))
    x, x_stamp, y_stamp = (torch.from_numpy(np.stack(a)) for a in (xs, stamps, ystamps))
    preds = auto_regressive_inference(tokenizer, model, x, x_stamp, y_stamp, 512, predict, 5.0, 0.6, 0, 0.9, 5)
    assert preds.shape == (3, lookback + predict, 6)
    signal = preds[:, -predict:, 3].mean(axis=1) - x[:, -1, 3].numpy()
    assert np.isfinite(signal).all()


# ---- the numbers: loss curves against a float64 transcription of the spec ------------------------------

def _spec_curve(tokenizer, cfg, batches, lr, betas, total_steps, pct_start, cycle_momentum):
    """The same steps in float64 from spec §4.2 + the optimiser/schedule/clip the loop documents."""
    params = float64_params(tokenizer)
    optimizer = torch.optim.AdamW(list(params.values()), lr=lr, betas=betas, weight_decay=0.1)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=total_steps, pct_start=pct_start,
                                                    div_factor=10, cycle_momentum=cycle_momentum)
    curve = []
    for x in batches:
        optimizer.zero_grad()
        loss = tokenizer_training_loss(params, x.double(), cfg)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(list(params.values()), 2.0)
        optimizer.step()
        scheduler.step()
        curve.append(loss.item())
    return np.array(curve)


def test_upstream_tokenizer_loss_curve_follows_the_spec(tiny_tokenizer_config):
    """Upstream's tokenizer loop (default AdamW betas, OneCycle with momentum cycling) on our model."""
    torch.manual_seed(5)
    tokenizer = KronosTokenizer(**tiny_tokenizer_config)
    g = torch.Generator().manual_seed(6)
    batches = [torch.randn(8, 24, 6, generator=g).clamp(-5, 5) for _ in range(8)]
    lr, steps = 2e-2, len(batches)
    expected = _spec_curve(tokenizer, tiny_tokenizer_config, batches, lr, (0.9, 0.999), steps, 0.03, True)

    optimizer = torch.optim.AdamW(tokenizer.parameters(), lr=lr, weight_decay=0.1)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.03,
                                                    div_factor=10)
    curve = []
    tokenizer.train()
    for x in batches:
        optimizer.zero_grad()
        (z_pre, z), bsq_loss, _, _ = tokenizer(x)
        loss = (F.mse_loss(z_pre, x) + F.mse_loss(z, x) + bsq_loss) / 2
        loss.backward()
        torch.nn.utils.clip_grad_norm_(tokenizer.parameters(), max_norm=2.0)
        optimizer.step()
        scheduler.step()
        curve.append(loss.item())
    assert expected[-1] < expected[0]
    np.testing.assert_allclose(curve, expected, rtol=2e-5)


def test_our_finetune_loop_tokenizer_loss_curve_follows_the_spec(tiny_tokenizer_config):
    """``finetune_tokenizer`` (configured betas, no momentum cycling, windows in a seeded order)."""
    from model.finetune import FinetuneConfig, FinetuneLoop
    from model.windows import BarWindows

    torch.manual_seed(5)
    tokenizer = KronosTokenizer(**tiny_tokenizer_config)
    config = FinetuneConfig(epochs=1, batch_size=8, lookback=16, predict_window=4, seed=3, max_steps=6,
                            tokenizer_learning_rate=2e-2, log_interval=1)
    data = [generate_bars(80, seed=s) for s in range(2)]
    windows = BarWindows(data, config.lookback, config.predict_window, config.clip)
    order = torch.randperm(len(windows), generator=torch.Generator().manual_seed(config.seed + 0)).tolist()
    batches = [windows.batch(order[i * 8:(i + 1) * 8])[0] for i in range(6)]
    steps = 6
    expected = _spec_curve(tokenizer, tiny_tokenizer_config, batches, config.tokenizer_learning_rate,
                           (config.adam_beta1, config.adam_beta2), steps, max(config.pct_start, 2.0 / steps), False)

    events = []
    loop = FinetuneLoop("tokenizer", tokenizer, windows, None, config, device="cpu", on_progress=events.append)
    loop.fit()
    curve = [e["train_loss"] for e in events if e["val_loss"] is None][:steps]
    assert len(curve) == steps and expected[-1] < expected[0]
    np.testing.assert_allclose(curve, expected, rtol=2e-5)
