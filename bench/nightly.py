"""Nightly run: a schedule over N stored symbols of 5-minute bars, fanned out to 2 CPU worker processes.

Measures, per model configuration (`tiny`: a tiny random checkpoint, `small`: random weights in the
kronos-small architecture, the same compute as the published model):

* wall time from the beat's tick (run created) to the run's final state, and symbols per second;
* the share of time spent outside the model: store reads, batching and job submission (the
  fan-out, in the beat process) plus the workers' time around `predict_batch` (claim, input load,
  result writes, progress), against the summed inference time the workers report.

Why it matters: the nightly job must be bound by the model, not by the store or the queue.
Figures only; nothing passes or fails on time. One worker with 2 prefork children, one torch thread
each (KRONOS_TORCH_THREADS=1), on the embedded default (SQLite + filesystem broker) unless
`--stack redis` (KRONOS_TEST_REDIS_URL / KRONOS_TEST_DATABASE_URL).

    python -m bench.nightly [--symbols 1000] [--lookback 400] [--pred-len 48] [--configs tiny,small]

The last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.queue import WORKER_ENV, Stack, fresh_redis_and_schema  # noqa: E402 - the worker harness, shared

NOW = datetime(2024, 6, 19, 22, 0, 5, tzinfo=timezone.utc)  # Wednesday 18:00:05 in New York


def store_bars(stack: Stack, n_symbols: int, n_bars: int) -> float:
    """Synthetic 5-minute session bars for n symbols into the series store; returns seconds."""
    from kronos_jobs.crud import series as series_crud
    from kronos_jobs.db.session import session_scope
    from kronos_jobs.testing.factories import make_bars

    started = time.perf_counter()
    for first in range(0, n_symbols, 100):
        names = {f"SYM{i:04d}": n_bars for i in range(first, min(first + 100, n_symbols))}
        bars = make_bars(names, freq="5min", start="2024-06-17 13:30", seed=first)
        with session_scope(stack.settings) as session:
            series_crud.upsert_bars(session, tenant_id="default", bars=bars, freqs={s: "5min" for s in names})
    return time.perf_counter() - started


def run_schedule(stack: Stack, model: str, args) -> dict:
    from kronos_jobs.crud import schedules as schedule_crud
    from kronos_jobs.db.session import session_scope
    from kronos_jobs.jobs import schedules

    with session_scope(stack.settings) as session:
        schedule = schedules.create_schedule(session, tenant_id="default", fields=dict(
            name=f"bench-{time.time_ns()}", cron="0 18 * * 1-5", timezone="America/New_York", symbols=None,
            freq="5min", model=model, device="cpu", lookback=args.lookback, pred_len=args.pred_len,
            sampling={"seed": 0, "sample_count": 1}, quantiles=None, calendar={}, min_history=None, enabled=True),
            model_dirs=stack.settings.effective_model_dirs)
        schedule_crud.update_schedule(session, tenant_id="default", schedule_id=schedule.id,
                                      changes={"anchor_at": datetime(2024, 6, 19, tzinfo=timezone.utc)})
    started = time.perf_counter()
    (run_id,) = schedules.tick(stack.settings, NOW)
    while True:
        schedules.tick(stack.settings, NOW)
        with session_scope(stack.settings) as session:
            run = schedule_crud.get_run(session, tenant_id="default", run_id=run_id)
            if run.state not in ("queued", "running"):
                wall = time.perf_counter() - started
                jobs = schedule_crud.run_jobs(session, run_id=run_id)
                return summarise(run, jobs, wall, args.symbols)
        time.sleep(0.2)


def summarise(run, jobs, wall: float, n_symbols: int) -> dict:
    fanout = run.detail.get("timings", {})
    worker_elapsed = sum((j.finished_at - j.started_at).total_seconds() for j in jobs)
    inference = sum(j.execution_metadata["timings"]["inference_seconds"] for j in jobs)
    model_load = sum(j.execution_metadata["timings"]["model_load_seconds"] for j in jobs)
    busy = fanout.get("fanout_seconds", 0.0) + worker_elapsed
    return {
        "state": run.state, "jobs": len(jobs), "wall_s": round(wall, 2), "symbols_per_s": round(n_symbols / wall, 2),
        "fanout_s": round(fanout.get("fanout_seconds", 0.0), 3), "store_read_s": round(fanout.get("store_read_seconds", 0.0), 3),
        "submit_s": round(fanout.get("submit_seconds", 0.0), 3), "worker_busy_s": round(worker_elapsed, 2),
        "inference_s": round(inference, 2), "model_load_s": round(model_load, 2),
        "outside_model_share": round(1 - inference / busy, 4) if busy else None,
        "outside_model_share_excl_load": round(1 - inference / (busy - model_load), 4) if busy > model_load else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=1000)
    parser.add_argument("--lookback", type=int, default=400)
    parser.add_argument("--pred-len", type=int, default=48)
    parser.add_argument("--bars", type=int, default=None, help="Stored bars per symbol (default lookback + 50).")
    parser.add_argument("--configs", default="tiny,small", help="Comma-separated: tiny, small.")
    parser.add_argument("--batch-symbols", type=int, default=250, help="KRONOS_SCHEDULE_BATCH_SYMBOLS.")
    parser.add_argument("--stack", choices=["embedded", "redis"], default="embedded")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-nightly-"))
    env = {k: v for k, v in os.environ.items() if not k.startswith("KRONOS_") or k.startswith("KRONOS_TEST_")}
    env.update(WORKER_ENV, KRONOS_DATA_DIR=str(root / "data"), KRONOS_MODEL_DIRS=str(root / "models"), PYTHONPATH=str(REPO),
               KRONOS_SCHEDULE_BATCH_SYMBOLS=str(args.batch_symbols))
    cleanup = None
    if args.stack == "redis":  # an empty Redis DB and a fresh PostgreSQL schema, dropped at the end
        env.update(KRONOS_BROKER_URL=os.environ["KRONOS_TEST_REDIS_URL"],
                   KRONOS_DATABASE_URL=os.environ["KRONOS_TEST_DATABASE_URL"])
        cleanup = fresh_redis_and_schema(env)
    stack = Stack(args.stack, env, root)
    load_s = store_bars(stack, args.symbols, args.bars or args.lookback + 50)
    print(f"stored {args.symbols} symbols x {args.bars or args.lookback + 50} bars in {load_s:.1f} s ({args.stack})")
    from kronos_jobs.testing.checkpoints import save_tiny_checkpoint

    models = {"tiny": lambda: str(save_tiny_checkpoint(root / "models" / "tiny", seed=0, max_context=512)), "small": lambda: "random:small"}
    results = {}
    stack.start(concurrency=2)
    try:
        for name in args.configs.split(","):
            results[name] = run_schedule(stack, models[name](), args)
            r = results[name]
            print(f"{name:6s} {r['state']:20s} wall {r['wall_s']:8.2f} s  {r['symbols_per_s']:8.2f} symbols/s  "
                  f"outside model {100 * r['outside_model_share']:.1f}% "
                  f"(fan-out {r['fanout_s']:.2f} s, load {r['model_load_s']:.2f} s, inference {r['inference_s']:.2f} s)")
    finally:
        stack.stop()
        if cleanup is not None:
            cleanup()
    print(json.dumps({"bench": "nightly", "stack": args.stack, "cpu": platform.processor() or platform.machine(),
                      "cores": os.cpu_count(), "worker_processes": 2, "symbols": args.symbols, "lookback": args.lookback,
                      "pred_len": args.pred_len, "batch_symbols": args.batch_symbols, "store_load_s": round(load_s, 2),
                      "results": results}, separators=(",", ":")))


if __name__ == "__main__":
    main()
