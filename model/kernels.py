"""Which matrix kernel each decode matmul uses on a CPU, chosen by measurement and cached on disk.

The fastest float32 kernel for decoding's small-row GEMMs depends on the CPU, not the vendor: on
an AMD EPYC (AVX2) oneDNN with a pre-packed weight beat ``torch.addmm`` 3-5x at 8 rows, while on an
Intel Xeon with AVX-512/AMX ``torch.addmm`` won at every decode shape. So for every weight shape of
a ``PackedKronos`` and every row regime it is called with, the candidates in ``KERNELS`` are timed
on that shape, each is checked against a float64 product, and the fastest that agrees is kept.

Row regimes (``BUCKETS``): one row (a single series' step), a few rows (a batch's step) and many
rows (a window prefill or recompute). Kernels reverse between them on one CPU too (on the EPYC,
addmm wins at one row for half the shapes and loses at eight), so a ``Dense`` dispatches on the
row count and keeps only the weight layouts its plan uses.

Measuring every shape costs a few hundred milliseconds once; the choice is then kept in a JSON
file per (CPU model and capability, torch version, thread count, shape, rows) under
``default_cache_dir()`` and reused by every later process on that machine.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Callable

import torch

logger = logging.getLogger(__name__)

KERNELS = ("addmm", "onednn")
KERNEL_CHOICES = ("auto",) + KERNELS  # what a caller may ask for
# Row regimes: name -> (largest row count in it, row count it is measured at). The last regime's
# measurement rows are the window length, given at plan time.
BUCKETS = (("one", 1), ("few", 64), ("many", None))
FEW_ROWS_MEASURED = 8
CACHE_FILE = "kernels-v1.json"
# float32 products of decode shapes agree with float64 to ~1e-6 relative; a kernel off by more
# than this computes something else (a wrong layout, a broken private op).
RTOL = 1e-4
CHECK_ROWS = 16  # rows of each measured input compared with the float64 product


def bucket_of(rows: int) -> str:
    for name, top in BUCKETS:
        if top is None or rows <= top:
            return name
    raise AssertionError("the last bucket is unbounded")


def cpu_model() -> str:
    """The CPU's marketing name (``/proc/cpuinfo`` model name), else ``platform.processor()``."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown cpu"


def cpu_flags() -> frozenset[str]:
    """The CPU feature flags of ``/proc/cpuinfo`` (empty where there is none, e.g. macOS)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return frozenset(line.split(":", 1)[1].split())
    except OSError:
        pass
    return frozenset()


def native_bf16_reason() -> str | None:
    """None when this CPU multiplies bfloat16 natively (AVX-512 BF16 or AMX), else why not.

    Without it torch emulates bfloat16 matmuls through float32 conversions: slower than float32,
    so the reduced-precision mode would cost accuracy for nothing.
    """
    flags = cpu_flags()
    if {"avx512_bf16", "amx_bf16"} & flags:
        return None
    return (f"the CPU ({cpu_model()}, torch capability {torch.backends.cpu.get_cpu_capability()}) has neither "
            "AVX-512 BF16 nor AMX-BF16 (no avx512_bf16/amx_bf16 in /proc/cpuinfo flags)")


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/kronos/kernels`` (``~/.cache/kronos/kernels`` when unset)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "kronos" / "kernels"


def time_layer(layer, x: torch.Tensor) -> float:
    """Seconds of one call of ``layer(x)``."""
    t0 = time.perf_counter()
    layer(x)
    return time.perf_counter() - t0


# Timing rounds per (shape, rows): every candidate once per round, interleaved, so a burst of
# other work on a shared machine slows all of them alike; the best round of each counts.
MIN_ROUNDS, MAX_ROUNDS, ROUNDS_BUDGET_S = 2, 5, 0.01


class KernelCache:
    """The on-disk choices: one JSON object, key -> {"kernel": ..., "seconds": {...}, "rejected": [...]}.

    Writes merge into the file's current content under an advisory lock, write a temporary file in
    the same directory and ``os.replace`` it, so concurrent writers never leave a torn file. A missing,
    unreadable or malformed file (or entry) only means measuring again.
    """

    def __init__(self, directory: Path | str):
        self.path = Path(directory) / CACHE_FILE

    def load(self) -> dict[str, dict]:
        try:
            data = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            logger.warning("kernel cache %s unreadable (%s); measuring again", self.path, exc)
            return {}
        if not isinstance(data, dict):
            return {}
        return {k: v for k, v in data.items()
                if isinstance(v, dict) and v.get("kernel") in KERNELS}

    def store(self, entries: dict[str, dict]) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with self._locked():
                merged = self.load() | entries
                fd, tmp = tempfile.mkstemp(prefix=".kernels-", suffix=".json", dir=self.path.parent)
                try:
                    with os.fdopen(fd, "w") as fh:
                        json.dump(merged, fh, indent=1, sort_keys=True)
                    os.replace(tmp, self.path)
                except BaseException:
                    with contextlib.suppress(OSError):
                        os.unlink(tmp)
                    raise
        except OSError as exc:  # a read-only home costs a re-measurement next time, nothing else
            logger.warning("kernel cache %s not written (%s)", self.path, exc)

    @contextlib.contextmanager
    def _locked(self):
        try:
            import fcntl
        except ImportError:  # no advisory locks (Windows): last writer wins, the file stays whole
            yield
            return
        with open(self.path.with_suffix(".lock"), "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)


def cache_key(out_features: int, in_features: int, bias: bool, rows: int) -> str:
    return (f"{cpu_model()} | {torch.backends.cpu.get_cpu_capability()} | torch {torch.__version__} | "
            f"{torch.get_num_threads()} threads | {out_features}x{in_features}{' +bias' if bias else ''} | "
            f"{rows} rows")


Shape = tuple[int, int, bool]  # (out_features, in_features, has bias)
Timer = Callable[[object, torch.Tensor], float]


class KernelPlanner:
    """Plans (bucket -> kernel) for the weight shapes of one model, measured or forced.

    One planner per predictor: ``plan(shape)`` for each weight as the model is packed, then
    ``flush()`` once to write new measurements to the disk cache.

    Parameters
    ----------
    requested : ``auto`` (measure) or one of ``KERNELS`` (forced; no measurement).
    window_rows : rows of the "many" regime's measurement (the model's window length).
    cache_dir : where choices are kept (``default_cache_dir()`` when None); ``False``: no disk cache.
    timer : ``timer(layer, x) -> seconds`` of one call; ``time_layer`` unless a test controls time.
    """

    def __init__(self, requested: str = "auto", window_rows: int = 512, cache_dir: Path | str | None | bool = None,
                 timer: Timer | None = None):
        if requested not in KERNEL_CHOICES:
            raise ValueError(f"cpu_kernel must be one of {KERNEL_CHOICES}, got {requested!r}")
        from .dense import onednn_usable

        if requested == "onednn" and not onednn_usable():
            raise ValueError("cpu_kernel 'onednn': this torch build cannot run oneDNN packed linears "
                             "(torch.backends.mkldnn unavailable or its self-check failed); use 'auto' or 'addmm'")
        self.requested, self.window_rows = requested, max(1, int(window_rows))
        self.cache = None if cache_dir is False else KernelCache(cache_dir or default_cache_dir())
        self.timer = timer or time_layer
        self.candidates = KERNELS if onednn_usable() else ("addmm",)
        self.sources: set[str] = set()  # how the plans were obtained: measured / disk cache / forced
        self.records: dict[str, dict] = {}  # cache key -> entry, for the plans made so far
        self._plans: dict[Shape, dict[str, str]] = {}
        self._stored: dict[str, dict] | None = None  # the disk cache, read once
        self._fresh: dict[str, dict] = {}  # measured, not yet written

    def rows_for(self, bucket: str) -> int:
        return {"one": 1, "few": FEW_ROWS_MEASURED}.get(bucket, self.window_rows)

    def plan(self, shape: Shape) -> dict[str, str]:
        """{bucket: kernel} for one weight shape, from this planner's memory, the disk cache or a measurement.

        New measurements are kept in memory until ``flush()`` writes them to the disk cache.
        """
        if shape in self._plans:
            return self._plans[shape]
        if self.requested != "auto":
            self.sources.add("forced")
            plan = self._plans[shape] = {b: self.requested for b, _ in BUCKETS}
            return plan
        if self._stored is None:
            self._stored = self.cache.load() if self.cache else {}
        plan = {}
        for bucket, _ in BUCKETS:
            key = cache_key(*shape, self.rows_for(bucket))
            entry = self._stored.get(key)
            if entry is not None and entry["kernel"] in self.candidates:
                self.sources.add("disk cache")
            else:
                entry = self._stored[key] = self._fresh[key] = self.measure(shape, self.rows_for(bucket))
                self.sources.add("measured")
            self.records[key] = entry
            plan[bucket] = entry["kernel"]
        self._plans[shape] = plan
        return plan

    def flush(self) -> None:
        """Write the choices measured since the last flush to the disk cache."""
        if self._fresh and self.cache:
            self.cache.store(self._fresh)
        self._fresh = {}

    @torch.inference_mode()
    def measure(self, shape: Shape, rows: int) -> dict:
        """Time every candidate on a random (rows, in) input; the fastest that agrees with float64 wins."""
        from .dense import Dense

        out_f, in_f, has_bias = shape
        g = torch.Generator().manual_seed(out_f * 7919 + in_f)
        w = torch.randn(out_f, in_f, generator=g) / in_f ** 0.5
        b = torch.randn(out_f, generator=g) if has_bias else None
        x = torch.randn(rows, in_f, generator=g)
        head = x[:CHECK_ROWS].double()
        want = head @ w.double().t() + (0 if b is None else b.double())
        tol = RTOL * float(want.abs().max()) + 1e-6
        layers: dict[str, Dense] = {}
        rejected: list[str] = []
        for kernel in self.candidates:  # the check's call also builds oneDNN's primitive for the shape
            layer = Dense(w, b, kernels=kernel)
            got = layer(x)
            err = float((got[:CHECK_ROWS].double() - want).abs().max()) if got.shape == (rows, out_f) else float("inf")
            if err <= tol:  # False for NaN too
                layers[kernel] = layer
            else:
                logger.warning("kernel %s disagrees with float64 on %dx%d at %d rows (max error %.3g > %.3g); "
                               "not used", kernel, out_f, in_f, rows, err, tol)
                rejected.append(kernel)
        seconds = dict.fromkeys(layers, float("inf"))
        spent = 0.0
        for round_ in range(MAX_ROUNDS):
            if round_ >= MIN_ROUNDS and spent > ROUNDS_BUDGET_S:
                break
            for kernel, layer in layers.items():
                took = float(self.timer(layer, x))
                seconds[kernel], spent = min(seconds[kernel], took), spent + took
        if not seconds:
            raise RuntimeError(f"no matrix kernel of {self.candidates} agrees with float64 for a {out_f}x{in_f} "
                               f"weight at {rows} rows on this CPU/torch build")
        best = min(seconds, key=seconds.__getitem__)
        return {"kernel": best, "seconds": seconds, "rejected": rejected}

    def info(self) -> dict:
        """A JSON-able summary of the plans made so far, for ``last_decode_info`` and job metadata."""
        chosen = {f"{o}x{i}{'+b' if b else ''}": dict(p) for (o, i, b), p in sorted(self._plans.items())}
        kinds = {k for p in self._plans.values() for k in p.values()}
        return {"requested": self.requested, "kernel": kinds.pop() if len(kinds) == 1 else "mixed",
                "source": "+".join(sorted(self.sources)) or "none", "cpu": cpu_model(),
                "threads": torch.get_num_threads(), "by_shape": chosen}
