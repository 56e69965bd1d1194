"""The process supervision behind `kronos-jobs up` and `demo`, with plain Python children."""

from __future__ import annotations

import io
import os
import signal
import sys
import time

import pytest

from kronos_jobs.core.settings import Settings
from kronos_jobs.runtime.launcher import Stack

SLEEPER = [sys.executable, "-c", "import time; print('ready', flush=True); time.sleep(600)"]
# Ignores SIGTERM: the stop must escalate to SIGKILL.
STUBBORN = [sys.executable, "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); print('ready', flush=True); time.sleep(600)"]
FAILS = [sys.executable, "-c", "import sys; print('bye', flush=True); sys.exit(3)"]


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def wait_for(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


@pytest.fixture
def stack(tmp_path):
    stack = Stack(Settings(data_dir=tmp_path), log=io.StringIO())
    yield stack
    stack.stop(timeout=2)


def test_output_is_prefixed_and_stop_ends_every_child(stack):
    stack.start({"one": SLEEPER, "two": SLEEPER})
    assert wait_for(lambda: stack.log.getvalue().count("ready") == 2)
    assert "       one | ready" in stack.log.getvalue()
    pids = [c.process.pid for c in stack.children]
    assert stack.dead() is None
    stack.stop(timeout=5)
    assert not any(alive(pid) for pid in pids)
    assert all(c.returncode == -signal.SIGTERM for c in stack.children)


def test_a_child_that_ignores_sigterm_is_killed(stack):
    stack.start({"stubborn": STUBBORN})
    assert wait_for(lambda: "ready" in stack.log.getvalue())
    started = time.monotonic()
    stack.stop(timeout=0.5)
    assert stack.children[0].returncode == -signal.SIGKILL
    assert time.monotonic() - started < 5


def test_a_dead_child_is_reported(stack):
    stack.start({"ok": SLEEPER, "bad": FAILS})
    assert wait_for(lambda: stack.dead() is not None)
    dead = stack.dead()
    assert (dead.name, dead.returncode) == ("bad", 3)


def test_wait_until_ready_fails_fast_when_a_child_dies(stack):
    stack.settings = Settings(data_dir=stack.settings.data_dir, api_port=1)  # nothing answers there
    stack.start({"bad": FAILS})
    with pytest.raises(RuntimeError, match="bad exited with code 3"):
        stack.wait_until_ready(timeout=20)


def test_children_run_in_their_own_session(stack):
    # Ctrl-C in a terminal reaches only the launcher, which then stops the children in order.
    stack.start({"one": SLEEPER})
    assert wait_for(lambda: "ready" in stack.log.getvalue())
    pid = stack.children[0].process.pid
    assert os.getsid(pid) == pid != os.getsid(0)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux-only")
def test_children_die_with_a_killed_launcher(tmp_path):
    import subprocess

    parent = subprocess.Popen(
        [sys.executable, "-c",
         "import os, time\n"
         "from kronos_jobs.runtime.launcher import Stack\n"
         "from kronos_jobs.core.settings import Settings\n"
         f"s = Stack(Settings(data_dir={str(tmp_path)!r}), log=open(os.devnull, 'w'))\n"
         f"s.start({{'one': {SLEEPER!r}}})\n"
         "print(s.children[0].process.pid, flush=True)\n"
         "time.sleep(600)\n"],
        stdout=subprocess.PIPE, text=True,
    )
    child_pid = int(parent.stdout.readline().split()[0])
    assert alive(child_pid)
    parent.kill()
    parent.wait()
    assert wait_for(lambda: not alive(child_pid) or _is_zombie(child_pid))


def _is_zombie(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] == "Z"
    except OSError:
        return True


def test_urls_are_logged_without_passwords():
    from kronos_jobs.runtime.launcher import redacted

    assert redacted("postgresql+psycopg://kronos:change-me@postgres:5432/kronos") == "postgresql+psycopg://kronos:***@postgres:5432/kronos"
    assert redacted("redis://:secret@redis:6379/0") == "redis://:***@redis:6379/0"
    assert redacted("redis://redis:6379/0") == "redis://redis:6379/0"
    assert redacted("postgresql+psycopg://postgres@127.0.0.1:5432/test") == "postgresql+psycopg://postgres@127.0.0.1:5432/test"
