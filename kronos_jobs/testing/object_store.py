"""A real S3 protocol endpoint for tests and benches: moto's standalone server in a subprocess on a
free port (not moto's in-process mock, so every request crosses HTTP exactly as it would to MinIO or
AWS, from this process and from worker subprocesses alike).
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx

# Credentials moto accepts; tests pass them to workers through the standard AWS variables only.
AWS_ENV = {"AWS_ACCESS_KEY_ID": "kronos-test-key", "AWS_SECRET_ACCESS_KEY": "kronos-test-secret-do-not-log",
           "AWS_DEFAULT_REGION": "us-east-1"}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class S3Server:
    """`python -m moto.server` on 127.0.0.1:<free port>; `bucket()` makes an empty bucket."""

    def __init__(self, log: Path):
        self.port = _free_port()
        self.endpoint_url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=open(log, "ab"), stderr=subprocess.STDOUT, start_new_session=True,
                                     env={**os.environ, **AWS_ENV})
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited: {log.read_text()[-2000:]}")
            try:
                httpx.get(self.endpoint_url, timeout=1.0)
                return
            except httpx.TransportError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"moto server did not answer on {self.endpoint_url}")

    def filesystem(self):
        import s3fs

        return s3fs.S3FileSystem(key=AWS_ENV["AWS_ACCESS_KEY_ID"], secret=AWS_ENV["AWS_SECRET_ACCESS_KEY"],
                                 client_kwargs={"endpoint_url": self.endpoint_url, "region_name": AWS_ENV["AWS_DEFAULT_REGION"]},
                                 skip_instance_cache=True)

    def bucket(self) -> str:
        name = f"kronos-{uuid.uuid4().hex[:12]}"
        # CreateBucket is a plain PUT on the bucket's path (moto does not check request signatures).
        httpx.put(f"{self.endpoint_url}/{name}", timeout=10.0).raise_for_status()
        return name

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
