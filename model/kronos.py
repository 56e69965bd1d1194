"""Upstream's ``model.kronos`` names: the three classes, the sampling helpers, the low-level
autoregressive loop and the time-feature helper, plus every ``model.module`` name (upstream's
module star-imports them).

The loop runs on this package's decoder (``model/decoding.py``): the same tokens as upstream's
full-window loop for the same draws, computed with a key/value cache where that is exact.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from .decoding import generate
from .module import *  # noqa: F401,F403  (upstream's model.kronos exposes the module classes too)
from .module import __all__ as _module_names
from .predictor import TIME_COLUMNS, KronosPredictor, _as_datetime_index, _check_sampling, _progress
from .tokenizer import KronosTokenizer
from .transformer import Kronos

__all__ = [
    "Kronos", "KronosPredictor", "KronosTokenizer", "auto_regressive_inference", "calc_time_stamps",
    "sample_from_logits", "top_k_top_p_filtering", *_module_names,
]


def top_k_top_p_filtering(logits: torch.Tensor, top_k: int = 0, top_p: float = 1.0,
                          filter_value: float = -float("Inf"), min_tokens_to_keep: int = 1) -> torch.Tensor:
    """Set filtered logits (N, V) to ``filter_value`` **in place** and return them (spec §5.6).

    ``top_k > 0``: keep the logits not below the k-th largest (ties kept), with k at least
    ``min_tokens_to_keep``; top-p is then ignored. Else ``top_p < 1``: keep tokens in descending
    order up to and including the first at which the cumulative probability exceeds ``top_p``, and
    at least ``min_tokens_to_keep``. With neither, the logits come back unchanged.
    """
    if top_k > 0:
        k = min(max(int(top_k), int(min_tokens_to_keep)), logits.shape[-1])
        kth = torch.topk(logits, k, dim=-1).values[..., -1:]
        return logits.masked_fill_(logits < kth, filter_value)
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        cum = torch.softmax(sorted_logits, dim=-1).cumsum(dim=-1)
        drop = torch.zeros_like(cum, dtype=torch.bool)
        drop[..., 1:] = cum[..., :-1] > top_p
        drop[..., :max(1, int(min_tokens_to_keep))] = False
        return logits.masked_fill_(drop.scatter(-1, order, drop), filter_value)
    return logits


def sample_from_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                       top_p: float | None = None, sample_logits: bool = True) -> torch.Tensor:
    """One id per row of ``logits`` (N, V) -> (N, 1) int64, drawn from torch's global generator.

    Temperature, then ``top_k_top_p_filtering``, softmax, one ``torch.multinomial`` draw; with
    ``sample_logits=False`` the most probable id instead. ``None`` turns top-k/top-p off.
    Raises ``ValueError`` for a temperature <= 0 or a ``top_p`` outside (0, 1] (stricter than upstream).
    """
    temperature, top_k, top_p, _ = _check_sampling(temperature, top_k, top_p, 1)
    z = top_k_top_p_filtering(logits / temperature, top_k=top_k, top_p=top_p)
    probs = torch.softmax(z, dim=-1)
    if not sample_logits:
        return torch.topk(probs, 1, dim=-1).indices
    return torch.multinomial(probs, num_samples=1)


def auto_regressive_inference(tokenizer, model, x: torch.Tensor, x_stamp: torch.Tensor, y_stamp: torch.Tensor,
                              max_context: int, pred_len: int, clip: float = 5, T: float = 1.0, top_k: int = 0,
                              top_p: float = 0.99, sample_count: int = 5, verbose: bool = False,
                              use_kv_cache: bool = False) -> np.ndarray:
    """Forecast normalised bars (spec §5.5-§5.7); upstream's entry point of its back-test.

    Parameters
    ----------
    x : (B, L, 6) normalised context (clipped again to ``±clip`` here), on the models' device.
    x_stamp : (B, L, 5) and y_stamp : (B, pred_len, 5) time features.
    sample_count : sample paths per series, averaged in normalised space.
    use_kv_cache : accepted for upstream's signature; decoding caches where that is exact anyway.

    Returns
    -------
    numpy.ndarray (B, min(L + pred_len, max_context), 6)
        The mean over the samples of the final decode window; the forecast is its last pred_len rows.
        Draws come from torch's global generator (``torch.manual_seed`` makes a call repeatable).
    """
    T, top_k, top_p, sample_count = _check_sampling(T, top_k, top_p, sample_count)
    with torch.no_grad(), _progress(verbose, int(pred_len), f"{x.shape[0]} series x {sample_count} samples") as bar:
        y = generate(model, tokenizer, torch.clip(x, -clip, clip), x_stamp, y_stamp, int(pred_len), int(max_context),
                     T=T, top_k=top_k, top_p=top_p, sample_count=sample_count, generator=None, progress=bar,
                     full_window=True)
    return y.float().cpu().numpy().mean(axis=1)


def calc_time_stamps(x_timestamp) -> pd.DataFrame:
    """Timestamps (Series or DatetimeIndex) -> DataFrame of ``minute, hour, weekday, day, month``
    (weekday Monday = 0), indexed like a Series input."""
    ts = _as_datetime_index(x_timestamp, "x_timestamp")
    index = x_timestamp.index if isinstance(x_timestamp, pd.Series) else None
    values = (ts.minute, ts.hour, ts.day_of_week, ts.day, ts.month)
    return pd.DataFrame({name: np.asarray(v) for name, v in zip(TIME_COLUMNS, values)}, index=index)
