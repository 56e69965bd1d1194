"""One machine, no servers: `kronos-jobs up`.

`up` upgrades the database once, then runs the API, one CPU worker and the beat scheduler as
separate real processes (`python -m kronos_jobs.cli api | worker --pool cpu | beat`), each in its
own session so a Ctrl-C reaches only the launcher, which then stops them in order: SIGTERM (a
warm shutdown for Celery, a graceful one for uvicorn), then SIGKILL for whatever is left. A child
that dies on its own stops the rest and makes `up` exit non-zero. With nothing configured the
processes meet on the embedded default: a SQLite file and kombu's filesystem broker under
KRONOS_DATA_DIR.

`kronos-jobs demo` (kronos_jobs/cli/demo.py) starts the same processes when no API answers.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import IO

import httpx

from kronos_jobs.core.names import Pool
from kronos_jobs.core.redaction import redact
from kronos_jobs.core.settings import Settings
from kronos_jobs.db.migrate import upgrade

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
                workers = httpx.get(f"{url}/v1/workers", headers=self.settings.api_auth_headers, timeout=5.0).json()["data"]
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
    return redact(url)


def api_is_up(url: str) -> bool:
    try:
        return httpx.get(f"{url}/healthz", timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False


def upgrade_database(settings: Settings) -> None:
    """Bring the schema to head once, before the children start (they upgrade too, as no-ops)."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    upgrade(settings)


class StopRequested(Exception):
    pass


def raise_stop(signum: int, _frame: object) -> None:
    raise StopRequested(signal.Signals(signum).name)


def up(settings: Settings, *, env: Mapping[str, str] | None = None) -> int:
    """Run the API, a CPU worker and beat until SIGINT/SIGTERM (0) or until a child dies (1)."""
    print(f"kronos-jobs up: database {redacted(settings.effective_database_url)}", flush=True)
    print(f"kronos-jobs up: broker {redacted(settings.effective_broker_url)}"
          + (f" (folder {settings.broker_dir})" if settings.effective_broker_url.startswith("filesystem") else ""),
          flush=True)
    upgrade_database(settings)
    stack = Stack(settings, env=dict(env if env is not None else os.environ))
    previous = {s: signal.signal(s, raise_stop) for s in (signal.SIGINT, signal.SIGTERM)}
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
    except StopRequested as stop:
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
