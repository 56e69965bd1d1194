"""The autoregressive decoding loop of ``KronosPredictor`` (spec §5.4-5.7, exact per §7.4).

One K-line per step: sample s1 from the last position's s1 logits, sample s2 from the dependency
layer conditioned on that s1, append the pair, and advance the trunk:

* growth phase (the window still starts at token 0): feed only the new token through the blocks
  with a preallocated key/value cache — a standard causal cache is exact here;
* sliding phase (the window drops its oldest token every step): recompute the whole window,
  because RoPE positions restart at 0 and every hidden state changes (§7.4). Exactness first.

The dependency layer attends to the keys/values of x̂ over the whole window; they are cached too
(unrotated: its single query makes RoPE the identity in eval mode).
"""

from __future__ import annotations

import torch



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


def _alloc_caches(model, rows: int, length: int, like: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
    caches = []
    for block in model.transformer:
        attn = block.self_attn
        shape = (rows, attn.n_heads, length, attn.head_dim)  # (B, H, N, hd)
        caches.append((like.new_empty(shape), like.new_empty(shape)))
    return caches


@torch.inference_mode()
def generate(model, tokenizer, x: torch.Tensor, x_stamp: torch.Tensor, y_stamp: torch.Tensor, pred_len: int,
             max_context: int, T: float = 1.0, top_k: int = 0, top_p: float = 0.9, sample_count: int = 1,
             generator: torch.Generator | None = None) -> torch.Tensor:
    """Forecast in normalised space.

    Parameters
    ----------
    x : (B, L, 6) normalised, clipped context (all series of equal length L).
    x_stamp : (B, L, 5) and y_stamp : (B, P, 5) time features.
    pred_len, max_context : P and the window M.
    T, top_k, top_p, generator : sampling (spec §5.6).
    sample_count : S sample paths per series; rows are ordered series-major (b0s0, b0s1, ...).

    Returns
    -------
    (B, S, P, 6) decoded sample paths (normalised).
    """
    B, L, _ = x.shape
    S, P, M = sample_count, pred_len, max_context
    R = B * S
    dev = x.device

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
    cache_len = min(L + P - 1, M)
    lo = max(0, L - M)
    # Under autocast (CUDA, opt-in) the keys come out in the autocast dtype; the buffers must match.
    dtype = torch.get_autocast_dtype(dev.type) if torch.is_autocast_enabled(dev.type) else model.norm.weight.dtype
    caches = _alloc_caches(model, B, cache_len, x.new_empty(0, dtype=dtype)) if cached else None
    ctx = model.trunk(s1_ctx[:, lo:], s2_ctx[:, lo:], stamps[:, lo:L], caches=caches)  # (B, W, d)
    dep_k, dep_v = model.dep_kv(ctx)  # (B, 4, W, d/4)
    if cached:
        dk = dep_k.new_empty(B, dep_k.shape[1], cache_len, dep_k.shape[-1])
        dv = torch.empty_like(dk)
        dk[:, :, :L], dv[:, :, :L] = dep_k, dep_v
        dep_k, dep_v = dk, dv
    last = ctx[:, -1]  # (B, d)
    if S > 1:
        last = last.repeat_interleave(S, dim=0)
        dep_k, dep_v = dep_k.repeat_interleave(S, dim=0), dep_v.repeat_interleave(S, dim=0)
        if cached:
            caches = [(k.repeat_interleave(S, dim=0), v.repeat_interleave(S, dim=0)) for k, v in caches]
    W = ctx.shape[1]

    # ---- one K-line per step ------------------------------------------------------------------
    for i in range(P):
        n = L + i  # tokens known so far; the window is the last W = min(n, M)
        a = sample_tokens(model.head.proj_s1(last), T, top_k, top_p, generator)  # (R,)
        b = sample_tokens(model.s2_logits_last(last, dep_k[:, :, :W], dep_v[:, :, :W], a), T, top_k, top_p,
                          generator)
        ids1[:, n], ids2[:, n] = a, b
        if i == P - 1:
            break
        if n + 1 <= M:  # growth: the new token enters at window position n
            h = model.trunk(a[:, None], b[:, None], stamps_rows[:, n:n + 1], caches=caches, start=n)  # (R, 1, d)
            k_new, v_new = model.dep_kv(h)  # (R, 4, 1, d/4)
            dep_k[:, :, n:n + 1], dep_v[:, :, n:n + 1] = k_new, v_new
            last, W = h[:, 0], n + 1
        else:  # sliding: exact full recompute of the window (positions restart at 0)
            lo = n + 1 - M
            ctx = model.trunk(ids1[:, lo:n + 1], ids2[:, lo:n + 1], stamps_rows[:, lo:n + 1])  # (R, M, d)
            dep_k, dep_v = model.dep_kv(ctx)
            last, W = ctx[:, -1], M

    # ---- decode the final window once -----------------------------------------------------------
    lo = max(0, L + P - M)
    out = tokenizer.decode((ids1[:, lo:], ids2[:, lo:]), half=True)[:, -P:]  # (R, P, 6)
    return out.reshape(B, S, P, out.shape[-1])
