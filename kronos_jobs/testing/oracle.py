"""Reference ("oracle") forecaster: a plain full-recompute transcription of spec §5.3-§5.7.

It is deliberately naive and independent of ``model/predictor.py``: every step re-runs the whole
window through ``Kronos.decode_s1`` / ``Kronos.decode_s2`` (no cache), each series is repeated
``sample_count`` times *before* tokenisation (so every copy is encoded, as upstream does), and
sampling follows spec §5.6 literally. The fast predictor must give the same tokens.

Shared by the model tests and ``bench/predict.py`` (one copy only).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

PRICE_COLS = ["open", "high", "low", "close"]
FEATURE_COLS = PRICE_COLS + ["volume", "amount"]


def oracle_sample(logits: torch.Tensor, T: float, top_k: int, top_p: float,
                  generator: torch.Generator | None) -> torch.Tensor:
    """Spec §5.6: logits (N, V) -> ids (N, 1)."""
    z = logits / T
    if top_k > 0 or top_p < 1.0:
        if top_k > 0:
            k = min(max(top_k, 1), z.shape[-1])
            kth = torch.topk(z, k)[0][..., -1, None]
            z = z.masked_fill(z < kth, float("-inf"))
        else:
            sorted_z, order = torch.sort(z, descending=True)
            cum = torch.softmax(sorted_z, dim=-1).cumsum(dim=-1)
            drop_sorted = torch.zeros_like(cum, dtype=torch.bool)
            drop_sorted[..., 1:] = cum[..., :-1] > top_p
            drop = drop_sorted.scatter(-1, order, drop_sorted)
            z = z.masked_fill(drop, float("-inf"))
    probs = torch.softmax(z, dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator)


@torch.no_grad()
def oracle_generate(tokenizer, model, x, x_stamp, y_stamp, max_context, pred_len, clip=5.0, T=1.0,
                    top_k=0, top_p=0.9, sample_count=1, generator=None):
    """Spec §5.4-§5.7 on tensors.

    x (B, L, 6) normalised, x_stamp (B, L, 5), y_stamp (B, P, 5). Returns
    ``(mean (B, P, 6) float32 numpy in normalised space, samples (B, S, P, 6), s1 (B*S, L+P), s2)``.
    """
    B, L, _ = x.shape
    S = sample_count
    x = torch.clamp(x, -clip, clip)
    x = x.repeat_interleave(S, dim=0)  # (B*S, L, 6): every copy is tokenised, as upstream
    stamps = torch.cat([x_stamp, y_stamp], dim=1).repeat_interleave(S, dim=0)  # (B*S, L+P, 5)
    s1, s2 = tokenizer.encode(x, half=True)  # (B*S, L) each
    for i in range(pred_len):
        n = L + i
        lo = max(0, n - max_context)
        logits_s1, context = model.decode_s1(s1[:, lo:n], s2[:, lo:n], stamps[:, lo:n])
        a = oracle_sample(logits_s1[:, -1, :], T, top_k, top_p, generator)  # (B*S, 1)
        logits_s2 = model.decode_s2(context, a)
        b = oracle_sample(logits_s2[:, -1, :], T, top_k, top_p, generator)
        s1 = torch.cat([s1, a], dim=1)
        s2 = torch.cat([s2, b], dim=1)
    lo = max(0, L + pred_len - max_context)
    out = tokenizer.decode((s1[:, lo:], s2[:, lo:]), half=True)  # (B*S, W, 6)
    out = out.float().cpu().numpy().reshape(B, S, -1, out.shape[-1])[:, :, -pred_len:]
    return out.mean(axis=1), out, s1, s2


def time_features(ts) -> np.ndarray:
    """(N,) datetimes -> (N, 5) float32 [minute, hour, weekday, day, month]."""
    ts = pd.DatetimeIndex(ts)
    return np.stack([ts.minute, ts.hour, ts.day_of_week, ts.day, ts.month], axis=1).astype(np.float32)


def oracle_predict_batch(tokenizer, model, df_list, x_ts_list, y_ts_list, pred_len, max_context=512,
                         clip=5.0, T=1.0, top_k=0, top_p=0.9, sample_count=1, seed=None, device="cpu"):
    """Upstream-style ``predict_batch`` (equal context lengths) -> list of DataFrames."""
    xs, mus, sigmas = [], [], []
    for df in df_list:
        df = df.copy()
        if "volume" not in df.columns:
            df["volume"] = 0.0
            df["amount"] = 0.0
        elif "amount" not in df.columns:
            df["amount"] = df["volume"] * df[PRICE_COLS].mean(axis=1)
        x = df[FEATURE_COLS].to_numpy(dtype=np.float32)
        mu, sigma = np.mean(x, axis=0), np.std(x, axis=0)
        xs.append(np.clip((x - mu) / (sigma + 1e-5), -clip, clip))
        mus.append(mu)
        sigmas.append(sigma)
    x = torch.from_numpy(np.stack(xs)).to(device)
    x_stamp = torch.from_numpy(np.stack([time_features(t) for t in x_ts_list])).to(device)
    y_stamp = torch.from_numpy(np.stack([time_features(t) for t in y_ts_list])).to(device)
    generator = None
    if seed is not None:
        generator = torch.Generator(device=device).manual_seed(seed)
    mean, _, _, _ = oracle_generate(tokenizer, model, x, x_stamp, y_stamp, max_context, pred_len, clip,
                                    T, top_k, top_p, sample_count, generator)
    out = []
    for b, y_ts in enumerate(y_ts_list):
        values = mean[b] * (sigmas[b] + 1e-5) + mus[b]
        out.append(pd.DataFrame(values, columns=FEATURE_COLS, index=pd.DatetimeIndex(y_ts)))
    return out
