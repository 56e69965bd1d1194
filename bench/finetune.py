"""Fine-tuning throughput and checkpoint overhead for the Kronos-small configuration.

Measures, with random weights of the published architectures (Kronos-small predictor, 24.7M
parameters, on the Kronos-Tokenizer-base tokenizer) and the spec §6 windows (lookback 90 +
predict 10 + 1 bars):

* training steps/s and samples/s of `model.finetune.FinetuneLoop` for the tokenizer and the
  predictor phase on CPU, and on CUDA with and without AMP (bf16 autocast) when a GPU is present;
* the time of one atomic resumable checkpoint (`FinetuneLoop.save_checkpoint`: weights, AdamW
  state, scheduler, RNG) and its share of training time at the job default cadence (every 100
  steps) and at every step.

Why it matters: the checkpoint cadence trades lost work after a worker dies against time spent
writing; this says what a cadence costs. Figures only; nothing passes or fails on time. The
steps are the loop's own `_train_step` (nanoGPT's bench.py is likewise a shortened train.py).

    python bench/finetune.py [--batch-size 8] [--steps 5] [--warmup 1] [--phases tokenizer,predictor]

The last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

# `python bench/finetune.py` puts bench/ first on sys.path, where bench/queue.py would shadow the
# standard library's `queue` (torch imports it).
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import torch  # noqa: E402

from kronos_jobs.cli.sample_data import sample_bars  # noqa: E402
from kronos_jobs.jobs.registry import PUBLISHED_MODELS  # noqa: E402
from model.finetune import FinetuneConfig, FinetuneLoop  # noqa: E402
from model.tokenizer import TOKENIZER_CONFIGS, KronosTokenizer  # noqa: E402
from model.transformer import KRONOS_CONFIGS, Kronos  # noqa: E402

SMALL = PUBLISHED_MODELS["kronos-small"]
JOB_CHECKPOINT_EVERY = 100  # kronos_jobs FinetuneParams.checkpoint_every_steps default


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def build(phase: str, device: str, amp: bool, batch_size: int, series, ckpt_dir: Path) -> FinetuneLoop:
    torch.manual_seed(0)
    tokenizer = KronosTokenizer(TOKENIZER_CONFIGS[SMALL.tokenizer_size])
    config = FinetuneConfig(epochs=1, batch_size=batch_size, amp=amp, lookback=90, predict_window=10, seed=0)
    if phase == "tokenizer":
        return FinetuneLoop("tokenizer", tokenizer, series, None, config, device=device, checkpoint_dir=ckpt_dir)
    model = Kronos(KRONOS_CONFIGS[SMALL.size])
    return FinetuneLoop("predictor", model, series, None, config, tokenizer=tokenizer, device=device, checkpoint_dir=ckpt_dir)


def measure(phase: str, device: str, amp: bool, args, series) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        loop = build(phase, device, amp, args.batch_size, series, Path(tmp))
        batches = loop._epoch_order(0)
        times = []
        for i in range(args.warmup + args.steps):
            sync(loop.device)
            t0 = time.perf_counter()
            loop._train_step(batches[i % len(batches)])
            sync(loop.device)
            if i >= args.warmup:
                times.append(time.perf_counter() - t0)
        checkpoints = []
        for _ in range(args.checkpoints):
            sync(loop.device)
            t0 = time.perf_counter()
            loop.save_checkpoint()
            checkpoints.append(time.perf_counter() - t0)
        state_mb = (Path(tmp) / "training_state.pt").stat().st_size / 2**20
    step = statistics.median(times)
    ckpt = statistics.median(checkpoints)
    params = sum(p.numel() for p in loop.model.parameters())
    return {
        "phase": phase, "device": str(loop.device), "amp": bool(loop.use_amp), "batch_size": args.batch_size,
        "params": params, "step_s": round(step, 4), "steps_per_s": round(1 / step, 3),
        "samples_per_s": round(args.batch_size / step, 2), "checkpoint_s": round(ckpt, 4),
        "checkpoint_mb": round(state_mb, 1), "checkpoint_over_step": round(ckpt / step, 3),
        f"checkpoint_share_every_{JOB_CHECKPOINT_EVERY}": round(ckpt / (ckpt + JOB_CHECKPOINT_EVERY * step), 4),
        "checkpoint_share_every_step": round(ckpt / (ckpt + step), 4),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=5, help="timed steps per configuration")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--checkpoints", type=int, default=2, help="timed checkpoint writes per configuration")
    parser.add_argument("--phases", default="tokenizer,predictor")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    bars = sample_bars(4, 400, seed=0)
    series = {s: f.drop(columns="symbol").reset_index(drop=True) for s, f in bars.groupby("symbol")}

    runs = [("cpu", False)]
    if torch.cuda.is_available():
        runs += [("cuda", False), ("cuda", True)]
    results = [measure(phase, device, amp, args, series) for device, amp in runs for phase in args.phases.split(",")]

    card = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    print(f"kronos-small fine-tune, batch {args.batch_size}, window 101, torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads, GPU: {card or 'none'}")
    header = f"{'phase':<10} {'device':<7} {'amp':<5} {'step s':>8} {'steps/s':>8} {'samples/s':>10} {'ckpt s':>7} {'ckpt MB':>8} {'share@100':>9}"
    print(header)
    for r in results:
        print(f"{r['phase']:<10} {r['device']:<7} {str(r['amp']):<5} {r['step_s']:>8.3f} {r['steps_per_s']:>8.2f} "
              f"{r['samples_per_s']:>10.1f} {r['checkpoint_s']:>7.3f} {r['checkpoint_mb']:>8.1f} "
              f"{r[f'checkpoint_share_every_{JOB_CHECKPOINT_EVERY}']:>9.2%}")
    baseline = {(r["phase"]): r["samples_per_s"] for r in results if r["device"] == "cpu"}
    for r in results:
        r["speedup_vs_cpu"] = round(r["samples_per_s"] / baseline[r["phase"]], 2) if r["phase"] in baseline else None
    print(json.dumps({"bench": "finetune", "model": "kronos-small", "cpu": platform.processor() or platform.machine(),
                      "gpu": card, "torch": torch.__version__, "threads": torch.get_num_threads(), "results": results},
                     separators=(",", ":")))


if __name__ == "__main__":
    main()
