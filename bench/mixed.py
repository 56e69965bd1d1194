"""Mixed load: a nightly run over stored symbols while a person posts a one-symbol forecast every 2 s.

Measures, for each queue policy on the same machine in the same run:

* `fifo` (KRONOS_QUEUE_POLICY=fifo, the behaviour before priorities: no message priorities, bulk
  jobs run whole, fixed fan-out batches of KRONOS_SCHEDULE_BATCH_SYMBOLS) and
* `priority` (the default: interactive first, bulk jobs yield every ~KRONOS_BULK_CHUNK_SECONDS,
  fan-out over the live worker slots),

the night's wall time alone and with the interactive client running, the interactive jobs' latency
(submit to finished, p50/p99) during the night, and the bulk chunks' mean model time (the issue's
target: interactive p99 at most one chunk + 1 s; the night within 5% of its time alone). A second
table runs a smaller night (`--scaling-symbols`, 200 by default) alone under both policies: with
fifo it is one job on one of the two processes, with priority it is spread over both (target:
at least 1.8x the symbols per second). A third figure posts one forecast of `--posted-symbols`
(200 by default) alone: with fifo it runs whole on one process, with priority it is split into
parts over both (jobs/parts.py).

Why it matters: a person's forecast must not wait for a night's fan-out, and the night must use
every worker it has. Figures only; nothing passes or fails on time. One worker with 2 prefork
children, one torch thread each, on the embedded default (SQLite + filesystem broker) unless
`--stack redis` (KRONOS_TEST_REDIS_URL / KRONOS_TEST_DATABASE_URL). The machine's load average is
printed before and after: on a shared machine the figures move with it.

    python -m bench.mixed [--symbols 1000] [--configs tiny,small] [--lookback 400] [--pred-len 48]
                          [--policies fifo,priority] [--scaling-symbols 200] [--posted-symbols 200]
                          [--chunk-seconds 3]

The last line of stdout is one JSON object.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.nightly import store_bars, stored_symbols  # noqa: E402 - the store loader, shared
from bench.queue import WORKER_ENV, Stack, fresh_redis_and_schema  # noqa: E402 - the worker harness, shared

INTERACTIVE_EVERY_S = 2.0


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> list[float]:
    return [round(x, 2) for x in os.getloadavg()]


def make_schedule(stack: Stack, model: str, args, symbols: list[str] | None) -> str:
    from kronos_jobs.jobs import schedules
    from kronos_jobs.db.session import session_scope

    with session_scope(stack.settings) as session:
        schedule = schedules.create_schedule(session, tenant_id="default", fields=dict(
            name=f"bench-{time.time_ns()}", cron="0 18 * * 1-5", timezone="UTC", symbols=symbols, freq="5min",
            model=model, device="cpu", lookback=args.lookback, pred_len=args.pred_len,
            sampling={"seed": 0, "sample_count": 1}, quantiles=None, calendar={}, min_history=None, enabled=True),
            model_dirs=stack.settings.effective_model_dirs)
        return schedule.id


def run_night(stack: Stack, model: str, args, symbols: list[str] | None = None) -> dict:
    """Trigger a run now and wait for its final state; wall time, jobs and chunk figures."""
    from kronos_jobs.crud import schedules as schedule_crud
    from kronos_jobs.db.session import session_scope
    from kronos_jobs.jobs import schedules

    schedule_id = make_schedule(stack, model, args, symbols)
    started = time.perf_counter()
    run, _ = schedules.trigger_run(stack.settings, tenant_id="default", schedule_id=schedule_id)
    schedules.fan_out(stack.settings, run.id)
    while True:
        now = datetime.now(timezone.utc)
        schedules.tick(stack.settings, now)  # finishes the run once its jobs ended
        with session_scope(stack.settings) as session:
            row = schedule_crud.get_run(session, tenant_id="default", run_id=run.id)
            if row.state not in ("queued", "running"):
                wall = time.perf_counter() - started
                if row.state != "succeeded":  # a figure of failed symbols would measure nothing
                    raise RuntimeError(f"night run {run.id} ended {row.state}: {(row.symbol_errors or [])[:3]}")
                jobs = schedule_crud.run_jobs(session, run_id=run.id)
                chunks = [j.execution_metadata.get("chunks", {}).get("count", 1) for j in jobs]
                inference = sum(j.execution_metadata["timings"]["inference_seconds"] for j in jobs)
                n = row.progress_total
                return {"state": row.state, "symbols": n, "jobs": len(jobs), "chunks": int(sum(chunks)),
                        "wall_s": round(wall, 2), "symbols_per_s": round(n / wall, 2),
                        "mean_chunk_model_s": round(inference / max(1, sum(chunks)), 3),
                        "live_slots": (row.detail.get("fanout") or {}).get("live_slots")}
        time.sleep(0.2)


def run_posted(stack: Stack, model: str, args) -> dict:
    """One forecast of `args.posted_symbols` stored symbols, submitted as a person would; its wall
    time (submit to finished) and how many parts it ran in."""
    from kronos_jobs.crud import jobs as job_crud
    from kronos_jobs.crud import series as series_crud
    from kronos_jobs.db.session import session_scope
    from kronos_jobs.jobs.submit import submit_forecast

    with session_scope(stack.settings) as session:
        bars = series_crud.latest_bars(session, tenant_id="default", lookback=args.lookback,
                                       keys=[(symbol, "5min") for symbol in stored_symbols(args.posted_symbols)])
    bars = bars.drop(columns="freq")
    request = {"model": model, "device": "cpu", "lookback": args.lookback, "pred_len": args.pred_len,
               "sampling": {"sample_count": 1, "seed": 0}, "quantiles": None,
               "freq": {symbol: "5min" for symbol in bars["symbol"].unique()}}
    started = time.perf_counter()
    with session_scope(stack.settings) as session:
        job_id = submit_forecast(session, stack.settings, tenant_id="default", request=request, bars=bars,
                                 future=None, source="inline").id
    while True:
        with session_scope(stack.settings) as session:
            job = job_crud.get_job(session, tenant_id="default", job_id=job_id)
            if job.finished_at is not None:
                wall = time.perf_counter() - started
                if job.state != "succeeded":
                    raise RuntimeError(f"posted job {job_id} ended {job.state}: {job.error}")
                pids = {p.get("worker_pid") for p in job.execution_metadata.get("parts", [])}
                return {"state": job.state, "symbols": args.posted_symbols, "parts": job.parts or 1,
                        "processes": len(pids) or 1, "wall_s": round(wall, 2),
                        "symbols_per_s": round(args.posted_symbols / wall, 2)}
        time.sleep(0.2)


class InteractiveClient:
    """Posts a one-symbol forecast every INTERACTIVE_EVERY_S seconds through the submit path the API
    uses, then reads each job's latency (created to finished) from the database."""

    def __init__(self, stack: Stack, model: str, args):
        from kronos_jobs.testing.factories import make_bars

        self.stack, self.model, self.args = stack, model, args
        self.bars = make_bars({"PERSON": args.lookback + 10}, freq="5min", start="2024-06-17 13:30", seed=99)
        self.job_ids: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        from kronos_jobs.db.session import session_scope
        from kronos_jobs.jobs.submit import submit_forecast

        request = {"model": self.model, "device": "cpu", "lookback": self.args.lookback, "pred_len": self.args.pred_len,
                   "sampling": {"sample_count": 1, "seed": 0}, "quantiles": None}
        while not self._stop.is_set():
            with session_scope(self.stack.settings) as session:
                job = submit_forecast(session, self.stack.settings, tenant_id="default", request=request,
                                      bars=self.bars, future=None, source="inline")
                self.job_ids.append(job.id)
            self._stop.wait(INTERACTIVE_EVERY_S)

    def start(self) -> None:
        self._thread.start()

    def stop_and_measure(self, timeout: float = 600.0) -> dict:
        from kronos_jobs.crud import jobs as job_crud
        from kronos_jobs.db.session import session_scope

        self._stop.set()
        self._thread.join()
        deadline = time.monotonic() + timeout
        latencies, waits = [], []
        for job_id in self.job_ids:
            while True:
                with session_scope(self.stack.settings) as session:
                    job = job_crud.get_job(session, tenant_id="default", job_id=job_id)
                    if job.finished_at is not None:
                        latencies.append((job.finished_at - job.created_at).total_seconds())
                        waits.append(job.queue_wait_seconds or 0.0)
                        break
                if time.monotonic() > deadline:
                    raise RuntimeError(f"interactive job {job_id} did not finish")
                time.sleep(0.2)
        a, w = np.asarray(latencies), np.asarray(waits)
        return {"n": len(a), "p50_s": round(float(np.percentile(a, 50)), 3), "p99_s": round(float(np.percentile(a, 99)), 3),
                "max_s": round(float(a.max()), 3), "wait_p50_s": round(float(np.percentile(w, 50)), 3),
                "wait_p99_s": round(float(np.percentile(w, 99)), 3)}


def stack_for(policy: str, args, root: Path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("KRONOS_") or k.startswith("KRONOS_TEST_")}
    env.update(WORKER_ENV, KRONOS_DATA_DIR=str(root / policy / "data"), KRONOS_MODEL_DIRS=str(root / "models"),
               PYTHONPATH=str(REPO), KRONOS_QUEUE_POLICY=policy, KRONOS_BULK_CHUNK_SECONDS=str(args.chunk_seconds),
               KRONOS_SCHEDULE_BATCH_SYMBOLS=str(args.batch_symbols))
    cleanup = None
    if args.stack == "redis":
        env.update(KRONOS_BROKER_URL=os.environ["KRONOS_TEST_REDIS_URL"],
                   KRONOS_DATABASE_URL=os.environ["KRONOS_TEST_DATABASE_URL"])
        cleanup = fresh_redis_and_schema(env)
    (root / policy).mkdir(parents=True, exist_ok=True)
    return Stack(f"{args.stack}-{policy}", env, root / policy), cleanup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=1000)
    parser.add_argument("--scaling-symbols", type=int, default=200, help="The smaller night run alone (0: skip).")
    parser.add_argument("--posted-symbols", type=int, default=200, help="One large POSTed forecast alone (0: skip).")
    parser.add_argument("--lookback", type=int, default=400)
    parser.add_argument("--pred-len", type=int, default=48)
    parser.add_argument("--configs", default="tiny,small", help="Comma-separated: tiny, small.")
    parser.add_argument("--policies", default="fifo,priority")
    parser.add_argument("--chunk-seconds", type=float, default=3.0, help="KRONOS_BULK_CHUNK_SECONDS.")
    parser.add_argument("--batch-symbols", type=int, default=250, help="KRONOS_SCHEDULE_BATCH_SYMBOLS.")
    parser.add_argument("--stack", choices=["embedded", "redis"], default="embedded")
    args = parser.parse_args()

    root = Path(tempfile.mkdtemp(prefix="bench-mixed-"))
    load_before = load_average()
    print(f"CPU {cpu_name()}, {os.cpu_count()} cores, load average {load_before} (1/5/15 min)")
    from kronos_jobs.testing.checkpoints import save_tiny_checkpoint

    models = {"tiny": lambda: str(save_tiny_checkpoint(root / "models" / "tiny", seed=0, max_context=512)),
              "small": lambda: "random:small"}
    results: dict[str, dict] = {}
    for policy in args.policies.split(","):
        stack, cleanup = stack_for(policy, args, root)
        store_s = store_bars(stack, args.symbols, args.lookback + 20)
        print(f"[{policy}] stored {args.symbols} symbols in {store_s:.1f} s")
        stack.start(concurrency=2)
        try:
            for name in args.configs.split(","):
                model = models[name]()
                row: dict = {"alone": run_night(stack, model, args)}
                client = InteractiveClient(stack, model, args)
                client.start()
                row["with_interactive"] = run_night(stack, model, args)
                row["interactive"] = client.stop_and_measure()
                if args.scaling_symbols >= args.symbols:  # the same night as the one run alone
                    row["scaling"] = row["alone"]
                elif args.scaling_symbols:
                    subset = stored_symbols(args.scaling_symbols)
                    row["scaling"] = run_night(stack, model, args, subset)
                if args.posted_symbols:
                    row["posted"] = run_posted(stack, model, args)
                results.setdefault(name, {})[policy] = row
                alone, mixed, inter = row["alone"], row["with_interactive"], row["interactive"]
                print(f"[{policy}] {name:5s} night alone {alone['wall_s']:8.2f} s ({alone['jobs']} jobs, "
                      f"{alone['chunks']} chunks of {alone['mean_chunk_model_s']:.2f} s model time) | with client "
                      f"{mixed['wall_s']:8.2f} s ({mixed['wall_s'] / alone['wall_s']:.3f}x) | interactive "
                      f"p50 {inter['p50_s']:.2f} s p99 {inter['p99_s']:.2f} s (n={inter['n']})"
                      + (f" | {args.scaling_symbols}-symbol night {row['scaling']['symbols_per_s']:.2f} symbols/s "
                         f"({row['scaling']['jobs']} jobs)" if args.scaling_symbols else "")
                      + (f" | posted {args.posted_symbols} symbols {row['posted']['symbols_per_s']:.2f} symbols/s "
                         f"({row['posted']['parts']} parts on {row['posted']['processes']} processes)"
                         if args.posted_symbols else ""))
        finally:
            stack.stop()
            if cleanup is not None:
                cleanup()

    summary = {}
    for name, by_policy in results.items():
        if {"fifo", "priority"} <= set(by_policy):
            before, after = by_policy["fifo"], by_policy["priority"]
            summary[name] = {
                "interactive_p99_before_s": before["interactive"]["p99_s"],
                "interactive_p99_after_s": after["interactive"]["p99_s"],
                "target_p99_s": round(after["alone"]["mean_chunk_model_s"] + 1.0, 3),
                "night_slowdown_after": round(after["with_interactive"]["wall_s"] / after["alone"]["wall_s"], 3),
                "scaling_ratio": (round(after["scaling"]["symbols_per_s"] / before["scaling"]["symbols_per_s"], 2)
                                  if "scaling" in after else None),
                "posted_ratio": (round(after["posted"]["symbols_per_s"] / before["posted"]["symbols_per_s"], 2)
                                 if "posted" in after else None),
            }
            s = summary[name]
            print(f"{name:5s} interactive p99 {s['interactive_p99_before_s']:.2f} s -> {s['interactive_p99_after_s']:.2f} s "
                  f"(target <= {s['target_p99_s']:.2f} s); night with client / alone {s['night_slowdown_after']:.3f} "
                  f"(target <= 1.05); {args.scaling_symbols}-symbol night priority / one job "
                  f"{s['scaling_ratio']}x (target >= 1.8); posted {args.posted_symbols}-symbol forecast "
                  f"in parts / whole {s['posted_ratio']}x")
    load_after = load_average()
    print(f"load average after {load_after}")
    print(json.dumps({"bench": "mixed", "stack": args.stack, "cpu": cpu_name(), "cores": os.cpu_count(),
                      "load_average_before": load_before, "load_average_after": load_after, "worker_processes": 2,
                      "symbols": args.symbols, "scaling_symbols": args.scaling_symbols,
                      "posted_symbols": args.posted_symbols, "lookback": args.lookback,
                      "pred_len": args.pred_len, "chunk_seconds": args.chunk_seconds, "batch_symbols": args.batch_symbols,
                      "interactive_every_s": INTERACTIVE_EVERY_S, "results": results, "summary": summary},
                     separators=(",", ":")))


if __name__ == "__main__":
    main()
