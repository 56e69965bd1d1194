"""A Redis and a PostgreSQL that a test starts, stops and restarts itself, on free ports and in its
own folders, for outage tests (the shared services of kronos_jobs/testing/services.py must never be
stopped). Redis keeps an append-only file fsynced on every write, as production's compose Redis
does, so a restart finds the queued messages again.

    with OwnRedis(tmp / "redis") as redis_server, OwnPostgres() as pg:
        redis_server.stop(); ...; redis_server.start()
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from kronos_jobs.testing.services import in_ci

POSTGRES_USER = "postgres"  # initdb refuses to run as root; the cluster runs as this user then


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def require_binaries(*names: str) -> dict[str, str]:
    """Paths of the server binaries; skip (fail under CI=true) when one is missing."""
    found = {name: shutil.which(name) for name in names}
    missing = [name for name, path in found.items() if path is None]
    if missing:
        message = f"outage tests need {', '.join(missing)} on PATH"
        pytest.fail(message, pytrace=False) if in_ci() else pytest.skip(message)
    return found  # type: ignore[return-value]


def _wait_for_port(port: int, up: bool, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as s:
            if (s.connect_ex(("127.0.0.1", port)) == 0) == up:
                return
        time.sleep(0.05)
    raise TimeoutError(f"port {port} did not {'open' if up else 'close'} within {timeout} s")


class OwnRedis:
    """redis-server on a free port with AOF (appendfsync always) in `folder`."""

    def __init__(self, folder: Path):
        self.binaries = require_binaries("redis-server")
        self.folder, self.port = folder, free_port()
        self.folder.mkdir(parents=True, exist_ok=True)
        self.proc: subprocess.Popen | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [self.binaries["redis-server"], "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.folder),
             "--appendonly", "yes", "--appendfsync", "always", "--save", "", "--maxmemory-policy", "noeviction"],
            stdout=open(self.folder / "redis.log", "ab"), stderr=subprocess.STDOUT)
        _wait_for_port(self.port, up=True)

    def stop(self) -> None:
        """Kill -9: nothing flushed on the way out beyond what the AOF already holds."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        _wait_for_port(self.port, up=False)

    def __enter__(self) -> "OwnRedis":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class OwnPostgres:
    """A PostgreSQL cluster made by initdb in `folder`, on a free port, database `postgres`."""

    def __init__(self):
        self.binaries = require_binaries("initdb", "pg_ctl")
        self.port = free_port()
        # Under /tmp, not pytest's tmp_path: as root the cluster runs as POSTGRES_USER, who cannot
        # enter pytest's private (0700) folders.
        self.folder = Path(tempfile.mkdtemp(prefix="kronos-outage-pg-"))
        self.data = self.folder / "data"
        self._as_user: list[str] = []
        if os.geteuid() == 0:
            self._as_user = ["runuser", "-u", POSTGRES_USER, "--"]
            self.folder.chmod(0o755)
            shutil.chown(self.folder, POSTGRES_USER)
        subprocess.run([*self._as_user, self.binaries["initdb"], "-D", str(self.data), "-U", "postgres",
                        "--auth=trust", "-E", "UTF8", "--no-sync"], check=True, capture_output=True)

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _ctl(self, *args: str) -> None:
        subprocess.run([*self._as_user, self.binaries["pg_ctl"], "-D", str(self.data), *args],
                       check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -c unix_socket_directories='{self.folder}' -c fsync=off"
        self._ctl("-l", str(self.folder / "postgres.log"), "-o", options, "-w", "start")
        _wait_for_port(self.port, up=True)

    def stop(self) -> None:
        """An immediate shutdown: every connection is cut, as when the server dies."""
        self._ctl("-m", "immediate", "-w", "stop")
        _wait_for_port(self.port, up=False)

    def __enter__(self) -> "OwnPostgres":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        try:
            self.stop()
        except (subprocess.CalledProcessError, TimeoutError):
            pass  # already stopped by the test
        shutil.rmtree(self.folder, ignore_errors=True)
