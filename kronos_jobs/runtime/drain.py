"""The drain flag: how a worker parent tells its prefork children that a warm shutdown began.

Celery signals only the parent on a warm shutdown (`worker_shutting_down`, run inside the signal
handler); prefork children keep running their task. The parent maps one anonymous shared byte
before it forks the pool, so every child, replacements included, shares it; the handler sets it and
a fine-tune reads it before each training step.

Why not a "draining" column on the worker row, or a per-worker file: the flag is raised inside a
signal handler, where a database write can deadlock on a lock the interrupted code holds, and it
fails exactly when the database is what is down; a byte in memory costs nothing to read at every
step (no query on SQLite or PostgreSQL), and it dies with the worker, so a restarted worker that
reuses the node name (same host and pid in a container) cannot inherit a stale "draining" state.
The children that read it are always on the parent's machine, which is all a prefork pool needs.
"""

from __future__ import annotations

import mmap

_flag: mmap.mmap | None = None


def open_flag() -> None:
    """Map the shared drain byte (parent, before the pool forks); clear it if already mapped."""
    global _flag
    if _flag is None:
        _flag = mmap.mmap(-1, 1)  # MAP_SHARED | MAP_ANONYMOUS: shared with forked children
    _flag[0] = 0


def request_drain() -> None:
    """Ask this worker's running fine-tunes to checkpoint and give their jobs back (no-op outside a worker)."""
    if _flag is not None:
        _flag[0] = 1


def draining() -> bool:
    """True once this worker began a warm shutdown; False outside a worker."""
    return _flag is not None and _flag[0] == 1
