"""KronosPredictor: pandas bars in, forecast bars out (spec §5), with fast exact decoding (spec §7.4).

The predictor is the engine around the pure modules (like nanochat's ``Engine``). It owns input
checks, normalisation, the decoding loop with its key/value cache, sampling and batching:

* each context is tokenised and prefilled **once** per series; the cache is then copied to the
  ``sample_count`` sample rows;
* while the window grows (``n <= max_context``) one new token per step goes through the trunk
  with a KV cache; once it slides the whole window is recomputed, because dropping the oldest token
  changes every remaining hidden state (§7.4) — this keeps the output identical to the reference;
* the s1 head and the dependency layer run at the last position only;
* all series and samples of a call share one batched loop (series of different context lengths are
  grouped by length), sampling stays on the device and draws from one ``torch.Generator`` per call;
* on CUDA, a chunk that runs out of memory is retried with half the rows, and later calls start
  from the smaller size (``KronosPredictor._decode``; reported in ``last_decode_info``);
* on a CPU, the matrix kernel of every weight shape and row regime is the fastest one measured on
  this machine that agrees with float64 (model/kernels.py), and the constructor warms the whole
  path up (packing, kernel choice, first allocations), so a process's first forecast costs what
  later ones do.

The low-level loop lives in ``model/decoding.py``; this module is the user-facing API.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import time
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import torch

from .decoding import PackedKronos, generate
from .device import DeviceName, resolve_device
from .kernels import KernelPlanner, native_bf16_reason

logger = logging.getLogger(__name__)

PRICE_COLUMNS = ("open", "high", "low", "close")
FEATURE_COLUMNS = PRICE_COLUMNS + ("volume", "amount")
TIME_COLUMNS = ("minute", "hour", "weekday", "day", "month")  # columns of a stamp, in model order
DEFAULT_MAX_BATCH_SIZE = 64  # rows (series x samples) decoded together; bounds KV-cache memory
AUTOCAST_DTYPES = (torch.bfloat16, torch.float16)


@dataclasses.dataclass
class Forecast:
    """Result of ``predict``/``predict_batch`` when quantiles or samples are asked for.

    Attributes
    ----------
    mean : pandas.DataFrame
        (P, 6) the upstream output: mean of the samples in normalised space, de-normalised;
        index = the y timestamps.
    quantiles : dict[float, pandas.DataFrame]
        level -> (P, 6) quantile over the S de-normalised sample paths (empty if not asked for).
    samples : numpy.ndarray or None
        (S, P, 6) float32 de-normalised sample paths when ``return_samples=True``.
    """

    mean: pd.DataFrame
    quantiles: dict[float, pd.DataFrame]
    samples: np.ndarray | None = None


@dataclasses.dataclass
class _Series:
    x: np.ndarray  # (L, 6) float32, normalised and clipped
    mu: np.ndarray  # (6,)
    sigma: np.ndarray  # (6,)
    x_stamp: np.ndarray  # (L, 5)
    y_stamp: np.ndarray  # (P, 5)
    index: pd.DatetimeIndex


def _as_datetime_index(ts, name: str) -> pd.DatetimeIndex:
    if isinstance(ts, pd.DatetimeIndex):
        return ts
    try:
        out = pd.DatetimeIndex(ts)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{name}: expected a pandas Series or DatetimeIndex of datetimes ({exc})") from exc
    if isinstance(ts, pd.Series) and out.name is None:
        out.name = ts.name
    return out


def time_features(ts: pd.DatetimeIndex) -> np.ndarray:
    """(N,) timestamps -> (N, 5) float32 columns ``[minute, hour, weekday, day, month]`` (Monday = 0)."""
    return np.stack([ts.minute, ts.hour, ts.day_of_week, ts.day, ts.month], axis=1).astype(np.float32)


def _prepare(df, x_timestamp, y_timestamp, pred_len: int, clip: float, where: str = "") -> _Series:
    """Check and normalise one series (spec §5.2-5.3); ``where`` is e.g. "[3]" inside a batch."""
    if not isinstance(df, pd.DataFrame):
        raise ValueError(f"df{where}: expected a pandas DataFrame, got {type(df).__name__}")
    missing = [c for c in PRICE_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"df{where}: missing price column(s) {missing}; required: {list(PRICE_COLUMNS)}")
    if len(df) == 0:
        raise ValueError(f"df{where}: the context is empty")
    df = df.copy()
    if "volume" not in df.columns:
        df["volume"] = 0.0
        df["amount"] = 0.0  # upstream zeroes an existing amount too (spec §5.2)
    elif "amount" not in df.columns:
        df["amount"] = df["volume"] * df[list(PRICE_COLUMNS)].mean(axis=1)
    try:
        x = df[list(FEATURE_COLUMNS)].to_numpy(dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"df{where}: columns {list(FEATURE_COLUMNS)} must be numeric ({exc})") from exc
    bad = ~np.isfinite(x)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise ValueError(f"df{where}: {int(bad.sum())} NaN/inf value(s), first in column "
                         f"{FEATURE_COLUMNS[col]!r} at row {int(row)}")
    x_ts = _as_datetime_index(x_timestamp, f"x_timestamp{where}")
    y_ts = _as_datetime_index(y_timestamp, f"y_timestamp{where}")
    if len(x_ts) != len(df):
        raise ValueError(f"x_timestamp{where}: has {len(x_ts)} rows, df has {len(df)}")
    if len(y_ts) != pred_len:
        raise ValueError(f"y_timestamp{where}: has {len(y_ts)} rows, pred_len is {pred_len}")
    if x_ts.hasnans or y_ts.hasnans:
        raise ValueError(f"x_timestamp{where}/y_timestamp{where}: contains NaT")
    mu, sigma = x.mean(axis=0), x.std(axis=0)  # population std (ddof 0), float32 as upstream
    x = np.clip((x - mu) / (sigma + 1e-5), -clip, clip)
    return _Series(x, mu, sigma, time_features(x_ts), time_features(y_ts), y_ts)


class KronosPredictor:
    """Forecast OHLCV bars with a Kronos model and its tokenizer.

    Parameters
    ----------
    model : Kronos
    tokenizer : KronosTokenizer
    device : str or torch.device
        ``auto`` | ``cpu`` | ``cuda`` | ``cuda:N`` | ``mps``, resolved by ``model.device.resolve_device``;
        an unavailable device falls back to CPU and the reason is kept in ``device_warning``. ``None``
        means ``auto``. The resolved ``device`` attribute is a ``DeviceName``: the string upstream
        code compares with (``"cpu"``, ``"cuda:0"``), with ``.type``/``.index`` like a ``torch.device``.
    max_context : int
        Window of the predictor (512 for Kronos-small/base, 2048 for Kronos-mini).
    clip : float
        Clip of the normalised inputs.
    autocast_dtype : torch.dtype, optional
        Opt-in and **approximate**: run the modules under ``torch.autocast`` with bfloat16/float16.
        Faster, but tokens can differ from the float32 reference. On CUDA bfloat16 or float16; on a
        CPU bfloat16 only, and only where the CPU multiplies it natively (AVX-512 BF16 or AMX):
        elsewhere torch emulates it more slowly than float32, so asking for it is a ``ValueError``.
    max_batch_size : int
        Default number of rows (series x samples) decoded together; bounds the cache memory.
    cuda_graphs : bool
        CUDA only, opt-in: replay each call's one-token steps as one captured CUDA graph
        (model/step_graph.py) instead of launching every kernel; same maths as the default path.
    cpu_kernel : str
        Float32 matrix kernel on a CPU: ``auto`` (measured per weight shape and row regime, see
        model/kernels.py), ``addmm`` or ``onednn`` (forced, nothing measured). Ignored on other
        devices, which always use ``torch.addmm``.
    kernel_cache_dir : path, optional
        Where ``auto`` keeps its measurements (default ``model.kernels.default_cache_dir()``, under
        ``$XDG_CACHE_HOME``); ``False`` keeps none and measures in every process.
    warm_up : bool
        Run one short greedy forecast at construction (packing, kernel choice, first allocations
        and lazy initialisation happen here, not in the first real call).

    Attributes
    ----------
    price_cols, vol_col, amt_vol, time_cols
        Upstream's read-only column names: ``["open", "high", "low", "close"]``, ``"volume"``,
        ``"amount"``, ``["minute", "hour", "weekday", "day", "month"]``.
    oom_backoff : bool
        Retry a chunk with half the rows when decoding it raises ``torch.OutOfMemoryError``. True on
        CUDA, where allocation failures raise that class; False elsewhere (a CPU allocation failure
        is a plain ``RuntimeError`` and propagates as before).
    oom_rows_cap : int or None
        Rows per chunk learned from out-of-memory errors: every later call decodes at most
        ``min(max_batch_size, oom_rows_cap)`` rows together. It only shrinks; set it to ``None`` to
        try larger chunks again (e.g. after another process freed the GPU).
    last_timings : dict
        Wall-clock split of the last call (``prepare_s``, ``decode_s``, ``postprocess_s``).
    last_decode_info : dict
        Chunking of the last call: ``requested_rows_per_chunk`` (the argument or ``max_batch_size``),
        ``rows_per_chunk`` (the limit in force when the call ended) and ``oom_retries`` (chunks
        retried after an out-of-memory error); also set when the call gave up. Plus ``kernel``, a
        copy of ``kernel_info``.
    kernel_info : dict
        How matrices are computed: ``precision`` (``fp32`` or ``approximate-bf16``/``-fp16``),
        ``requested`` and chosen ``kernel`` (``addmm``, ``onednn`` or ``mixed``), ``source``
        (measured / disk cache / forced / the device), ``cpu``, ``threads`` and ``by_shape``
        (weight ``outxin`` -> row regime -> kernel). Filled when the weights are first packed.
    warm_up_seconds : float
        Time the construction's warm-up took (0.0 without one).
    """

    def __init__(self, model, tokenizer, device="auto", max_context: int = 512, clip: float = 5.0,
                 autocast_dtype: torch.dtype | None = None, max_batch_size: int = DEFAULT_MAX_BATCH_SIZE,
                 cuda_graphs: bool = False, cpu_kernel: str = "auto", kernel_cache_dir=None,
                 warm_up: bool = True):
        resolved, self.device_warning = resolve_device(device)
        self.device = DeviceName(resolved)
        if self.device_warning:
            logger.warning(self.device_warning)
        if int(max_context) < 1:
            raise ValueError(f"max_context must be >= 1, got {max_context}")
        if not clip > 0:
            raise ValueError(f"clip must be > 0, got {clip}")
        if autocast_dtype is not None:
            if autocast_dtype not in AUTOCAST_DTYPES:
                raise ValueError(f"autocast_dtype must be one of {AUTOCAST_DTYPES} or None, got {autocast_dtype}")
            if self.device.type == "cpu":
                if autocast_dtype != torch.bfloat16:
                    raise ValueError(f"autocast_dtype on a CPU must be torch.bfloat16, got {autocast_dtype}")
                reason = native_bf16_reason()
                if reason:
                    raise ValueError(f"autocast_dtype bfloat16 on a CPU needs native bfloat16 support: {reason}; "
                                     "it would be slower than float32 here. Use float32 (autocast_dtype=None).")
            elif self.device.type != "cuda":
                raise ValueError(f"autocast_dtype needs a CUDA device or a CPU; the device is {self.device}")
        if cuda_graphs and self.device.type != "cuda":
            raise ValueError(f"cuda_graphs is CUDA-only; the device is {self.device}")
        self.cuda_graphs = bool(cuda_graphs)
        self.max_context, self.clip = int(max_context), float(clip)
        self.autocast_dtype = autocast_dtype
        self.max_batch_size = _check_positive_int(max_batch_size, "max_batch_size")
        # .to() drops the rotary tables' cache, so nothing stale stays on the old device.
        self.model = model.to(self.device).eval()
        self.tokenizer = tokenizer.to(self.device).eval()
        self.oom_backoff = self.device.type == "cuda"
        self.oom_rows_cap: int | None = None
        self.last_timings: dict[str, float] = {}
        self.last_decode_info: dict = {}
        self._packed: PackedKronos | None = None
        self._packed_key: tuple | None = None
        # Validates cpu_kernel on every device; only a float32 CPU predictor plans with it.
        self._planner = KernelPlanner(cpu_kernel, window_rows=self.max_context, cache_dir=kernel_cache_dir)
        self.kernel_info: dict = {}
        self.warm_up_seconds = 0.0
        if warm_up:
            self.warm_up()

    @classmethod
    def from_pretrained(cls, model_name_or_dir, tokenizer_name_or_dir, device="auto", max_context: int = 512,
                        revision: str | None = None, tokenizer_revision: str | None = None,
                        cache_dir=None, **kwargs) -> "KronosPredictor":
        """Load both checkpoints (hub ids or local directories) and build a predictor.

        ``kwargs`` go to the constructor (``clip``, ``autocast_dtype``, ``max_batch_size``, ``cuda_graphs``,
        ``cpu_kernel``, ``kernel_cache_dir``, ``warm_up``).
        """
        from .tokenizer import KronosTokenizer
        from .transformer import Kronos

        model = Kronos.from_pretrained(model_name_or_dir, revision=revision, cache_dir=cache_dir)
        tokenizer = KronosTokenizer.from_pretrained(tokenizer_name_or_dir, revision=tokenizer_revision,
                                                    cache_dir=cache_dir)
        return cls(model, tokenizer, device=device, max_context=max_context, **kwargs)

    # ---- upstream's column names ----------------------------------------------------------------

    price_cols = property(lambda self: list(PRICE_COLUMNS), doc="``['open', 'high', 'low', 'close']``")
    vol_col = property(lambda self: "volume", doc="``'volume'``")
    amt_vol = property(lambda self: "amount", doc="``'amount'``")
    time_cols = property(lambda self: list(TIME_COLUMNS), doc="``['minute', 'hour', 'weekday', 'day', 'month']``")

    # ---- public verbs -------------------------------------------------------------------------

    def predict(self, df: pd.DataFrame, x_timestamp, y_timestamp, pred_len: int, T: float = 1.0,
                top_k: int = 0, top_p: float = 0.9, sample_count: int = 1, verbose: bool = False,
                seed: int | None = None, quantiles: Sequence[float] | None = None,
                return_samples: bool = False, max_batch_size: int | None = None, use_kv_cache: bool = False):
        """Forecast one series.

        Parameters
        ----------
        df : DataFrame (L rows)
            Columns ``open, high, low, close`` and optionally ``volume``, ``amount``; other columns
            and the index are ignored. Without ``volume`` both volume and amount are taken as 0;
            without ``amount`` it is ``volume * mean(open, high, low, close)``.
        x_timestamp : Series or DatetimeIndex (L)
            Timestamps of the rows of ``df``.
        y_timestamp : Series or DatetimeIndex (pred_len)
            Timestamps of the bars to forecast.
        pred_len : int
            Steps to forecast, 1 .. max_context.
        T, top_k, top_p : sampling temperature (> 0), top-k (0 = off; wins over top-p) and nucleus
            mass in (0, 1]. ``top_k=1`` is greedy.
        sample_count : int
            Sample paths S; the mean is taken in normalised space (upstream behaviour).
        verbose : bool
            Show a tqdm progress bar per decoded chunk (one step per forecast bar), as upstream.
        seed : int, optional
            Seeds this call's own ``torch.Generator``; same inputs + seed + batch size give the same
            output (a batch size lowered after a CUDA out-of-memory error changes the draws of
            sampled, not greedy, forecasts). ``None`` draws from torch's global generator of the
            device, as upstream: ``torch.manual_seed(n)`` before the call makes it repeatable.
        quantiles : sequence of float in (0, 1), optional
            Levels computed over the S de-normalised sample paths.
        return_samples : bool
            Also return the (S, P, 6) sample paths.
        max_batch_size : int, optional
            Rows decoded together (default: the predictor's); capped by ``oom_rows_cap``.
        use_kv_cache : bool
            Upstream's switch for its key/value cache. Decoding here always caches where that is
            exact and recomputes where it is not, so the flag changes nothing.

        Returns
        -------
        DataFrame (P, 6) indexed by ``y_timestamp`` — or a ``Forecast`` when ``quantiles`` or
        ``return_samples`` is given.
        """
        return self.predict_batch([df], [x_timestamp], [y_timestamp], pred_len, T=T, top_k=top_k, top_p=top_p,
                                  sample_count=sample_count, verbose=verbose, seed=seed, quantiles=quantiles,
                                  return_samples=return_samples, max_batch_size=max_batch_size,
                                  use_kv_cache=use_kv_cache)[0]

    def predict_batch(self, df_list: Sequence[pd.DataFrame], x_timestamp_list, y_timestamp_list,
                      pred_len: int, T: float = 1.0, top_k: int = 0, top_p: float = 0.9,
                      sample_count: int = 1, verbose: bool = False, seed: int | None = None,
                      quantiles: Sequence[float] | None = None, return_samples: bool = False,
                      max_batch_size: int | None = None, use_kv_cache: bool = False, should_stop=None,
                      progress: Callable[[int, int], None] | None = None) -> list:
        """Forecast many series in one batched loop; arguments as ``predict``, one list entry per series.

        Context lengths may differ between series (they are decoded in groups of equal length).
        ``should_stop`` (a callable returning bool, optional) is asked between decode steps; when it
        answers True the call raises ``model.decoding.DecodeStopped`` and returns nothing.
        ``progress(done, total)``, when given, is called after every decoding step with the
        row-steps decoded so far and in all (a row is one sample path of one series; ``total`` is
        ``len(df_list) * sample_count * pred_len``), so a caller can report progress within a call.
        Returns a list in input order, of DataFrames or of ``Forecast`` objects (see ``predict``).
        """
        self.last_decode_info = {}  # filled by _decode, kept up to date when it raises
        pred_len = self._check_pred_len(pred_len)
        T, top_k, top_p, sample_count = _check_sampling(T, top_k, top_p, sample_count)
        levels = _check_quantiles(quantiles)
        rows = self.max_batch_size if max_batch_size is None else _check_positive_int(max_batch_size, "max_batch_size")
        if not all(isinstance(a, (list, tuple)) for a in (df_list, x_timestamp_list, y_timestamp_list)):
            raise ValueError("df_list, x_timestamp_list and y_timestamp_list must be lists or tuples")
        if not len(df_list) == len(x_timestamp_list) == len(y_timestamp_list):
            raise ValueError(f"df_list, x_timestamp_list, y_timestamp_list: lengths differ "
                             f"({len(df_list)}, {len(x_timestamp_list)}, {len(y_timestamp_list)})")
        if not df_list:
            return []
        where = (lambda i: "") if len(df_list) == 1 else (lambda i: f"[{i}]")
        t0 = time.perf_counter()
        series = [_prepare(df, xt, yt, pred_len, self.clip, where(i))
                  for i, (df, xt, yt) in enumerate(zip(df_list, x_timestamp_list, y_timestamp_list))]

        generator = None if seed is None else torch.Generator(device=self.device).manual_seed(int(seed))
        t1 = time.perf_counter()
        steps = _StepCounter(progress, len(series) * sample_count * pred_len)
        samples = self._decode(series, pred_len, T, top_k, top_p, sample_count, generator, rows, verbose,
                               should_stop, steps)
        t2 = time.perf_counter()

        results = []
        for s, norm in zip(series, samples):  # norm: (S, P, 6) normalised
            mean = norm.mean(axis=0) * (s.sigma + 1e-5) + s.mu  # average in normalised space (§5.7)
            mean_df = pd.DataFrame(mean, columns=list(FEATURE_COLUMNS), index=s.index)
            if not levels and not return_samples:
                results.append(mean_df)
                continue
            paths = norm * (s.sigma + 1e-5) + s.mu  # (S, P, 6)
            qs = {q: pd.DataFrame(np.quantile(paths, q, axis=0).astype(np.float32),
                                  columns=list(FEATURE_COLUMNS), index=s.index) for q in levels}
            results.append(Forecast(mean=mean_df, quantiles=qs, samples=paths if return_samples else None))
        # Wall-clock split of the last call (pandas in, decoding, pandas out), for job metadata/benchmarks.
        self.last_timings = {"prepare_s": t1 - t0, "decode_s": t2 - t1, "postprocess_s": time.perf_counter() - t2}
        return results

    def generate(self, x, x_stamp, y_stamp, pred_len: int, T: float, top_k: int, top_p: float, sample_count: int,
                 verbose: bool, use_kv_cache: bool = False) -> np.ndarray:
        """Upstream's lower-level call: normalised arrays in, the mean forecast in normalised space out.

        ``x`` (B, L, 6), ``x_stamp`` (B, L, 5), ``y_stamp`` (B, pred_len, 5) array-likes; returns
        numpy (B, pred_len, 6). Draws come from torch's global generator, as upstream (see
        ``model.kronos.auto_regressive_inference``).
        """
        from .kronos import auto_regressive_inference

        x, x_stamp, y_stamp = (torch.from_numpy(np.array(a, dtype=np.float32)).to(self.device)
                               for a in (x, x_stamp, y_stamp))
        pred_len = self._check_pred_len(pred_len)
        preds = auto_regressive_inference(self.tokenizer, self.model, x, x_stamp, y_stamp, self.max_context, pred_len,
                                          self.clip, T, top_k, top_p, sample_count, verbose)
        return preds[:, -pred_len:, :]

    def warm_up(self) -> float:
        """One greedy forecast of a synthetic series through the whole path; returns its seconds.

        One series of ``max_context - 1`` bars forecast 3 steps: the window is prefilled, grows by
        one cached step and then slides once, so the one-row and window-length kernels run and the
        largest window buffers are allocated. Then two series of a few bars, for the few-row
        kernels of batched steps. ``last_timings`` and ``last_decode_info`` are left as they were.
        """
        started = time.perf_counter()
        timings, info = self.last_timings, self.last_decode_info
        M = self.max_context
        for n_series, L, P in ((1, max(1, M - 1), min(3, M)), (2, max(1, min(8, M - 1)), min(2, M))):
            ts = pd.date_range("2024-01-02 09:30", periods=L + P, freq="5min")
            wave = 10.0 + np.sin(np.arange(L) / 7.0)
            df = pd.DataFrame({"open": wave, "high": wave + 0.1, "low": wave - 0.1, "close": wave,
                               "volume": 1000.0 + 100 * np.cos(np.arange(L) / 5.0)})
            df["amount"] = df["volume"] * df["close"]
            self.predict_batch([df] * n_series, [ts[:L]] * n_series, [ts[L:]] * n_series, P, top_k=1, seed=0)
        self.last_timings, self.last_decode_info = timings, info
        self.warm_up_seconds = time.perf_counter() - started
        return self.warm_up_seconds

    # ---- decoding -----------------------------------------------------------------------------

    def _check_pred_len(self, pred_len) -> int:
        pred_len = _check_positive_int(pred_len, "pred_len")
        if pred_len > self.max_context:
            raise ValueError(f"pred_len ({pred_len}) must not exceed max_context ({self.max_context})")
        return pred_len

    def _decode(self, series: list[_Series], pred_len, T, top_k, top_p, S, generator, rows, verbose,
                should_stop=None, steps: "_StepCounter | None" = None):
        """Run the groups/chunks; returns one (S, P, 6) float32 array (normalised) per series.

        A chunk holds at most ``rows`` rows (series x samples), or ``oom_rows_cap`` when smaller.
        On a CUDA out-of-memory error the chunk is retried with half the rows
        (``_generate_or_back_off``); the smaller size holds for the rest of the call and later calls.
        """
        self._packed_model()  # kernel_info is complete from here on
        info = self.last_decode_info = {"requested_rows_per_chunk": rows,
                                        "rows_per_chunk": min(rows, self.oom_rows_cap or rows), "oom_retries": 0,
                                        "kernel": dict(self.kernel_info)}
        out: list[np.ndarray | None] = [None] * len(series)
        by_len: dict[int, list[int]] = {}
        for i, s in enumerate(series):
            by_len.setdefault(len(s.x), []).append(i)
        for L, idx in by_len.items():
            c = 0
            while c < len(idx):
                # A chunk holds whole series when their samples fit, else slices of one series' samples.
                chunk = idx[c:c + max(1, info["rows_per_chunk"] // S)]
                x = self._tensor(np.stack([series[i].x for i in chunk]))  # (b, L, 6)
                xs = self._tensor(np.stack([series[i].x_stamp for i in chunk]))  # (b, L, 5)
                ys = self._tensor(np.stack([series[i].y_stamp for i in chunk]))  # (b, P, 5)
                parts, s0 = [], 0
                while s0 < S:
                    n_s = min(info["rows_per_chunk"], S - s0)
                    y = self._generate_or_back_off(x, xs, ys, pred_len, T, top_k, top_p, n_s, generator, info,
                                                   verbose, should_stop, steps)
                    if y is not None:
                        parts.append(y)  # (b, n_s, P, 6)
                        s0 += n_s
                    elif len(chunk) > 1:
                        break  # backed off: take fewer series (all samples of a chunk of several are one part)
                else:
                    y = np.concatenate(parts, axis=1)  # (b, S, P, 6)
                    for j, i in enumerate(chunk):
                        out[i] = y[j]
                    c += len(chunk)
        return out

    def _generate_or_back_off(self, x, xs, ys, pred_len, T, top_k, top_p, n_s, generator, info,
                              verbose: bool = False, should_stop=None,
                              steps: "_StepCounter | None" = None) -> np.ndarray | None:
        """One chunk through ``generate``: (b, n_s, P, 6) float32 on the host, or None after a back-off.

        When ``generate`` raises ``torch.OutOfMemoryError`` and ``oom_backoff`` is on (CUDA): log a
        warning, halve the rows of the failed chunk into ``info["rows_per_chunk"]`` and
        ``oom_rows_cap``, count the retry, rewind ``generator`` to where the chunk started, release
        the failed attempt's memory and return None so the caller retries. The original error is
        re-raised when a single row did not fit, or when back-off is off (other devices). Greedy
        outputs do not depend on the chunking; seeded sampling does (chunk composition changes the
        draws), so a back-off changes sampled forecasts.
        """
        rows = x.shape[0] * n_s
        state = generator.get_state() if self.oom_backoff and generator is not None else None
        steps = steps or _StepCounter(None, 0)
        mark = steps.done
        try:
            with self._autocast(), _progress(verbose, pred_len, f"{x.shape[0]} series x {n_s} samples") as bar:
                y = generate(self.model, self.tokenizer, x, xs, ys, pred_len, self.max_context,
                             T=T, top_k=top_k, top_p=top_p, sample_count=n_s, generator=generator,
                             packed=self._packed_model(),
                             step_mode="cuda_graph" if self.cuda_graphs else "eager",
                             progress=steps.chunk(rows, bar), should_stop=should_stop)
            return y.float().cpu().numpy()  # no device tensor outlives the call
        except torch.OutOfMemoryError:
            steps.done = mark  # the retry decodes these rows again
            if not self.oom_backoff or rows <= 1:
                raise
        # Outside the except block the error and its traceback, which hold the failed attempt's
        # tensors, are gone: only now can the allocator give that memory back.
        old, new = info["rows_per_chunk"], rows // 2
        logger.warning("CUDA out of memory decoding %d rows (%d series x %d samples, pred_len %d) on %s; "
                       "retrying with at most %d rows per chunk (was %d) for this and later calls. Greedy "
                       "outputs are unchanged; seeded sampling draws differ from a run at the larger size.",
                       rows, x.shape[0], n_s, pred_len, self.device, new, old)
        info["rows_per_chunk"] = self.oom_rows_cap = new
        info["oom_retries"] += 1
        if generator is not None:  # torch's global generator (seed=None) is not rewound
            generator.set_state(state)
        _release_cached_memory(self.device)
        return None

    def _packed_model(self) -> PackedKronos:
        """The decoding copy of the weights, rebuilt only when a parameter changed (e.g. fine-tuning)."""
        key = PackedKronos.key(self.model, self.device, self.autocast_dtype)
        if key != self._packed_key:
            measured = self.device.type == "cpu" and self.autocast_dtype is None
            with torch.no_grad():
                self._packed = PackedKronos(self.model, self.autocast_dtype,
                                            kernels=self._planner.plan if measured else "addmm")
            self._planner.flush()
            self._packed_key = key
            precision = "fp32" if self.autocast_dtype is None else \
                f"approximate-{'bf16' if self.autocast_dtype == torch.bfloat16 else 'fp16'}"
            if measured:
                self.kernel_info = {"precision": precision, **self._planner.info()}
            else:  # CUDA, MPS or reduced precision: torch.addmm in the weights' dtype, nothing chosen
                self.kernel_info = {"precision": precision, "requested": self._planner.requested,
                                    "kernel": "addmm", "source": f"fixed ({self.device.type}, {precision})"}
        return self._packed

    def _tensor(self, a: np.ndarray) -> torch.Tensor:
        return torch.from_numpy(a).to(self.device)

    def _autocast(self):
        if self.autocast_dtype is None:
            return torch.autocast(device_type=self.device.type, enabled=False)
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)


class _StepCounter:
    """Row-steps decoded in one ``predict_batch`` call, reported to its ``progress`` callback.

    ``chunk(rows, bar)`` is what ``generate`` advances once per step: every step of a chunk of
    ``rows`` rows adds ``rows``; an optional tqdm ``bar`` (``verbose``) advances alongside."""

    def __init__(self, callback: Callable[[int, int], None] | None, total: int):
        self.callback, self.total, self.done = callback, total, 0

    def chunk(self, rows: int, bar=None):
        return bar if self.callback is None else _ChunkSteps(self, rows, bar)


@dataclasses.dataclass
class _ChunkSteps:
    """The ``progress`` object ``generate`` advances (``update(n)``) for one chunk of ``rows`` rows."""

    counter: _StepCounter
    rows: int
    bar: object = None

    def update(self, n: int = 1) -> None:
        counter = self.counter
        counter.done = min(counter.total, counter.done + n * self.rows)
        counter.callback(counter.done, counter.total)
        if self.bar is not None:
            self.bar.update(n)


def _progress(verbose: bool, total: int, desc: str):
    """A tqdm bar of ``total`` steps when ``verbose`` (upstream shows one per decoding call), else a no-op."""
    if not verbose:
        return contextlib.nullcontext(None)
    from tqdm.auto import tqdm

    return tqdm(total=total, desc=desc, unit="step")


def _release_cached_memory(device: torch.device) -> None:
    """Give the CUDA caching allocator's free blocks back after an out-of-memory error (CUDA only)."""
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _check_positive_int(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
    return int(value)


def _check_sampling(T, top_k, top_p, sample_count):
    if isinstance(T, bool) or not isinstance(T, (int, float)) or not math.isfinite(T) or T <= 0:
        raise ValueError(f"T (temperature) must be a finite number > 0, got {T!r}")
    top_k = 0 if top_k is None else top_k
    if isinstance(top_k, bool) or not isinstance(top_k, (int, np.integer)) or top_k < 0:
        raise ValueError(f"top_k must be an integer >= 0 (0 = off), got {top_k!r}")
    top_p = 1.0 if top_p is None else top_p
    if isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p!r}")
    sample_count = _check_positive_int(sample_count, "sample_count")
    return float(T), int(top_k), float(top_p), sample_count


def _check_quantiles(quantiles) -> list[float]:
    if quantiles is None:
        return []
    if isinstance(quantiles, (int, float)):
        quantiles = [quantiles]
    levels = []
    for q in quantiles:
        if isinstance(q, bool) or not isinstance(q, (int, float)) or not 0.0 < q < 1.0:
            raise ValueError(f"quantiles: each level must be in (0, 1), got {q!r}")
        levels.append(float(q))
    return levels
