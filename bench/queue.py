"""Queue overhead: what the job system adds on top of the forecast itself.

Measures, for a one-symbol, one-step forecast with a tiny random model:

* latency from `submit_forecast` (validate, store, commit, send) to the job row's `finished_at`
  (`succeeded`), one job at a time;
* completion throughput of 200 such jobs submitted at once to one worker with 2 prefork children;

on Redis + PostgreSQL (when KRONOS_TEST_REDIS_URL / KRONOS_TEST_DATABASE_URL are set) and on the
embedded default (SQLite + kombu filesystem broker), against the same forecast called in-process
through the same predictor. Overhead per job = latency - in-process forecast time (p50, p99).
Why it matters: the target is p50 overhead <= 25 ms on Redis + PostgreSQL, so queueing stays noise
next to real forecasts. Figures only; nothing passes or fails on time.

    python -m bench.queue [--latency-jobs 100] [--throughput-jobs 200] [--stacks embedded,redis]

The last line of stdout is one JSON object.
"""

from __future__ import annotations

import sys
from pathlib import Path

# `python bench/queue.py` would put bench/ first on sys.path, and this file would shadow the
# standard library's `queue` module for everything imported after it.
_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import signal  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from datetime import datetime, timezone  # noqa: E402

import numpy as np  # noqa: E402
from sqlalchemy import select  # noqa: E402

REPO = _HERE.parent
WORKER_ENV = {"KRONOS_TORCH_THREADS": "1", "KRONOS_LOG_LEVEL": "WARNING", "KRONOS_MAX_BATCH_SIZE": "64"}


def percentiles(values: list[float]) -> dict[str, float]:
    a = np.asarray(values) * 1000.0
    return {"p50_ms": round(float(np.percentile(a, 50)), 2), "p99_ms": round(float(np.percentile(a, 99)), 2),
            "mean_ms": round(float(a.mean()), 2)}


def request_for(checkpoint: Path) -> dict:
    return {"model": str(checkpoint), "device": "cpu", "lookback": 32, "pred_len": 1,
            "sampling": {"sample_count": 1, "seed": 0}, "quantiles": None}


def in_process_forecast(checkpoint: Path, bars, n: int) -> list[float]:
    """The baseline: the same forecast through the same cached predictor, no queue, no database."""
    import torch

    from kronos_jobs.core.settings import Settings
    from kronos_jobs.jobs import model_cache
    from kronos_jobs.jobs.registry import resolve_model
    from kronos_jobs.jobs.series import build_inputs
    from kronos_jobs.jobs.submit import ForecastParams

    torch.set_num_threads(1)  # as each worker child runs (KRONOS_TORCH_THREADS=1)
    params = ForecastParams.from_value(request_for(checkpoint))
    spec = resolve_model(str(checkpoint), model_dirs=[checkpoint.parent])
    entry, _ = model_cache.get_predictor(spec, "cpu", Settings())
    (item,), _ = build_inputs(bars, None, params)
    times = []
    for i in range(n + 5):
        started = time.perf_counter()
        entry.predictor.predict_batch([item.context], [item.x_timestamp], [item.y_timestamp], pred_len=1,
                                      sample_count=1, seed=0)
        if i >= 5:  # warm-up
            times.append(time.perf_counter() - started)
    return times


class Stack:
    def __init__(self, name: str, env: dict[str, str], root: Path):
        from kronos_jobs.core.settings import Settings
        from kronos_jobs.db.migrate import upgrade

        self.name, self.env, self.root = name, env, root
        self.settings = Settings(**{k[len("KRONOS_"):].lower(): v for k, v in env.items()
                                    if k.startswith("KRONOS_") and not k.startswith("KRONOS_TEST_")})
        upgrade(self.settings)
        self.proc = None

    def start(self, concurrency: int) -> None:
        from kronos_jobs.crud import workers as worker_crud
        from kronos_jobs.db.session import session_scope

        log = open(self.root / "worker.log", "ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "kronos_jobs.runtime.worker", "--pool", "cpu", "--concurrency",
                                      str(concurrency)], cwd=REPO, env=self.env, stdout=log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            with session_scope(self.settings) as session:
                if worker_crud.live_workers(session, stale_seconds=60):
                    return
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited: {(self.root / 'worker.log').read_text()[-2000:]}")
            time.sleep(0.2)
        raise RuntimeError("worker did not register")

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)  # warm shutdown: the parent stops its children
            try:
                self.proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)

    def submit(self, checkpoint: Path, bars) -> str:
        from kronos_jobs.db.session import session_scope
        from kronos_jobs.jobs.submit import submit_forecast

        with session_scope(self.settings) as session:
            return submit_forecast(session, self.settings, tenant_id="default", request=request_for(checkpoint),
                                   bars=bars, future=None, source="inline").id

    def finished(self, job_ids: list[str]) -> dict[str, tuple[str, datetime]]:
        from kronos_jobs.db.models import Job
        from kronos_jobs.db.session import session_scope

        with session_scope(self.settings) as session:
            rows = session.execute(select(Job.id, Job.state, Job.finished_at).where(
                Job.id.in_(job_ids), Job.finished_at.is_not(None))).all()
        return {r[0]: (r[1], r[2]) for r in rows}

    def started_at(self, job_id: str) -> datetime:
        from kronos_jobs.db.models import Job
        from kronos_jobs.db.session import session_scope

        with session_scope(self.settings) as session:
            return session.scalar(select(Job.started_at).where(Job.id == job_id))

    def wait(self, job_ids: list[str], timeout: float = 600, poll: float = 0.02) -> dict[str, tuple[str, datetime]]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            done = self.finished(job_ids)
            if len(done) == len(job_ids):
                return done
            time.sleep(poll)
        raise RuntimeError(f"{self.name}: {len(job_ids) - len(self.finished(job_ids))} job(s) never finished")


def measure(stack: Stack, checkpoint: Path, bars, latency_jobs: int, throughput_jobs: int, baseline: float) -> dict:
    # Warm-up: each child loads the model lazily on its first job.
    stack.wait([stack.submit(checkpoint, bars) for _ in range(8)])

    latencies, phases = [], {"submit": [], "delivery": [], "execution": []}
    for _ in range(latency_jobs):
        submitted = datetime.now(timezone.utc)
        job_id = stack.submit(checkpoint, bars)
        returned = datetime.now(timezone.utc)
        # Latency comes from the row's finished_at, not from when the poll saw it, so poll gently:
        # a tight poll loop would steal CPU from the worker on a small machine.
        state, finished_at = stack.wait([job_id], poll=0.02)[job_id]
        assert state == "succeeded", state
        latencies.append((finished_at - submitted).total_seconds())
        started_at = stack.started_at(job_id)
        phases["submit"].append((returned - submitted).total_seconds())  # validate, store, commit, send
        phases["delivery"].append((started_at - returned).total_seconds())  # broker -> child -> claimed
        phases["execution"].append((finished_at - started_at).total_seconds())  # load, predict, write, finish

    started = datetime.now(timezone.utc)
    ids = [stack.submit(checkpoint, bars) for _ in range(throughput_jobs)]
    submit_seconds = (datetime.now(timezone.utc) - started).total_seconds()
    done = stack.wait(ids, poll=0.05)
    assert all(state == "succeeded" for state, _ in done.values())
    wall = (max(f for _, f in done.values()) - started).total_seconds()
    return {
        "stack": stack.name, "durable_commit_ms": durable_commit_ms(stack.settings), "latency": percentiles(latencies),
        "phases_p50_ms": {k: percentiles(v)["p50_ms"] for k, v in phases.items()},
        "overhead": percentiles([lat - baseline for lat in latencies]),
        "throughput_jobs_per_s": round(throughput_jobs / wall, 2), "throughput_wall_s": round(wall, 2),
        "submit_ms_per_job": round(1000 * submit_seconds / throughput_jobs, 2),
    }


def durable_commit_ms(settings, n: int = 50) -> float:
    """Median time of one durable INSERT + COMMIT: the floor under each of a job's 3 commits
    (submit, claim, finish). On PostgreSQL it is the WAL fsync; SQLite in WAL mode skips it."""
    from sqlalchemy import text

    from kronos_jobs.db.session import get_engine

    engine = get_engine(settings)
    with engine.begin() as c:
        c.execute(text("CREATE TABLE IF NOT EXISTS bench_commit (x INTEGER)"))
    times = []
    with engine.connect() as c:
        for _ in range(n):
            started = time.perf_counter()
            c.execute(text("INSERT INTO bench_commit VALUES (1)"))
            c.commit()
            times.append(time.perf_counter() - started)
    return round(1000 * float(np.median(times)), 2)


def stack_envs(root: Path, names: list[str]) -> dict[str, dict[str, str]]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("KRONOS_") or k.startswith("KRONOS_TEST_")}
    base["KRONOS_MODEL_DIRS"] = str(root / "models")  # where main() saves the tiny checkpoint
    base.update(WORKER_ENV, PYTHONPATH=str(REPO))
    envs = {}
    if "embedded" in names:
        envs["embedded"] = {**base, "KRONOS_DATA_DIR": str(root / "embedded")}
    redis_url, db_url = os.environ.get("KRONOS_TEST_REDIS_URL"), os.environ.get("KRONOS_TEST_DATABASE_URL")
    if "redis" in names and redis_url and db_url:
        envs["redis+postgresql"] = {**base, "KRONOS_DATA_DIR": str(root / "redis"), "KRONOS_BROKER_URL": redis_url,
                                    "KRONOS_DATABASE_URL": db_url}
    return envs


def fresh_redis_and_schema(env: dict[str, str]) -> callable:
    """Point env at an empty Redis DB and a new PostgreSQL schema; return the clean-up."""
    import uuid

    import redis
    from sqlalchemy import text
    from sqlalchemy.engine import make_url

    from kronos_jobs.db.session import make_engine
    from kronos_jobs.testing.services import claim_redis_db

    env["KRONOS_BROKER_URL"] = claim_redis_db(env["KRONOS_BROKER_URL"])
    server = make_url(env["KRONOS_DATABASE_URL"])
    schema = f"kbench_{uuid.uuid4().hex[:8]}"
    admin = make_engine(server.render_as_string(hide_password=False))
    with admin.begin() as c:
        c.execute(text(f'CREATE SCHEMA "{schema}"'))
    env["KRONOS_DATABASE_URL"] = server.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(
        hide_password=False)

    def cleanup():
        from kronos_jobs.db.session import dispose_engines

        dispose_engines()
        with admin.begin() as c:
            c.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        redis.Redis.from_url(env["KRONOS_BROKER_URL"]).flushdb()

    return cleanup


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--latency-jobs", type=int, default=100)
    parser.add_argument("--throughput-jobs", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=2, help="worker processes (prefork children)")
    parser.add_argument("--stacks", default="redis,embedded")
    args = parser.parse_args()

    from kronos_jobs.testing.checkpoints import save_tiny_checkpoint
    from kronos_jobs.testing.factories import make_bars

    root = Path(tempfile.mkdtemp(prefix="kronos-bench-queue-"))
    checkpoint = save_tiny_checkpoint(root / "models" / "tiny-model")
    bars = make_bars({"BENCH": 32})
    base_times = in_process_forecast(checkpoint, bars, n=max(50, args.latency_jobs))
    baseline = float(np.median(base_times))
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"in-process forecast (tiny model, 1 symbol, 1 step): p50 {1000 * baseline:.2f} ms")

    results = []
    for name, env in stack_envs(root, args.stacks.split(",")).items():
        cleanup = fresh_redis_and_schema(env) if name.startswith("redis") else None
        stack = Stack(name, env, root / name.replace("+", "-"))
        stack.root.mkdir(parents=True, exist_ok=True)
        try:
            stack.start(args.concurrency)
            results.append(measure(stack, checkpoint, bars, args.latency_jobs, args.throughput_jobs, baseline))
        finally:
            stack.stop()
            if cleanup:
                cleanup()

    print(f"{'stack':<18} {'lat p50':>9} {'lat p99':>9} {'ovh p50':>9} {'ovh p99':>9} {'jobs/s':>8} {'submit':>8}")
    for r in results:
        print(f"{r['stack']:<18} {r['latency']['p50_ms']:>7.1f}ms {r['latency']['p99_ms']:>7.1f}ms "
              f"{r['overhead']['p50_ms']:>7.1f}ms {r['overhead']['p99_ms']:>7.1f}ms "
              f"{r['throughput_jobs_per_s']:>8.1f} {r['submit_ms_per_job']:>6.1f}ms")
    for r in results:
        print(f"{r['stack']}: p50 submit {r['phases_p50_ms']['submit']:.1f} ms, delivery "
              f"{r['phases_p50_ms']['delivery']:.1f} ms, execution {r['phases_p50_ms']['execution']:.1f} ms "
              f"(of which the forecast ~{1000 * baseline:.1f} ms); one durable commit {r['durable_commit_ms']:.1f} ms")
    in_process_rate = 1.0 / baseline
    print(json.dumps({"bench": "queue", "machine": f"{platform.machine()} x{os.cpu_count()}", "device": "cpu",
                      "worker_processes": args.concurrency, "in_process": percentiles(base_times),
                      "in_process_jobs_per_s_one_process": round(in_process_rate, 1), "stacks": results},
                     separators=(",", ":")))


if __name__ == "__main__":
    main()
