"""``StepGraph``: the growth-phase decoding step replayed as one CUDA graph.

At small batches a GPU spends a one-token step launching kernels (about 200 for Kronos-small's 8
blocks), not computing. ``PackedKronos.step_static`` does the same work with every shape fixed by
the cache length and the position held in a device tensor, so it is captured once per
``generate`` call and replayed for every growth step: one launch instead of hundreds. Sampling,
the heads and the dependency layer stay eager (they change shape with the window or draw from the
call's generator). Opt-in (``KronosPredictor(cuda_graphs=True)``) until measured on a GPU.
"""

from __future__ import annotations

import torch


class StepGraph:
    """Capture ``packed.step_static`` for ``rows`` rows over ``caches``; call it like ``PackedKronos.step``.

    ``caches`` must be zero-initialised and must not be replaced while the graph lives (the graph
    holds their addresses). Capturing runs the step a few times at ``first_pos``, writing keys and
    values there; the first real step writes that slot again before anything reads it.
    """

    WARMUP_RUNS = 2  # lazy library initialisation (cuBLAS handles, workspaces) must happen before capture

    def __init__(self, packed, caches, rows: int, first_pos: int, dtype: torch.dtype, device: torch.device):
        if device.type != "cuda":
            raise ValueError(f"CUDA graphs need a CUDA device, got {device}")
        length = caches[0][0].shape[2]
        self.rope = tuple(t.contiguous() for t in packed.rotary(0, length, device))
        self.x = torch.zeros(rows, packed.d, dtype=dtype, device=device)
        self.qkv0 = torch.zeros(rows, 3 * packed.d, dtype=dtype, device=device)
        self.pos = torch.full((), first_pos, dtype=torch.long, device=device)

        def run():
            return packed.step_static(self.x, self.qkv0, caches, self.pos, self.rope)

        # Autocast's weight-cast cache must be off while capturing (PyTorch's CUDA graphs notes);
        # the packed weights are already in the compute dtype, so it caches nothing here anyway.
        amp = dict(device_type="cuda", enabled=torch.is_autocast_enabled("cuda"),
                   dtype=torch.get_autocast_dtype("cuda"), cache_enabled=False)
        side = torch.cuda.Stream(device)
        side.wait_stream(torch.cuda.current_stream(device))
        with torch.cuda.stream(side), torch.autocast(**amp):
            for _ in range(self.WARMUP_RUNS):
                run()
        torch.cuda.current_stream(device).wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph), torch.autocast(**amp):
            self.out = run()

    def __call__(self, x: torch.Tensor, qkv0: torch.Tensor, pos: int) -> torch.Tensor:
        """x̂ (rows, d) of the new token at ``pos``; the returned tensor is overwritten by the next call."""
        self.x.copy_(x)
        self.qkv0.copy_(qkv0)
        self.pos.fill_(pos)
        self.graph.replay()
        return self.out
