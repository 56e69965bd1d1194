"""Nightly run: a schedule over stored symbols of 5-minute bars, fanned out to 2 CPU worker processes,
then what a year of such nights costs in storage and what retention gives back.

Measures, per model configuration (`tiny`: a tiny random checkpoint; `mini` / `small`: random weights
in the kronos-mini / kronos-small architecture, the same compute as the published models):

* wall time from the beat's tick (run created) to the run's final state, and symbols per second;
* the share of time spent outside the model: store reads, batching and job submission (the
  fan-out, in the beat process) plus the workers' time around `predict_batch` (claim, input load,
  result writes, progress), against the summed inference time the workers report;
* the database: each table's size after storing `--symbols` symbols, after the night's runs, after
  pruning inputs (as 31 days later) and after pruning results and job rows (as 366 days later),
  each measured after VACUUM so freed space counts; bytes per forecast row and per stored input;
* with `--stack redis`: the Redis memory one queued task takes (MEMORY USAGE of the queue list
  holding `--redis-tasks` real task messages, divided by their number).

`--forecast-symbols` forecasts only the first N stored symbols (the store still holds `--symbols`),
so a large store can be measured on a machine too slow to forecast all of it in one sitting; the
rates then extrapolate linearly (the jobs are independent batches of KRONOS_SCHEDULE_BATCH_SYMBOLS).

Why it matters: the nightly job must be bound by the model, not by the store or the queue, and the
database must stop growing once retention applies. Figures only; nothing passes or fails on time.
One worker with 2 prefork children, one torch thread each (KRONOS_TORCH_THREADS=1), on the embedded
default (SQLite + filesystem broker) unless `--stack redis` (KRONOS_TEST_REDIS_URL /
KRONOS_TEST_DATABASE_URL).

    python -m bench.nightly --stack redis --symbols 10000 --forecast-symbols 500 --configs mini

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
        names = {symbol: n_bars for symbol in stored_symbols(min(first + 100, n_symbols))[first:]}
        bars = make_bars(names, freq="5min", start="2024-06-17 13:30", seed=first)
        with session_scope(stack.settings) as session:
            series_crud.upsert_bars(session, tenant_id="default", bars=bars, freqs={s: "5min" for s in names})
    return time.perf_counter() - started


def stored_symbols(n: int) -> list[str]:
    """The names `store_bars` gives its first `n` symbols."""
    return [f"SYM{i:05d}" for i in range(n)]


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def table_sizes(stack: Stack) -> dict[str, int]:
    """Bytes per table (indexes and TOAST included), after VACUUM so deleted rows no longer count."""
    from sqlalchemy import text

    from kronos_jobs.db.session import get_engine

    engine = get_engine(stack.settings)
    tables = ("job_inputs", "forecasts", "jobs", "series_bars", "schedule_runs", "schedule_run_jobs", "pruned_records")
    if engine.dialect.name == "postgresql":
        with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
            for table in tables:
                if table != "series_bars":  # never pruned; rewriting it would only cost time
                    c.execute(text(f"VACUUM FULL {table}"))
            return {t: int(c.execute(text("SELECT pg_total_relation_size(:t)"), {"t": t}).scalar()) for t in tables}
    with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as c:
        c.execute(text("VACUUM"))
        try:
            return {t: int(c.execute(text("SELECT coalesce(sum(pgsize), 0) FROM dbstat WHERE name = :t OR name LIKE :i"),
                                     {"t": t, "i": f"%{t}%"}).scalar()) for t in tables}
        except Exception:  # SQLite built without dbstat: the whole file only
            path = Path(stack.settings.effective_database_url.removeprefix("sqlite:///"))
            return {"file": path.stat().st_size}


def row_counts(stack: Stack) -> dict[str, int]:
    from sqlalchemy import text

    from kronos_jobs.db.session import session_scope

    with session_scope(stack.settings) as session:
        return {t: int(session.execute(text(f"SELECT count(*) FROM {t}")).scalar())
                for t in ("job_inputs", "forecasts", "jobs", "series_bars")}


def storage_and_pruning(stack: Stack, before_run: dict[str, int], n_symbols: int) -> dict:
    """Sizes after the runs, after pruning inputs (31 days on) and everything due a year on."""
    from datetime import timedelta

    from kronos_jobs.db.models import utcnow
    from kronos_jobs.jobs.retention import prune

    after_run, counts = table_sizes(stack), row_counts(stack)
    started = time.perf_counter()
    month = prune(stack.settings, now=utcnow() + timedelta(days=31))
    month_s = time.perf_counter() - started
    after_month = table_sizes(stack)
    started = time.perf_counter()
    year = prune(stack.settings, now=utcnow() + timedelta(days=366))
    year_s = time.perf_counter() - started
    after_year = table_sizes(stack)
    night = {t: after_run.get(t, 0) - before_run.get(t, 0) for t in after_run}
    return {
        "sizes": {"stored_only": before_run, "after_runs": after_run, "after_prune_31d": after_month,
                  "after_prune_366d": after_year},
        "rows_after_runs": counts, "night_bytes": night,
        "bytes_per_forecast_row": round((night.get("forecasts", 0)) / counts["forecasts"], 1) if counts["forecasts"] else None,
        "bytes_per_input_symbol": round(night.get("job_inputs", 0) / n_symbols, 1) if n_symbols else None,
        "prune_31d": {"seconds": round(month_s, 3), "inputs": month.inputs},
        "prune_366d": {"seconds": round(year_s, 3), "forecast_rows": year.result_rows, "jobs": year.jobs,
                       "schedule_runs": year.schedule_runs},
    }


def redis_bytes_per_task(stack: Stack, n: int) -> dict:
    """MEMORY USAGE of a queue holding n real run_forecast messages (to a queue no worker reads)."""
    import uuid

    import redis

    from kronos_jobs.broker.celery_app import app_for
    from kronos_jobs.core.names import TASK_RUN_FORECAST

    client = redis.Redis.from_url(stack.settings.effective_broker_url)
    queue = f"bench-memory-{uuid.uuid4().hex[:8]}"
    app = app_for(stack.settings)
    before = client.info("memory")["used_memory"]
    for _ in range(n):
        job_id = uuid.uuid4().hex
        app.send_task(TASK_RUN_FORECAST, args=[job_id], task_id=job_id, queue=queue)
    key_bytes = client.memory_usage(queue, samples=0)
    used = client.info("memory")["used_memory"] - before
    length = client.llen(queue)
    client.delete(queue)
    return {"tasks": length, "queue_key_bytes": key_bytes, "bytes_per_task": round(key_bytes / length, 1),
            "used_memory_delta_per_task": round(used / length, 1)}


def run_schedule(stack: Stack, model: str, args) -> dict:
    from kronos_jobs.crud import schedules as schedule_crud
    from kronos_jobs.db.session import session_scope
    from kronos_jobs.jobs import schedules

    with session_scope(stack.settings) as session:
        schedule = schedules.create_schedule(session, tenant_id="default", fields=dict(
            name=f"bench-{time.time_ns()}", cron="0 18 * * 1-5", timezone="America/New_York",
            symbols=None if args.forecast_symbols is None else stored_symbols(args.forecast_symbols),
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
                return summarise(run, jobs, wall, run.progress_total)
        time.sleep(0.2)


def summarise(run, jobs, wall: float, n_symbols: int) -> dict:
    fanout = run.detail.get("timings", {})
    worker_elapsed = sum((j.finished_at - j.started_at).total_seconds() for j in jobs)
    inference = sum(j.execution_metadata["timings"]["inference_seconds"] for j in jobs)
    model_load = sum(j.execution_metadata["timings"]["model_load_seconds"] for j in jobs)
    busy = fanout.get("fanout_seconds", 0.0) + worker_elapsed
    return {
        "state": run.state, "symbols": n_symbols, "jobs": len(jobs), "wall_s": round(wall, 2), "symbols_per_s": round(n_symbols / wall, 2),
        "fanout_s": round(fanout.get("fanout_seconds", 0.0), 3), "store_read_s": round(fanout.get("store_read_seconds", 0.0), 3),
        "submit_s": round(fanout.get("submit_seconds", 0.0), 3), "worker_busy_s": round(worker_elapsed, 2),
        "inference_s": round(inference, 2), "model_load_s": round(model_load, 2),
        "outside_model_share": round(1 - inference / busy, 4) if busy else None,
        "outside_model_share_excl_load": round(1 - inference / (busy - model_load), 4) if busy > model_load else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--symbols", type=int, default=10_000, help="Symbols stored in the series store.")
    parser.add_argument("--forecast-symbols", type=int, default=None, help="Forecast only the first N (default: all).")
    parser.add_argument("--redis-tasks", type=int, default=1000, help="Queued tasks for the Redis memory figure.")
    parser.add_argument("--lookback", type=int, default=400)
    parser.add_argument("--pred-len", type=int, default=48)
    parser.add_argument("--bars", type=int, default=None, help="Stored bars per symbol (default lookback + 50).")
    parser.add_argument("--configs", default="mini", help="Comma-separated: tiny, mini, small.")
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
    print(f"cpu: {cpu_model()}, {os.cpu_count()} cores, load average {os.getloadavg()}")
    load_s = store_bars(stack, args.symbols, args.bars or args.lookback + 50)
    print(f"stored {args.symbols} symbols x {args.bars or args.lookback + 50} bars in {load_s:.1f} s ({args.stack})")
    stored_sizes = table_sizes(stack)
    redis_memory = redis_bytes_per_task(stack, args.redis_tasks) if args.stack == "redis" else None
    if redis_memory:
        print(f"redis: {redis_memory['bytes_per_task']} bytes per queued task ({redis_memory['tasks']} tasks)")
    from kronos_jobs.testing.checkpoints import save_tiny_checkpoint

    models = {"tiny": lambda: str(save_tiny_checkpoint(root / "models" / "tiny", seed=0, max_context=512)), "mini": lambda: "random:mini",
              "small": lambda: "random:small"}
    results = {}
    stack.start(concurrency=2)
    try:
        for name in args.configs.split(","):
            results[name] = run_schedule(stack, models[name](), args)
            r = results[name]
            print(f"{name:6s} {r['state']:20s} wall {r['wall_s']:8.2f} s  {r['symbols_per_s']:8.2f} symbols/s  "
                  f"outside model {100 * r['outside_model_share']:.1f}% "
                  f"(fan-out {r['fanout_s']:.2f} s, load {r['model_load_s']:.2f} s, inference {r['inference_s']:.2f} s)")
        stack.stop()
        storage = storage_and_pruning(stack, stored_sizes, sum(r["symbols"] for r in results.values()))
        for phase, sizes in storage["sizes"].items():
            print(f"db {phase:18s} " + "  ".join(f"{t} {b / 1e6:.2f} MB" for t, b in sizes.items()))
        print(f"forecast row: {storage['bytes_per_forecast_row']} bytes, input: {storage['bytes_per_input_symbol']} "
              f"bytes per symbol; prune 31 d {storage['prune_31d']}, "
              f"366 d {storage['prune_366d']}")
    finally:
        stack.stop()
        if cleanup is not None:
            cleanup()
    print(f"load average after: {os.getloadavg()}")
    print(json.dumps({"bench": "nightly", "stack": args.stack, "cpu": cpu_model(), "cores": os.cpu_count(),
                      "loadavg": os.getloadavg(), "worker_processes": 2, "symbols_stored": args.symbols,
                      "symbols_forecast": args.forecast_symbols or args.symbols, "lookback": args.lookback,
                      "pred_len": args.pred_len, "batch_symbols": args.batch_symbols, "store_load_s": round(load_s, 2),
                      "redis": redis_memory, "storage": storage, "results": results}, separators=(",", ":")))


if __name__ == "__main__":
    main()
