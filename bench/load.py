"""Load with keys: many clients of several tenants submitting one-symbol forecasts over HTTP.

Runs, on Redis + PostgreSQL (KRONOS_TEST_REDIS_URL / KRONOS_TEST_DATABASE_URL, a fresh Redis DB and
schema), two API processes on the same database and broker, one with KRONOS_AUTH=on and one with
KRONOS_AUTH=off, and `--workers` CPU workers. `--clients` threads, each holding one of `--tenants`
tenants' keys, submit `--jobs` one-symbol jobs in alternating rounds (off, on, off, on, ...), so
both modes see the same machine load. Then it checks that every job completed exactly once (state
succeeded, one delivery, one result row) and that no tenant's key sees another tenant's jobs (its
list holds exactly its own; another tenant's ids answer 404).

Printed: submit latency p50/p99 per mode under that concurrency and, separately, for one client
submitting serially (the cost of auth per request without queueing in front of it); completion
throughput; the CPU model and load average. Target: auth adds at most 2 ms to the p50 submit
latency without it. Figures only; nothing passes or fails on time.

    python bench/load.py [--jobs 2000] [--clients 50] [--tenants 5] [--workers 2] [--serial 200]

The last line of stdout is one JSON object.
"""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
sys.path[:] = [p for p in sys.path if Path(p or ".").resolve() != _HERE]
sys.path.insert(0, str(_HERE.parent))

import argparse  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import platform  # noqa: E402
import random  # noqa: E402
import signal  # noqa: E402
import socket  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ThreadPoolExecutor  # noqa: E402

import httpx  # noqa: E402
import numpy as np  # noqa: E402

REPO = _HERE.parent
KRONOS_JOBS = Path(sys.executable).with_name("kronos-jobs")


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ms(values: list[float]) -> dict[str, float]:
    a = np.asarray(values) * 1000.0
    return {"n": int(a.size), "p50_ms": round(float(np.percentile(a, 50)), 2),
            "p99_ms": round(float(np.percentile(a, 99)), 2), "mean_ms": round(float(a.mean()), 2)}


def body_for(checkpoint: Path, symbol: str, bars: list[dict]) -> dict:
    return {"model": str(checkpoint), "device": "cpu", "lookback": 32, "pred_len": 1,
            "sampling": {"sample_count": 1, "seed": 0}, "quantiles": None,
            "series": [{"symbol": symbol, "freq": "5min", "bars": bars}]}


class Deployment:
    """Two APIs (auth on, auth off) and the workers, as `kronos-jobs` processes on one Redis + PostgreSQL."""

    def __init__(self, env: dict[str, str], root: Path, workers: int):
        from kronos_jobs.core.settings import Settings
        from kronos_jobs.db.migrate import upgrade

        self.env, self.root, self.procs = env, root, []
        self.settings = Settings(**{k[len("KRONOS_"):].lower(): v for k, v in env.items()
                                    if k.startswith("KRONOS_") and not k.startswith("KRONOS_TEST_")})
        upgrade(self.settings)
        self.urls = {}
        for mode in ("on", "off"):
            port = free_port()
            self._start(f"api-{mode}", [str(KRONOS_JOBS), "api", "--port", str(port)], KRONOS_AUTH=mode)
            self.urls[mode] = f"http://127.0.0.1:{port}"
        for i in range(workers):
            self._start(f"worker-{i}", [sys.executable, "-m", "kronos_jobs.runtime.worker", "--pool", "cpu",
                                        "--concurrency", "1"])
        self._wait_ready(workers)

    def _start(self, name: str, argv: list[str], **extra: str) -> None:
        log = open(self.root / f"{name}.log", "ab")
        self.procs.append(subprocess.Popen(argv, cwd=REPO, env={**self.env, **extra}, stdout=log,
                                           stderr=subprocess.STDOUT, start_new_session=True))

    def _wait_ready(self, workers: int) -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            dead = [p for p in self.procs if p.poll() is not None]
            if dead:
                raise RuntimeError(f"a process exited; logs in {self.root}")
            try:
                ready = [httpx.get(f"{url}/readyz", timeout=3).json() for url in self.urls.values()]
                if all(sum(len(v) for v in r["workers"].values()) >= workers for r in ready):
                    return
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            time.sleep(0.5)
        raise RuntimeError(f"the stack did not become ready; logs in {self.root}")

    def stop(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
        for proc in self.procs:
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()


def fresh_redis_and_schema(env: dict[str, str]):
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
    parser.add_argument("--jobs", type=int, default=2000)
    parser.add_argument("--clients", type=int, default=50)
    parser.add_argument("--tenants", type=int, default=5)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=4, help="alternating off/on submission rounds (even)")
    parser.add_argument("--serial", type=int, default=200, help="serial submits per mode by one client")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds to wait for every job to finish")
    args = parser.parse_args()
    redis_url, db_url = os.environ.get("KRONOS_TEST_REDIS_URL"), os.environ.get("KRONOS_TEST_DATABASE_URL")
    if not (redis_url and db_url):
        sys.exit("bench/load.py needs KRONOS_TEST_REDIS_URL and KRONOS_TEST_DATABASE_URL (Redis + PostgreSQL)")

    from sqlalchemy import func, select

    from kronos_jobs.crud import api_keys
    from kronos_jobs.db.models import ForecastRow, Job
    from kronos_jobs.db.session import session_scope
    from kronos_jobs.testing.checkpoints import save_tiny_checkpoint
    from kronos_jobs.testing.factories import bar_records

    root = Path(tempfile.mkdtemp(prefix="kronos-bench-load-"))
    checkpoint = save_tiny_checkpoint(root / "models" / "tiny-model")
    env = {k: v for k, v in os.environ.items() if not k.startswith("KRONOS_") or k.startswith("KRONOS_TEST_")}
    env.update(KRONOS_BROKER_URL=redis_url, KRONOS_DATABASE_URL=db_url, KRONOS_DATA_DIR=str(root / "data"),
               KRONOS_MODEL_DIRS=str(root / "models"), KRONOS_TORCH_THREADS="1", KRONOS_LOG_LEVEL="WARNING",
               # Both modes count every request and every tenant's in-flight jobs, far from the limits,
               # so neither refuses anything and the comparison is of the work auth adds.
               KRONOS_RATE_LIMIT="1000000/minute", KRONOS_MAX_INFLIGHT_JOBS="1000000",
               PYTHONPATH=str(REPO))  # this checkout's code, also for the `kronos-jobs` console script
    cleanup = fresh_redis_and_schema(env)
    load_before = os.getloadavg()
    deployment = None
    try:
        deployment = Deployment(env, root, args.workers)
        tenants = [f"tenant{i}" for i in range(args.tenants)]
        with session_scope(deployment.settings) as session:
            keys = {t: api_keys.create_key(session, tenant_id=t, scopes=["read", "submit"])[1] for t in tenants}
        bars = bar_records(40)

        submitted: dict[str, list[str]] = {t: [] for t in tenants}
        submitted_off: list[str] = []
        latencies: dict[str, list[float]] = {"on": [], "off": []}
        lock = threading.Lock()
        errors: list[str] = []

        def submit(mode: str, client_no: int, http: httpx.Client, n: int) -> None:
            tenant = tenants[client_no % len(tenants)]
            headers = {"Authorization": f"Bearer {keys[tenant]}"} if mode == "on" else {}
            for j in range(n):
                body = body_for(checkpoint, f"S{client_no}X{j}", bars)
                started = time.perf_counter()
                response = http.post("/v1/jobs/forecast", json=body, headers=headers)
                elapsed = time.perf_counter() - started
                with lock:
                    if response.status_code != 202:
                        errors.append(f"{mode} {response.status_code} {response.text[:200]}")
                        continue
                    latencies[mode].append(elapsed)
                    (submitted[tenant] if mode == "on" else submitted_off).append(response.json()["id"])

        # the auth work alone, in this process, without HTTP: the key lookup on a pooled session (as a
        # request does) and the rate-limit count in Redis; alternated with a bare `SELECT 1` round trip
        from sqlalchemy import text

        from api.quotas import KeyRateLimiter

        limiter = KeyRateLimiter.from_settings(deployment.settings.model_copy(update={"rate_limit": "1000000/minute"}))
        micro = {"key_lookup": [], "rate_limit_hit": [], "select_1": []}
        token = keys[tenants[0]]
        for _ in range(args.serial):
            with session_scope(deployment.settings) as session:
                started = time.perf_counter()
                session.execute(text("SELECT 1"))
                micro["select_1"].append(time.perf_counter() - started)
            with session_scope(deployment.settings) as session:
                started = time.perf_counter()
                assert api_keys.find_active_key(session, token=token) is not None
                micro["key_lookup"].append(time.perf_counter() - started)
            started = time.perf_counter()
            limiter.hit("bench")
            micro["rate_limit_hit"].append(time.perf_counter() - started)

        # serial: one client, alternating modes, nothing else running on the API
        serial = {"on": [], "off": []}
        with httpx.Client(base_url=deployment.urls["on"], timeout=60) as on, \
                httpx.Client(base_url=deployment.urls["off"], timeout=60) as off:
            for i in range(args.serial * 2):
                mode = ("off", "on")[i % 2]
                http = on if mode == "on" else off
                headers = {"Authorization": f"Bearer {keys[tenants[0]]}"} if mode == "on" else {}
                started = time.perf_counter()
                response = http.post("/v1/jobs/forecast", json=body_for(checkpoint, f"SER{i}", bars), headers=headers)
                serial[mode].append(time.perf_counter() - started)
                assert response.status_code == 202, response.text
                (submitted[tenants[0]] if mode == "on" else submitted_off).append(response.json()["id"])

        # concurrent: --clients threads, alternating rounds of off and on
        per_round = args.jobs // args.rounds
        t_first = time.monotonic()
        clients = [(httpx.Client(base_url=deployment.urls["on"], timeout=120),
                    httpx.Client(base_url=deployment.urls["off"], timeout=120)) for _ in range(args.clients)]
        with ThreadPoolExecutor(args.clients) as pool:
            for r in range(args.rounds):
                mode = ("off", "on")[r % 2]
                shares = [per_round // args.clients + (1 if c < per_round % args.clients else 0) for c in range(args.clients)]
                list(pool.map(lambda c: submit(mode, c, clients[c][0] if mode == "on" else clients[c][1], shares[c]),
                              range(args.clients)))
        t_submitted = time.monotonic()
        for pair in clients:
            for http in pair:
                http.close()

        all_ids = [i for ids in submitted.values() for i in ids] + submitted_off
        deadline = time.monotonic() + args.timeout
        while True:
            with session_scope(deployment.settings) as session:
                done = session.scalar(select(func.count()).select_from(Job).where(Job.state.in_(
                    ("succeeded", "failed", "partially_succeeded", "cancelled"))))
            if done >= len(all_ids) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
        t_done = time.monotonic()

        with session_scope(deployment.settings) as session:
            rows = session.execute(select(Job.id, Job.tenant_id, Job.state, Job.attempts, Job.created_at,
                                          Job.finished_at)).all()
            result_rows = dict(session.execute(select(ForecastRow.job_id, func.count()).group_by(ForecastRow.job_id)).all())
        by_id = {row.id: row for row in rows}
        exactly_once = sum(1 for i in all_ids if i in by_id and by_id[i].state == "succeeded"
                           and by_id[i].attempts == 1 and result_rows.get(i) == 1)
        concurrent_ids = set(all_ids)
        finished = [by_id[i].finished_at for i in concurrent_ids if by_id.get(i) is not None and by_id[i].finished_at]
        created = [by_id[i].created_at for i in concurrent_ids if by_id.get(i) is not None]
        span = (max(finished) - min(created)).total_seconds() if finished else float("nan")

        # isolation: each key lists exactly its tenant's jobs; other tenants' ids are 404
        leaks, wrong_lists, probes = 0, 0, 0
        with httpx.Client(base_url=deployment.urls["on"], timeout=60) as http:
            for tenant in tenants:
                headers = {"Authorization": f"Bearer {keys[tenant]}"}
                seen, cursor = set(), None
                while True:
                    page = http.get("/v1/jobs", params={"limit": 500, **({"cursor": cursor} if cursor else {})},
                                    headers=headers).json()
                    seen |= {job["id"] for job in page["data"]}
                    cursor = page["next_cursor"]
                    if not cursor:
                        break
                wrong_lists += seen != set(submitted[tenant])
                others = [i for t in tenants if t != tenant for i in submitted[t]] + submitted_off
                for job_id in random.Random(0).sample(others, min(40, len(others))):
                    probes += 1
                    leaks += http.get(f"/v1/jobs/{job_id}", headers=headers).status_code != 404
    finally:
        if deployment is not None:
            deployment.stop()
        cleanup()
    load_after = os.getloadavg()

    on, off = ms(latencies["on"]), ms(latencies["off"])
    s_on, s_off = ms(serial["on"]), ms(serial["off"])
    total = len(all_ids)
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores; load average before {load_before}, after {load_after}")
    print(f"{args.jobs} concurrent jobs ({args.clients} clients, {args.tenants} tenants, {args.rounds} alternating "
          f"rounds) + {2 * args.serial} serial, {args.workers} workers")
    print(f"{'submit latency':<28} {'auth off':>12} {'auth on':>12} {'on - off':>10}")
    print(f"{'concurrent p50':<28} {off['p50_ms']:>10.2f}ms {on['p50_ms']:>10.2f}ms {on['p50_ms'] - off['p50_ms']:>8.2f}ms")
    print(f"{'concurrent p99':<28} {off['p99_ms']:>10.2f}ms {on['p99_ms']:>10.2f}ms {on['p99_ms'] - off['p99_ms']:>8.2f}ms")
    print(f"{'serial p50':<28} {s_off['p50_ms']:>10.2f}ms {s_on['p50_ms']:>10.2f}ms {s_on['p50_ms'] - s_off['p50_ms']:>8.2f}ms")
    print(f"{'serial p99':<28} {s_off['p99_ms']:>10.2f}ms {s_on['p99_ms']:>10.2f}ms {s_on['p99_ms'] - s_off['p99_ms']:>8.2f}ms")
    micro_ms = {name: ms(values) for name, values in micro.items()}
    print("auth work alone (p50 / p99): " + ", ".join(
        f"{name} {m['p50_ms']:.2f} / {m['p99_ms']:.2f} ms" for name, m in micro_ms.items()))
    print(f"submit errors: {len(errors)}; completed exactly once: {exactly_once}/{total}; "
          f"completion throughput {total / span:.1f} jobs/s over {span:.1f} s "
          f"(concurrent submission took {t_submitted - t_first:.1f} s, all done {t_done - t_first:.1f} s after it began)")
    print(f"isolation: {args.tenants} tenant lists exact: {args.tenants - wrong_lists}/{args.tenants}; "
          f"cross-tenant reads answered 404: {probes - leaks}/{probes}")
    for line in errors[:5]:
        print("error:", line)
    print(json.dumps({
        "bench": "load", "cpu": cpu_model(), "cores": os.cpu_count(), "loadavg_before": load_before,
        "loadavg_after": load_after, "jobs": args.jobs, "serial_per_mode": args.serial, "clients": args.clients,
        "tenants": args.tenants, "workers": args.workers,
        "submit_concurrent": {"auth_on": on, "auth_off": off, "p50_delta_ms": round(on["p50_ms"] - off["p50_ms"], 2)},
        "submit_serial": {"auth_on": s_on, "auth_off": s_off, "p50_delta_ms": round(s_on["p50_ms"] - s_off["p50_ms"], 2)},
        "auth_work_alone": micro_ms, "submitted": total, "submit_errors": len(errors), "completed_exactly_once": exactly_once,
        "throughput_jobs_per_s": round(total / span, 2), "tenant_lists_exact": args.tenants - wrong_lists,
        "cross_tenant_probes": probes, "cross_tenant_leaks": leaks,
    }, separators=(",", ":")))


if __name__ == "__main__":
    main()
