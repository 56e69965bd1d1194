"""How Kronos forecasts are decoded: the one place to read it (spec §5.4-5.7, exact per §7.4).

``KronosPredictor`` (model/predictor.py) normalises and clips the context, builds time features
and calls ``generate`` here; it turns the result back into prices. ``generate`` is the
autoregressive loop. Per series it tokenises the context once and gives each of the
``sample_count`` sample rows its own copy; then one K-line per step: sample s1 from the last
position's s1 logits, sample s2 from the dependency layer conditioned on that s1 (``sample_tokens``:
temperature, top-k or nucleus, one draw from the caller's ``torch.Generator``), append the pair,
and advance the trunk (at the end the tokenizer decodes the last window's tokens, still normalised):

* growth phase (the window still starts at token 0): feed only the new token through the blocks
  with a preallocated key/value cache — a standard causal cache is exact here. ``step_mode``
  chooses how: ``eager`` (``PackedKronos.step``), ``static`` (the fixed-shape ``step_static``) or
  ``cuda_graph`` (``step_static`` captured once and replayed; model/step_graph.py);
* sliding phase (the window drops its oldest token every step): recompute the whole window,
  because RoPE positions restart at 0 and every hidden state changes (§7.4). Exactness first.

The dependency layer attends to the keys/values of x̂ over the whole window; they are cached too
(unrotated: its single query makes RoPE the identity in eval mode).

Why a second forward pass beside model/transformer.py: ``Kronos`` (transformer.py) is the
reference, written for reading and training. ``PackedKronos`` runs the same maths on packed,
fused weights (``Dense``, model/dense.py) with preallocated caches, which decoding needs to be fast
(see its docstring and bench/predict.py). The two are bound by equivalence tests against the
oracle (kronos_jobs/testing/oracle.py), a naive full recompute through ``Kronos.decode_s1`` /
``decode_s2`` that re-runs the whole window every step:

* tests/model/test_predictor.py: ``test_greedy_equals_oracle``,
  ``test_window_recomputes_split_into_passes_equal_oracle``,
  ``test_mixed_context_lengths_equal_oracle_per_length``, ``test_seeded_sampling_gives_the_oracle_tokens``,
  ``test_batch_equals_per_series_greedy``, ``test_reduced_precision_path_runs_and_stays_close``;
* tests/model/test_step_modes.py: every ``step_mode`` gives the oracle's tokens, and
  ``step_static`` equals ``step`` at every position;
* tests/model/test_dense.py: ``test_greedy_equals_oracle_on_the_blas_path_too``;
* tests/model/test_transformer.py: ``test_kv_cache_trunk_equals_full_trunk`` and
  ``test_last_position_s2_equals_decode_s2`` (the cache and s2 head of the reference itself);
* tests/model/test_cuda.py: the same on a GPU (scripts/gpu_check.sh).

A change here that alters a token fails those tests; change ``transformer.py`` and this file together.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .dense import Dense
from .step_graph import StepGraph

STEP_MODES = ("eager", "static", "cuda_graph")


def sample_tokens(logits: torch.Tensor, T: float, top_k: int, top_p: float,
                  generator: torch.Generator | None) -> torch.Tensor:
    """Spec §5.6 on the device: logits (N, V) -> ids (N,) int64.

    Temperature, then top-k (ties with the k-th value kept; top-p is then ignored) or nucleus
    filtering, softmax, one ``torch.multinomial`` draw per row from ``generator``.
    """
    z = logits.float() / T
    if top_k > 0:
        kth = torch.topk(z, min(top_k, z.shape[-1]), dim=-1).values[:, -1:]  # (N, 1)
        z = z.masked_fill(z < kth, float("-inf"))
    elif top_p < 1.0:
        sorted_z, order = torch.sort(z, dim=-1, descending=True)
        cum = torch.softmax(sorted_z, dim=-1).cumsum(dim=-1)
        drop = torch.zeros_like(cum, dtype=torch.bool)
        drop[:, 1:] = cum[:, :-1] > top_p  # keep up to and including the first rank past top_p
        z = z.masked_fill(drop.scatter(-1, order, drop), float("-inf"))
    probs = torch.softmax(z, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    # Same formula as KronosRMSNorm (float32 statistic, cast back, then the weight).
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).type_as(x) * weight


def _rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin


class DecodeStopped(Exception):
    """``generate``'s ``should_stop`` answered True between two decode steps."""


class PackedKronos:
    """Inference-only view of a ``Kronos`` with its weights packed for decoding.

    * Every matrix is a ``Dense`` (model/dense.py) whose kernel per row regime (oneDNN with a
      pre-packed weight, or ``torch.addmm`` over a transposed copy) comes from ``kernels``: a
      callable ``(out_features, in_features, has_bias) -> plan`` (``KernelPlanner.plan``, which
      measures them on this CPU), one kernel name for all, or None for ``Dense``'s default.
    * q/k/v and w1/w3 are fused, so each block makes four matrix calls (larger GEMMs also run
      faster on the full-window recomputes) and the Python work per block stays small.
    * The maths is the modules' (same formulas, same order of additions); only kernels differ, so
      results agree with ``Kronos.decode_s1/decode_s2`` to float rounding (~1e-6 relative).

    Build once per (weights, device, dtype); ``key(model, ...)`` tells when to rebuild.
    """

    def __init__(self, model, dtype: torch.dtype | None = None, kernels=None):
        def lin(w, bias=None):
            plan = kernels((w.shape[0], w.shape[1], bias is not None)) if callable(kernels) else kernels
            return Dense(w, bias, dtype, kernels=plan)

        def b(x):
            return x.detach().to(dtype or x.dtype)

        self.d, self.scale, self.eps = model.config.d_model, math.sqrt(model.config.d_model), model.norm.eps
        self.rotary = model.transformer[0].self_attn.rotary  # every block has the same head dim
        self.layers = []
        for blk in model.transformer:
            at, ff = blk.self_attn, blk.ffn
            self.n_heads, self.head_dim = at.n_heads, at.head_dim
            self.layers.append((
                b(blk.norm1.weight),
                lin(torch.cat([at.q_proj.weight, at.k_proj.weight, at.v_proj.weight]),  # d -> 3d
                    torch.cat([at.q_proj.bias, at.k_proj.bias, at.v_proj.bias])),
                lin(at.out_proj.weight, at.out_proj.bias),
                b(blk.norm2.weight),
                lin(torch.cat([ff.w1.weight, ff.w3.weight])),  # d -> 2f
                lin(ff.w2.weight),  # f -> d
            ))
        emb, te, ca = model.embedding, model.time_emb, model.dep_layer.cross_attn
        self.emb_s1, self.emb_s2 = b(emb.emb_s1.weight), b(emb.emb_s2.weight)
        self.fusion = lin(emb.fusion_proj.weight, emb.fusion_proj.bias)
        # Upstream's summation order of the temporal tables: hour, weekday, day, month, minute.
        self.time = [(col, b(getattr(getattr(te, f"{name}_embed"), "emb", getattr(te, f"{name}_embed")).weight))
                     for col, name in ((1, "hour"), (2, "weekday"), (3, "day"), (4, "month"), (0, "minute"))]
        self.norm = b(model.norm.weight)
        self.proj_s1 = lin(model.head.proj_s1.weight, model.head.proj_s1.bias)
        self.proj_s2 = lin(model.head.proj_s2.weight, model.head.proj_s2.bias)
        self.dep_q = lin(ca.q_proj.weight, ca.q_proj.bias)
        self.dep_kv = lin(torch.cat([ca.k_proj.weight, ca.v_proj.weight]), torch.cat([ca.k_proj.bias, ca.v_proj.bias]))
        self.dep_out = lin(ca.out_proj.weight, ca.out_proj.bias)
        self.dep_norm, self.dep_heads = b(model.dep_layer.norm.weight), ca.n_heads

    @staticmethod
    def key(model, device, dtype) -> tuple:
        """Changes whenever a parameter is replaced or modified in place (``_version``)."""
        return (str(device), dtype) + tuple((p.data_ptr(), p._version) for p in model.parameters())

    def _embed(self, s1: torch.Tensor, s2: torch.Tensor, stamp: torch.Tensor) -> torch.Tensor:
        """ids (N,), stamp (N, 5) -> (N, d): fused pair embedding + temporal embedding."""
        e = torch.cat((F.embedding(s1, self.emb_s1) * self.scale, F.embedding(s2, self.emb_s2) * self.scale), -1)
        idx = stamp.long()
        col, table = self.time[0]
        temporal = F.embedding(idx[:, col], table)
        for col, table in self.time[1:]:
            temporal = temporal + F.embedding(idx[:, col], table)
        return self.fusion(e) + temporal

    def token_inputs(self, s1: torch.Tensor, s2: torch.Tensor, stamp: torch.Tensor):
        """What a token brings to any window: ids (N,), stamp (N, 5) -> (x (N, d), qkv of block 0 (N, 3d)).

        Neither depends on the token's window position (the embedding has none, and RoPE is applied
        after the projections), so the predictor computes them once per token and reuses them in
        every window recompute of the sliding phase — exact, and a block's worth of GEMMs saved.
        """
        x = self._embed(s1, s2, stamp)
        n1, qkv = self.layers[0][:2]
        return x, qkv(_rms(x, n1, self.eps))

    # Rows of activations per window pass on a CPU. Every block's intermediates (the largest is
    # rows x 2*ff_dim floats, 8 MiB for Kronos-small) then stay in the last-level cache: a batch of
    # 8 full windows ran ~16% faster in 2-sequence passes than in one. GPUs want the whole batch.
    CPU_WINDOW_ROWS = 1024

    def window(self, x: torch.Tensor, qkv0: torch.Tensor, caches=None) -> torch.Tensor:
        """A fresh window at positions 0..T-1, from ``token_inputs`` (R, T, d), (R, T, 3d) -> x̂ (R, T, d).

        With ``caches`` (prefill) the rotated keys and values are stored at positions 0..T-1.
        """
        R, T, _ = x.shape
        per = max(1, self.CPU_WINDOW_ROWS // T)
        if x.device.type != "cpu" or R <= per:
            return self._window(x, qkv0, caches)
        parts = []
        for r in range(0, R, per):  # sequences are independent: same numbers, pass by pass
            rows = slice(r, r + per)
            part_caches = None if caches is None else [(k[rows], v[rows]) for k, v in caches]
            parts.append(self._window(x[rows], qkv0[rows], part_caches))
        return torch.cat(parts)

    def _window(self, x: torch.Tensor, qkv0: torch.Tensor, caches) -> torch.Tensor:
        R, T, _ = x.shape
        H, hd = self.n_heads, self.head_dim
        cos, sin = self.rotary(0, T, x.device)  # (T, hd)
        x, qkv = x.reshape(R * T, -1), qkv0.reshape(R * T, -1)  # (R*T, d), (R*T, 3d)
        for li, (n1, w_qkv, w_out, n2, w13, w2) in enumerate(self.layers):
            if li:
                qkv = w_qkv(_rms(x, n1, self.eps))
            qkv = qkv.view(R, T, 3, H, hd).permute(2, 0, 3, 1, 4)  # (3, R, H, T, hd)
            qk = _rope(qkv[:2], cos, sin)
            if caches is not None:
                caches[li][0][:, :, :T] = qk[1]
                caches[li][1][:, :, :T] = qkv[2]
            y = F.scaled_dot_product_attention(qk[0], qk[1], qkv[2], is_causal=True)  # (R, H, T, hd)
            x = x + w_out(y.transpose(1, 2).reshape(R * T, -1))
            x = x + self._ffn(_rms(x, n2, self.eps), w13, w2)
        return _rms(x, self.norm, self.eps).view(R, T, -1)

    @staticmethod
    def _ffn(h: torch.Tensor, w13: Dense, w2: Dense) -> torch.Tensor:
        gate, up = w13(h).chunk(2, dim=-1)  # (N, f) each
        return w2(F.silu(gate) * up)

    def step(self, x: torch.Tensor, qkv0: torch.Tensor, caches, pos: int) -> torch.Tensor:
        """One new token per row at window position ``pos``, from ``token_inputs`` (R, d), (R, 3d) -> x̂ (R, d).

        Writes its rotated keys and values into ``caches`` at ``pos`` and attends to 0..pos.
        """
        cos, sin = self.rotary(pos, 1, x.device)  # (1, hd)

        def store_and_attend(q, k, v, k_buf, v_buf):
            k_buf[:, :, pos], v_buf[:, :, pos] = k, v
            # One query sees every cached position: no mask.
            return F.scaled_dot_product_attention(q[:, :, None], k_buf[:, :, :pos + 1], v_buf[:, :, :pos + 1])

        return self._step(x, qkv0, caches, cos, sin, store_and_attend)

    def step_static(self, x: torch.Tensor, qkv0: torch.Tensor, caches, pos: torch.Tensor,
                    rope: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        """``step`` with every shape fixed, so one CUDA graph can replay any growth step (model/step_graph.py).

        ``pos`` is a 0-d int64 tensor on the device and ``rope`` the (cos, sin) tables of all cache
        positions. Attention reads the whole cache under a mask instead of a slice up to ``pos``;
        the caches must start zeroed, since a masked slot still enters the products (0 x NaN).
        Same maths as ``step``; the kernels' order of additions may differ (~1e-6 relative).
        """
        at = pos.view(1)
        cos, sin = rope[0].index_select(0, at), rope[1].index_select(0, at)  # (1, hd)
        visible = (torch.arange(caches[0][0].shape[2], device=x.device) <= pos)[None]  # (1, N), True = attend

        def store_and_attend(q, k, v, k_buf, v_buf):
            k_buf.index_copy_(2, at, k[:, :, None])
            v_buf.index_copy_(2, at, v[:, :, None])
            return F.scaled_dot_product_attention(q[:, :, None], k_buf, v_buf, attn_mask=visible)

        return self._step(x, qkv0, caches, cos, sin, store_and_attend)

    def _step(self, x, qkv, caches, cos, sin, store_and_attend) -> torch.Tensor:
        R, H, hd = x.shape[0], self.n_heads, self.head_dim
        for li, ((n1, w_qkv, w_out, n2, w13, w2), (k_buf, v_buf)) in enumerate(zip(self.layers, caches)):
            if li:
                qkv = w_qkv(_rms(x, n1, self.eps))
            qkv = qkv.view(R, 3, H, hd)
            qk = _rope(qkv[:, :2], cos, sin)  # (R, 2, H, hd)
            y = store_and_attend(qk[:, 0], qk[:, 1], qkv[:, 2], k_buf, v_buf)  # (R, H, 1, hd)
            x = x + w_out(y.view(R, -1))
            x = x + self._ffn(_rms(x, n2, self.eps), w13, w2)
        return _rms(x, self.norm, self.eps)

    def s1_logits(self, last: torch.Tensor) -> torch.Tensor:
        """x̂ of the last position (R, d) -> (R, V1)."""
        return self.proj_s1(last)

    def dep_keys(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """x̂ (R, T, d) -> dependency-layer keys and values (R, 4, T, d/4) each (unrotated)."""
        R, T, _ = h.shape
        kv = self.dep_kv(h.reshape(R * T, -1))
        kv = kv.view(R, T, 2, self.dep_heads, -1).permute(2, 0, 3, 1, 4)  # (2, R, 4, T, d/4)
        return kv[0], kv[1]

    def s2_logits(self, last: torch.Tensor, dep_k: torch.Tensor, dep_v: torch.Tensor, s1: torch.Tensor):
        """As ``Kronos.s2_logits_last``: last (R, d), dep_k/v (R, 4, W, d/4), s1 (R,) -> (R, V2)."""
        R = last.shape[0]
        q = self.dep_q(F.embedding(s1, self.emb_s1)).view(R, self.dep_heads, 1, -1)
        a = F.scaled_dot_product_attention(q, dep_k, dep_v).view(R, -1)  # (R, d)
        return self.proj_s2(_rms(last + self.dep_out(a), self.dep_norm, self.eps))


def _alloc_caches(packed: PackedKronos, rows: int, length: int, dtype, device,
                  zeroed: bool = False) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Preallocated key/value buffers, one (B, H, N, hd) pair per block: no concatenation per step."""
    shape = (rows, packed.n_heads, length, packed.head_dim)
    new = torch.zeros if zeroed else torch.empty
    return [(new(shape, dtype=dtype, device=device), new(shape, dtype=dtype, device=device)) for _ in packed.layers]


@torch.inference_mode()
def generate(model, tokenizer, x: torch.Tensor, x_stamp: torch.Tensor, y_stamp: torch.Tensor, pred_len: int,
             max_context: int, T: float = 1.0, top_k: int = 0, top_p: float = 0.9, sample_count: int = 1,
             generator: torch.Generator | None = None, packed: PackedKronos | None = None,
             step_mode: str = "eager", progress=None, full_window: bool = False,
             should_stop=None) -> torch.Tensor:
    """Forecast in normalised space.

    Parameters
    ----------
    x : (B, L, 6) normalised, clipped context (all series of equal length L).
    x_stamp : (B, L, 5) and y_stamp : (B, P, 5) time features.
    pred_len, max_context : P and the window M.
    T, top_k, top_p, generator : sampling (spec §5.6).
    sample_count : S sample paths per series; rows are ordered series-major (b0s0, b0s1, ...).
    packed : a ``PackedKronos`` of ``model`` to reuse across calls (built here when None).
    step_mode : how growth steps run: ``eager`` (``PackedKronos.step``), ``static`` (the fixed-shape
        ``step_static``, eagerly) or ``cuda_graph`` (``step_static`` captured once and replayed).
    progress : object with ``update(n)`` (e.g. a tqdm bar), optional; advanced once per step.
    full_window : return the whole final decode window (``min(L+P, M)`` rows) instead of its last P.
    should_stop : callable returning bool, optional; asked before every step after the first, and
        ``DecodeStopped`` is raised when it answers True (a cancelled job stops within one step).

    Returns
    -------
    (B, S, P, 6) decoded sample paths (normalised); (B, S, min(L+P, M), 6) with ``full_window``.
    """
    if step_mode not in STEP_MODES:
        raise ValueError(f"step_mode must be one of {STEP_MODES}, got {step_mode!r}")
    B, L, _ = x.shape
    S, P, M = sample_count, pred_len, max_context
    R = B * S
    dev = x.device
    # Under autocast (CUDA, opt-in) activations come out in the autocast dtype; buffers must match.
    dtype = torch.get_autocast_dtype(dev.type) if torch.is_autocast_enabled(dev.type) else model.norm.weight.dtype
    if packed is None:
        packed = PackedKronos(model, None if dtype == model.norm.weight.dtype else dtype)

    # ---- tokenise each context once, then give every sample row its own copy ----------------
    s1_ctx, s2_ctx = tokenizer.encode(x, half=True)  # (B, L) each
    ids1 = torch.empty(R, L + P, dtype=torch.long, device=dev)
    ids2 = torch.empty(R, L + P, dtype=torch.long, device=dev)
    ids1[:, :L] = s1_ctx.repeat_interleave(S, dim=0)
    ids2[:, :L] = s2_ctx.repeat_interleave(S, dim=0)
    stamps = torch.cat([x_stamp, y_stamp], dim=1)  # (B, L+P, 5); token k has timestamp stamps[:, k]
    stamps_rows = stamps.repeat_interleave(S, dim=0)  # (R, L+P, 5)

    # ---- prefill the first window once per series ---------------------------------------------
    cached = L + 1 <= M and P > 1  # later steps grow the window incrementally
    slides = L + P - 1 > M  # some later step must recompute a whole window
    cache_len = min(L + P - 1, M)
    base = max(0, L - M)  # oldest token any window will hold
    W = L - base
    caches = _alloc_caches(packed, B, cache_len, dtype, dev, zeroed=step_mode != "eager") if cached else None
    x0, q0 = packed.token_inputs(s1_ctx[:, base:].reshape(-1), s2_ctx[:, base:].reshape(-1),
                                 stamps[:, base:L].reshape(B * W, -1))  # (B*W, d), (B*W, 3d)
    x0, q0 = x0.view(B, W, -1), q0.view(B, W, -1)
    ctx = packed.window(x0, q0, caches)  # (B, W, d)
    dep_k, dep_v = packed.dep_keys(ctx)  # (B, 4, W, d/4)
    if cached:  # room for the keys of the tokens still to come
        dk = dep_k.new_empty(B, dep_k.shape[1], cache_len, dep_k.shape[-1])
        dv = torch.empty_like(dk)
        dk[:, :, :L], dv[:, :, :L] = dep_k, dep_v
        dep_k, dep_v = dk, dv
    if slides:  # per-token window inputs, kept for the recomputes (index k - base for token k)
        tok_x = x0.new_empty(R, L + P - base, x0.shape[-1])
        tok_q = q0.new_empty(R, L + P - base, q0.shape[-1])
        tok_x[:, :W], tok_q[:, :W] = x0.repeat_interleave(S, dim=0), q0.repeat_interleave(S, dim=0)
    last = ctx[:, -1]  # (B, d)
    if S > 1:
        last = last.repeat_interleave(S, dim=0)
        dep_k, dep_v = dep_k.repeat_interleave(S, dim=0), dep_v.repeat_interleave(S, dim=0)
        if cached:
            caches = [(k.repeat_interleave(S, dim=0), v.repeat_interleave(S, dim=0)) for k, v in caches]
    if cached and step_mode == "cuda_graph":
        step = StepGraph(packed, caches, R, L, dtype, dev)
    elif cached and step_mode == "static":
        rope, pos = packed.rotary(0, cache_len, dev), torch.zeros((), dtype=torch.long, device=dev)

        def step(x_new, q_new, n):
            pos.fill_(n)
            return packed.step_static(x_new, q_new, caches, pos, rope)
    else:
        def step(x_new, q_new, n):
            return packed.step(x_new, q_new, caches, n)

    # ---- one K-line per step ------------------------------------------------------------------
    for i in range(P):
        if i and should_stop is not None and should_stop():
            raise DecodeStopped(f"stopped by request after {i} of {P} decode steps")
        n = L + i  # tokens known so far; the window is the last W = min(n, M)
        a = sample_tokens(packed.s1_logits(last), T, top_k, top_p, generator)  # (R,)
        b = sample_tokens(packed.s2_logits(last, dep_k[:, :, :W], dep_v[:, :, :W], a), T, top_k, top_p, generator)
        ids1[:, n], ids2[:, n] = a, b
        if progress is not None:
            progress.update(1)
        if i == P - 1:
            break
        x_new, q_new = packed.token_inputs(a, b, stamps_rows[:, n])  # (R, d), (R, 3d)
        if slides:
            tok_x[:, n - base], tok_q[:, n - base] = x_new, q_new
        if n + 1 <= M:  # growth: the new token enters at window position n
            last = step(x_new, q_new, n)  # (R, d)
            dep_k[:, :, n:n + 1], dep_v[:, :, n:n + 1] = packed.dep_keys(last[:, None])
            W = n + 1
        else:  # sliding: exact full recompute of the window (positions restart at 0)
            lo = n + 1 - M - base
            ctx = packed.window(tok_x[:, lo:lo + M], tok_q[:, lo:lo + M])  # (R, M, d)
            dep_k, dep_v = packed.dep_keys(ctx)
            last, W = ctx[:, -1], M

    # ---- decode the final window once -----------------------------------------------------------
    lo = max(0, L + P - M)
    out = tokenizer.decode((ids1[:, lo:], ids2[:, lo:]), half=True)  # (R, min(L+P, M), 6)
    if not full_window:
        out = out[:, -P:]  # the forecast rows
    return out.reshape(B, S, out.shape[1], out.shape[-1])
