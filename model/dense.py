"""``Dense``: one inference-only affine map ``y = x @ W.T + b`` with the fastest kernel the device has.

Decoding makes thousands of small matrix calls (one to a few hundred rows each). On x86 CPUs the
default float32 BLAS path is slow for those shapes: for 8 rows by 512 x 2048 it ran at 0.19-0.5 ms
where oneDNN with a pre-packed (blocked) weight runs at 0.06 ms, and a 512-token window recompute
runs about twice as fast. So on a CPU with oneDNN, float32 weights are packed once with
``torch.ops.mkldnn._reorder_linear_weight`` and applied with ``_linear_pointwise`` (the same ops
TorchInductor's CPU freezing pass emits). The arithmetic is the same float32 affine map; only the
order of additions inside the dot products differs, as it does between any two BLAS builds
(~1e-6 relative). Everywhere else (CUDA, MPS, half precision, a build without oneDNN) it is
``torch.addmm`` over a transposed contiguous copy, which streams one row's weights fastest.

Build once per (weights, device, dtype) and reuse: the packed weight is opaque and not picklable.
"""

from __future__ import annotations

import functools
import logging

import torch

logger = logging.getLogger(__name__)


@functools.lru_cache(maxsize=None)
def onednn_usable() -> bool:
    """Whether this torch build can pack and run float32 linears with oneDNN on the CPU.

    Checked once per process by running a small packed linear against ``torch.addmm``, so a build
    whose private ops changed or misbehave keeps the BLAS path instead of giving wrong numbers.
    """
    ops = getattr(torch.ops, "mkldnn", None)
    if not torch.backends.mkldnn.is_available() or ops is None:
        return False
    try:
        g = torch.Generator().manual_seed(0)
        w, b = torch.randn(48, 32, generator=g), torch.randn(48, generator=g)
        x = torch.randn(5, 32, generator=g)
        with torch.inference_mode():
            got = ops._linear_pointwise(x, ops._reorder_linear_weight(w, 5), b, "none", [], "")
        ok = got.shape == (5, 48) and torch.allclose(got, torch.addmm(b, x, w.t()), rtol=1e-5, atol=1e-5)
    except (RuntimeError, AttributeError, TypeError) as exc:
        logger.debug("oneDNN packed linear unavailable (%s); using torch.addmm", exc)
        return False
    if not ok:
        logger.warning("oneDNN packed linear disagrees with torch.addmm in this torch build; using torch.addmm")
    return ok


class Dense:
    """``x (N, in) -> (N, out)``, from an ``nn.Linear``-layout weight ``(out, in)`` and optional bias.

    ``dtype`` casts the stored weights (None keeps theirs). Inputs must be 2-D; callers reshape.
    """

    __slots__ = ("weight", "bias", "packed", "out_features")

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, dtype: torch.dtype | None = None):
        weight = weight.detach().to(dtype or weight.dtype)
        self.bias = None if bias is None else bias.detach().to(dtype or bias.dtype)
        self.out_features = weight.shape[0]
        self.packed = weight.device.type == "cpu" and weight.dtype == torch.float32 and onednn_usable()
        if self.packed:
            # The batch-size hint only tunes the blocked layout; any row count works with it.
            self.weight = torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), 64)
        else:
            self.weight = weight.t().contiguous()  # (in, out)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed and x.dtype == torch.float32:
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, "none", [], "")
        if self.packed:  # e.g. CPU autocast: the BLAS path in the input's dtype
            raise TypeError(f"Dense packed for float32 got a {x.dtype} input")
        if self.bias is None:
            return x @ self.weight
        return torch.addmm(self.bias, x, self.weight)
