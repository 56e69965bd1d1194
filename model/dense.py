"""``Dense``: one inference-only affine map ``y = x @ W.T + b`` with a chosen kernel per row regime.

Decoding makes thousands of small matrix calls (one to a few hundred rows each), and which float32
kernel is fastest for them depends on the CPU: oneDNN with a weight pre-packed into its blocked
layout (``torch.ops.mkldnn._reorder_linear_weight`` + ``_linear_pointwise``, the ops TorchInductor's
CPU freezing pass emits) ran 3-5x faster than BLAS at 8 rows on an AMD EPYC, while ``torch.addmm``
over a transposed contiguous copy won on an Intel Xeon with AMX. ``model/kernels.py`` measures and
picks, per weight shape and row regime (``kernels.BUCKETS``); this module only runs the choice.
Both kernels compute the same float32 affine map; only the order of additions inside the dot
products differs, as between any two BLAS builds (~1e-6 relative).

Off the CPU, in half precision or in a build without oneDNN every regime uses ``torch.addmm``.
Build once per (weights, device, dtype) and reuse: the packed weight is opaque and not picklable.
"""

from __future__ import annotations

import functools
import logging
from typing import Mapping

import torch

from .kernels import BUCKETS, KERNELS

logger = logging.getLogger(__name__)

FEW_ROWS = dict(BUCKETS)["few"]  # the largest row count of the "few" regime


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

    ``dtype`` casts the stored weights (None keeps theirs). ``kernels`` is one of ``kernels.KERNELS``
    for every row count, or a mapping bucket name -> kernel (``kernels.BUCKETS``); None keeps the
    historical default (oneDNN where usable). It applies to float32 CPU weights only. Inputs must be
    2-D; callers reshape.
    """

    __slots__ = ("weight", "packed_weight", "bias", "out_features", "kernels", "_one", "_few", "_many")

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None, dtype: torch.dtype | None = None,
                 kernels: str | Mapping[str, str] | None = None):
        weight = weight.detach().to(dtype or weight.dtype)
        self.bias = None if bias is None else bias.detach().to(dtype or bias.dtype)
        self.out_features = weight.shape[0]
        onednn_ok = weight.device.type == "cpu" and weight.dtype == torch.float32 and onednn_usable()
        if kernels is None:
            kernels = "onednn" if onednn_ok else "addmm"
        plan = {name: kernels for name, _ in BUCKETS} if isinstance(kernels, str) else dict(kernels)
        if set(plan) != {name for name, _ in BUCKETS} or not set(plan.values()) <= set(KERNELS):
            raise ValueError(f"kernels: expected one of {KERNELS} or a mapping of {[n for n, _ in BUCKETS]} "
                             f"to them, got {kernels!r}")
        if not onednn_ok:  # oneDNN packing is a float32 CPU layout; everything else streams addmm
            plan = {name: "addmm" for name in plan}
        self.kernels = plan
        # The batch-size hint only tunes the blocked layout; any row count works with it.
        self.packed_weight = (torch.ops.mkldnn._reorder_linear_weight(weight.contiguous(), 64)
                              if "onednn" in plan.values() else None)
        self.weight = weight.t().contiguous() if "addmm" in plan.values() else None  # (in, out)
        self._one, self._few, self._many = (self._packed if plan[name] == "onednn" else self._addmm
                                            for name, _ in BUCKETS)

    @property
    def packed(self) -> bool:
        """Whether any row regime runs the oneDNN packed kernel."""
        return self.packed_weight is not None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        n = x.shape[0]
        return (self._one if n == 1 else self._few if n <= FEW_ROWS else self._many)(x)

    def _packed(self, x: torch.Tensor) -> torch.Tensor:
        if x.dtype != torch.float32:  # e.g. CPU autocast: a packed layer is float32 only
            raise TypeError(f"Dense packed for float32 got a {x.dtype} input")
        return torch.ops.mkldnn._linear_pointwise(x, self.packed_weight, self.bias, "none", [], "")

    def _addmm(self, x: torch.Tensor) -> torch.Tensor:
        if self.bias is None:
            return x @ self.weight
        return torch.addmm(self.bias, x, self.weight)
