"""One machine, no servers: `kronos-jobs up` and `kronos-jobs demo`.

`up` upgrades the database once, then runs the API, one CPU worker and the beat scheduler as
separate real processes (`python -m kronos_jobs.cli api | worker --pool cpu | beat`), each in its
own session so a Ctrl-C reaches only the launcher, which then stops them in order: SIGTERM (a
warm shutdown for Celery, a graceful one for uvicorn), then SIGKILL for whatever is left. A child
that dies on its own stops the rest and makes `up` exit non-zero. With nothing configured the
processes meet on the embedded default: a SQLite file and kombu's filesystem broker under
KRONOS_DATA_DIR.

`demo` is the main job end to end, over HTTP: synthetic bars for a dozen symbols, a forecast job
submitted to the API (whose processes it starts itself when none answers), a progress bar, a
summary table, the result as Parquet and a chart PNG (see `kronos_jobs/demo_report.py`).
"""

from __future__ import annotations

import ctypes
import os
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

import httpx

from kronos_jobs.names import Pool
from kronos_jobs.settings import Settings

# The processes of `up`, by name: arguments after `python -m kronos_jobs.cli`.
PROCESSES: dict[str, list[str]] = {
    "api": ["api"],
    "worker-cpu": ["worker", "--pool", Pool.CPU.value],
    "beat": ["beat"],
}
READY_TIMEOUT_SECONDS = 120.0  # first start imports torch and migrates; slow disks need the margin
# A warm shutdown waits for running forecasts and lets a fine-tune checkpoint and requeue itself;
# whatever still runs after this long is killed, and its late-acked message is delivered again.
STOP_TIMEOUT_SECONDS = 45.0
INTERRUPT_STOP_TIMEOUT_SECONDS = 5.0  # an interrupted demo stops its own processes promptly
POLL_SECONDS = 0.2

_PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:  # pragma: no cover - runs in the child between fork and exec
    """Children get SIGTERM when the launcher dies, even by SIGKILL (Linux; elsewhere a no-op)."""
    os.setsid()
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


@dataclass
class Child:
    name: str
    argv: list[str]
    process: subprocess.Popen | None = None
    reader: threading.Thread | None = None

    @property
    def returncode(self) -> int | None:
        return None if self.process is None else self.process.poll()


@dataclass
class Stack:
    """The processes of `up`: start, wait for the API, watch, stop."""

    settings: Settings
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    log: IO[str] = field(default_factory=lambda: sys.stdout)
    children: list[Child] = field(default_factory=list)
    _log_lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self, commands: Mapping[str, list[str]] | None = None) -> None:
        """Start `commands` (name -> argv), by default the processes of `up`."""
        if commands is None:
            commands = {name: [sys.executable, "-m", "kronos_jobs.cli", *args] for name, args in PROCESSES.items()}
        # Spawn every child before any reader thread exists: _die_with_parent runs between fork
        # and exec, which is only safe in a process without other threads.
        for name, argv in commands.items():
            child = Child(name, list(argv))
            child.process = subprocess.Popen(
                argv, env=dict(self.env), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT, text=True, bufsize=1, errors="replace",
                preexec_fn=_die_with_parent if sys.platform.startswith("linux") else None,
                start_new_session=not sys.platform.startswith("linux"),
            )
            self.children.append(child)
        for child in self.children:
            child.reader = threading.Thread(target=self._pump, args=(child,), daemon=True)
            child.reader.start()

    def _pump(self, child: Child) -> None:
        """Copy a child's output to the log, each line prefixed with the child's name."""
        assert child.process is not None and child.process.stdout is not None
        for line in child.process.stdout:
            with self._log_lock:
                self.log.write(f"{child.name:>10} | {line}")
                self.log.flush()

    def dead(self) -> Child | None:
        """The first child that has exited, if any."""
        return next((c for c in self.children if c.returncode is not None), None)

    def wait_until_ready(self, timeout: float = READY_TIMEOUT_SECONDS) -> None:
        """Block until the API answers /healthz; RuntimeError if a child dies or time runs out."""
        url = self.settings.effective_api_url
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (child := self.dead()) is not None:
                raise RuntimeError(f"{child.name} exited with code {child.returncode} during start-up")
            if api_is_up(url):
                return
            time.sleep(POLL_SECONDS)
        raise RuntimeError(f"the API did not answer {url}/healthz within {timeout:.0f} s")

    def wait_for_worker(self, pool: Pool = Pool.CPU, timeout: float = READY_TIMEOUT_SECONDS) -> None:
        """Block until the API lists a live worker of `pool` (so routing sees it)."""
        url = self.settings.effective_api_url
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (child := self.dead()) is not None:
                raise RuntimeError(f"{child.name} exited with code {child.returncode} during start-up")
            try:
                workers = httpx.get(f"{url}/v1/workers", timeout=5.0).json()["data"]
                if any(w["live"] and w["pool"] == pool.value for w in workers):
                    return
            except (httpx.HTTPError, ValueError, KeyError):
                pass
            time.sleep(POLL_SECONDS)
        raise RuntimeError(f"no live {pool.value} worker registered within {timeout:.0f} s")

    def stop(self, timeout: float = STOP_TIMEOUT_SECONDS) -> None:
        """SIGTERM every live child, wait, then SIGKILL the process group of any that remain."""
        live = [c for c in self.children if c.returncode is None]
        for child in live:
            # The child only, not its group: a Celery worker stops its own pool children in order.
            child.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for child in live:
            try:
                child.process.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                print(f"kronos-jobs: {child.name} did not stop within {timeout:.0f} s; killing it", file=sys.stderr)
        for child in self.children:
            _signal_group(child, signal.SIGKILL)  # also prefork grandchildren left behind
            if child.process is not None:
                child.process.wait()
            if child.reader is not None:
                child.reader.join(timeout=2)


def _signal_group(child: Child, signum: int) -> None:
    if child.process is None:
        return
    try:
        os.killpg(child.process.pid, signum)
    except (ProcessLookupError, PermissionError):
        pass


def redacted(url: str) -> str:
    """The URL with its password replaced, fit for a log line."""
    return re.sub(r"(://[^:/@]*:)[^@/]*@", r"\1***@", url)


def api_is_up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def upgrade_database(settings: Settings) -> None:
    """Bring the schema to head once, before the children start (they upgrade too, as no-ops)."""
    from kronos_jobs.db.migrate import upgrade

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings)


class _StopRequested(Exception):
    pass


def _raise_stop(signum: int, _frame: object) -> None:
    raise _StopRequested(signal.Signals(signum).name)


def up(settings: Settings, *, env: Mapping[str, str] | None = None) -> int:
    """Run the API, a CPU worker and beat until SIGINT/SIGTERM (0) or until a child dies (1)."""
    print(f"kronos-jobs up: database {redacted(settings.effective_database_url)}", flush=True)
    print(f"kronos-jobs up: broker {redacted(settings.effective_broker_url)}"
          + (f" (folder {settings.broker_dir})" if settings.effective_broker_url.startswith("filesystem") else ""),
          flush=True)
    upgrade_database(settings)
    stack = Stack(settings, env=dict(env if env is not None else os.environ))
    previous = {s: signal.signal(s, _raise_stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        stack.start()
        stack.wait_until_ready()
        url = settings.effective_api_url
        print(f"kronos-jobs up: API listening on {url} (docs: {url}/docs); "
              f"processes: {', '.join(f'{c.name}={c.process.pid}' for c in stack.children)}; Ctrl-C stops",
              flush=True)
        while (child := stack.dead()) is None:
            time.sleep(POLL_SECONDS)
        print(f"kronos-jobs up: {child.name} exited with code {child.returncode}; stopping the others",
              file=sys.stderr, flush=True)
        return 1
    except _StopRequested as stop:
        print(f"kronos-jobs up: {stop}; stopping", file=sys.stderr, flush=True)
        return 0
    except RuntimeError as exc:
        print(f"kronos-jobs up: {exc}; stopping", file=sys.stderr, flush=True)
        return 1
    finally:
        # Ignore a second Ctrl-C while the children shut down: an interrupted stop leaks them.
        for s in previous:
            signal.signal(s, signal.SIG_IGN)
        stack.stop()
        for s, handler in previous.items():
            signal.signal(s, handler)


# --- demo -----------------------------------------------------------------------------------------


@dataclass
class DemoOptions:
    model: str | None = None  # default: settings.default_model (kronos-small, from the hub)
    symbols: int = 12
    lookback: int = 400
    pred_len: int = 48
    freq: str = "5min"
    device: str = "auto"
    seed: int = 7
    timeout: float = 1800.0  # seconds to wait for the job
    out_dir: Path | None = None  # default: <data_dir>/demo


def demo_request(bars, *, model: str, options: DemoOptions) -> dict:
    """The JSON body of POST /v1/jobs/forecast for the sample bars (future timestamps in session)."""
    from kronos_jobs.sample_data import session_timestamps

    series = []
    for symbol, frame in bars.groupby("symbol", sort=True):
        future = session_timestamps(options.pred_len, freq=options.freq, start_after=frame["timestamp"].iloc[-1])
        series.append({
            "symbol": symbol, "freq": options.freq,
            "bars": [
                {"timestamp": row.timestamp.isoformat(), "open": row.open, "high": row.high, "low": row.low,
                 "close": row.close, "volume": row.volume, "amount": row.amount}
                for row in frame.itertuples(index=False)
            ],
            "future_timestamps": [t.isoformat() for t in future],
        })
    return {"model": model, "device": options.device, "lookback": options.lookback,
            "pred_len": options.pred_len, "sampling": {"seed": options.seed}, "series": series}


def _error_text(response: httpx.Response) -> str:
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return f"HTTP {response.status_code}: {response.text[:500]}"
    fields = "; ".join(f"{d.get('field')}: {d.get('message')}" for d in error.get("details") or [])
    return f"HTTP {response.status_code} {error.get('code')}: {error.get('message')}" + (f" ({fields})" if fields else "")


def follow_job(client: httpx.Client, job: dict, *, stack: Stack | None, timeout: float) -> dict:
    """Poll the job with a progress bar until it is terminal; RuntimeError on timeout or a dead process."""
    from tqdm import tqdm

    from kronos_jobs.names import JobState

    deadline = time.monotonic() + timeout
    with tqdm(total=max(1, job["progress"]["total"]), unit="series", desc="forecast", dynamic_ncols=True) as bar:
        while True:
            bar.total = max(1, job["progress"]["total"])
            bar.n = job["progress"]["done"]
            bar.set_postfix_str(job["state"])
            if JobState(job["state"]).is_terminal:
                return job
            if stack is not None and (child := stack.dead()) is not None:
                raise RuntimeError(f"{child.name} exited with code {child.returncode} while the job was {job['state']}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"job {job['id']} is still {job['state']} after {timeout:.0f} s")
            time.sleep(0.5)
            response = client.get(f"/v1/jobs/{job['id']}")
            response.raise_for_status()
            job = response.json()


def _explain_failure(job: dict, model: str) -> None:
    from kronos_jobs.model_cache import ModelUnavailable

    error = job.get("error") or {}
    print(f"\ndemo: job {job['id']} {job['state']}: {error.get('code')}: {error.get('message')}", file=sys.stderr)
    if error.get("code") == ModelUnavailable.code and not model.startswith("random:"):
        print(
            f"\ndemo: model {model!r} could not be loaded; the Hugging Face hub is probably unreachable from here.\n"
            "      Try the whole pipeline offline with random weights (outputs are labelled as such):\n"
            "          ./scripts/demo.sh --model random:small\n"
            "      or use a local checkpoint directory holding model/ and tokenizer/ in hub layout,\n"
            "      placed under KRONOS_MODEL_DIRS (default <KRONOS_DATA_DIR>/models):\n"
            "          ./scripts/demo.sh --model kronos-small-offline\n"
            "      (see 'Models' in the README for how to fetch one on a connected machine).",
            file=sys.stderr,
        )


def demo(settings: Settings, options: DemoOptions, *, env: Mapping[str, str] | None = None) -> int:
    """Run the demo forecast through the API; start the API, a worker and beat first if none answers."""
    from kronos_jobs.demo_report import model_label, summary_text, write_chart, write_labelled_parquet
    from kronos_jobs.sample_data import sample_bars

    model = options.model or settings.default_model
    out_dir = Path(options.out_dir or settings.data_dir / "demo").resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    bars = sample_bars(options.symbols, options.lookback, freq=options.freq)
    bars.to_parquet(out_dir / "input.parquet", index=False)
    print(f"demo: {options.symbols} synthetic symbols x {options.lookback} {options.freq} bars "
          f"-> {out_dir / 'input.parquet'}; model {model_label(model)}", flush=True)

    url = settings.effective_api_url
    stack, log, job_id, stop_timeout = None, None, None, STOP_TIMEOUT_SECONDS
    previous = signal.signal(signal.SIGTERM, _raise_stop)
    try:
        if not api_is_up(url):
            log = open(out_dir / "services.log", "w", encoding="utf-8")
            print(f"demo: no API at {url}; starting the API, a CPU worker and beat "
                  f"(log: {out_dir / 'services.log'})", flush=True)
            upgrade_database(settings)
            stack = Stack(settings, env=dict(env if env is not None else os.environ), log=log)
            stack.start()
            stack.wait_until_ready()
            stack.wait_for_worker()
        else:
            print(f"demo: using the API already running at {url}", flush=True)

        with httpx.Client(base_url=url, timeout=120.0) as client:
            response = client.post("/v1/jobs/forecast", json=demo_request(bars, model=model, options=options))
            if response.status_code != 202:
                print(f"demo: the API refused the job: {_error_text(response)}", file=sys.stderr)
                return 2
            job = response.json()
            job_id = job["id"]
            print(f"demo: job {job['id']} queued on {job['queue']} ({job['routing_reason']})", flush=True)
            job = follow_job(client, job, stack=stack, timeout=options.timeout)
            if job["state"] not in ("succeeded", "partially_succeeded"):
                _explain_failure(job, model)
                return 1
            result = client.get(f"/v1/jobs/{job['id']}/result", params={"format": "parquet"})
            result.raise_for_status()

        forecast = write_labelled_parquet(result.content, out_dir / "forecast.parquet", job=job)
        chart = write_chart(out_dir / "forecast.png", bars, forecast, model)
        print()
        print(summary_text(job, bars, forecast, options.pred_len))
        print(f"\ndemo: forecast rows -> {out_dir / 'forecast.parquet'} ({len(forecast)} rows)")
        print(f"demo: chart         -> {chart}")
        return 0
    except (_StopRequested, KeyboardInterrupt):
        print("\ndemo: interrupted", file=sys.stderr)
        if job_id is not None:
            _cancel_quietly(url, job_id)
        # The demo's own processes hold nothing worth waiting for: don't sit out a warm shutdown.
        stop_timeout = INTERRUPT_STOP_TIMEOUT_SECONDS
        return 130
    except (RuntimeError, httpx.HTTPError) as exc:
        print(f"\ndemo: {exc}", file=sys.stderr)
        if log is not None:
            print(f"demo: last lines of {log.name}:\n{_tail(Path(log.name))}", file=sys.stderr)
        return 1
    finally:
        signal.signal(signal.SIGTERM, previous)
        if stack is not None:
            print("demo: stopping the processes it started", flush=True)
            stack.stop(timeout=stop_timeout)
        if log is not None:
            log.close()


def _cancel_quietly(url: str, job_id: str) -> None:
    """Cancel the demo's job so a later `up` on the same data dir does not run it again."""
    try:
        response = httpx.post(f"{url}/v1/jobs/{job_id}/cancel", timeout=5.0)
        if response.status_code == 200:
            print(f"demo: cancel requested for job {job_id}", file=sys.stderr)
    except httpx.HTTPError:
        pass


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"
