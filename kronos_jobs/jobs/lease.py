"""Job leases: who runs a job right now, kept alive by a heartbeat, and what a delivery does when
someone else holds it. Shared by the forecast and fine-tune lifecycles.

A delivery claims the job (a conditional UPDATE in crud.jobs.claim_job); while it runs,
`LeaseHeartbeat` renews the lease every KRONOS_HEARTBEAT_SECONDS. A second delivery finds the lease
held (LeaseHeld: look again when it would lapse, in case the holder died) or the job finished
(LeaseLost: stop). A transient failure releases the lease so its retry can claim at once. A
fine-tune whose worker begins a warm shutdown checkpoints, gives the job back (queued, lease
released, attempt uncounted: crud.jobs.give_back_job) and raises JobGivenBack so its task is sent
again.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import threading
import time
from typing import Any

from sqlalchemy.exc import DBAPIError

from kronos_jobs.core.errors import JobFailure, LeaseLost, TransientJobError
from kronos_jobs.core.names import JobState
from kronos_jobs.core.settings import Settings
from kronos_jobs.db.models import utcnow
from kronos_jobs.db.session import session_scope

logger = logging.getLogger(__name__)


class LeaseHeld(LeaseLost):
    """Another delivery holds a live lease on the running job. If its worker died (SIGKILL, OOM),
    the lease lapses in `retry_after` seconds and this delivery should try again then."""

    def __init__(self, message: str, *, retry_after: float):
        super().__init__(message)
        self.retry_after = retry_after


class JobGivenBack(JobFailure):
    """This delivery gave its job back to the queue (its worker is shutting down and the job saved a
    checkpoint); the task must be sent again so another worker resumes the job."""

    code = "given_back"


def raise_if_held(job_id: str, settings: Settings, exc: LeaseLost) -> None:
    """Turn `exc` into LeaseHeld when the job is running under another delivery's live lease."""
    from kronos_jobs.db.models import Job

    with session_scope(settings) as session:
        job = session.get(Job, job_id)
        if job is not None and job.state == JobState.RUNNING.value and job.lease_expires_at is not None:
            remaining = (job.lease_expires_at - utcnow()).total_seconds()
            raise LeaseHeld(str(exc), retry_after=max(0.0, remaining)) from exc


class LeaseHeartbeat:
    """Renews the job's lease every `heartbeat_seconds` until stopped; notices when it is lost."""

    def __init__(self, settings: Settings, job_id: str, owner: str):
        self.settings, self.job_id, self.owner = settings, job_id, owner
        self.lost = False

    def start(self) -> None:
        _keeper().add(self)

    def stop(self) -> None:
        # No join: a renewal racing the finish matches no row (the lease is gone) and is dropped.
        _keeper().remove(self)

    def renew(self) -> bool:
        """One renewal; False once the lease is lost (the keeper then stops renewing it)."""
        from kronos_jobs.crud import jobs as job_crud

        try:
            with session_scope(self.settings) as session:
                held = job_crud.renew_lease(session, job_id=self.job_id, owner=self.owner,
                                            lease_seconds=self.settings.lease_seconds)
        except Exception as exc:  # a DB hiccup: the lease has slack for a missed beat or two
            logger.warning("job %s: lease renewal failed (%s); retrying", self.job_id, exc)
            return True
        self.lost = not held
        return held


class _LeaseKeeper:
    """One daemon thread per process renews the leases of all the jobs the process runs.

    A thread per job cost more than a small forecast's bookkeeping: `Thread.start` waits until the
    new thread is scheduled, milliseconds (p90) on a busy machine, in the middle of every job."""

    def __init__(self) -> None:
        self.pid = os.getpid()
        self._due: dict[LeaseHeartbeat, float] = {}  # heartbeat -> time.monotonic() of its next renewal
        self._changed = threading.Condition()
        threading.Thread(target=self._run, name="lease-heartbeat", daemon=True).start()

    def add(self, heartbeat: LeaseHeartbeat) -> None:
        with self._changed:
            self._due[heartbeat] = time.monotonic() + heartbeat.settings.heartbeat_seconds
            self._changed.notify()

    def remove(self, heartbeat: LeaseHeartbeat) -> None:
        with self._changed:
            self._due.pop(heartbeat, None)

    def _run(self) -> None:
        while True:
            with self._changed:
                now = time.monotonic()
                due = [hb for hb, at in self._due.items() if at <= now]
                if not due:
                    self._changed.wait(min(self._due.values(), default=now + 60.0) - now)
                    continue
                for heartbeat in due:
                    self._due[heartbeat] = now + heartbeat.settings.heartbeat_seconds
            for heartbeat in due:  # outside the lock: a slow database must not block start/stop
                if not heartbeat.renew():
                    self.remove(heartbeat)


_keeper_instance: _LeaseKeeper | None = None
_keeper_lock = threading.Lock()


def _keeper() -> _LeaseKeeper:
    global _keeper_instance
    with _keeper_lock:
        if _keeper_instance is None or _keeper_instance.pid != os.getpid():  # threads do not survive a fork
            _keeper_instance = _LeaseKeeper()
        return _keeper_instance


def release_lease(job_id: str, owner: str, settings: Settings) -> None:
    """Best effort: let the retry of a transient failure claim the job at once instead of waiting."""
    from kronos_jobs.crud import jobs as job_crud

    try:
        with session_scope(settings) as session:
            job_crud.renew_lease(session, job_id=job_id, owner=owner, lease_seconds=0)
    except Exception as exc:  # the database is what failed; the lease lapses on its own
        logger.warning("job %s: could not release the lease (%s); it lapses in %s s",
                       job_id, exc, settings.lease_seconds)


# Errors worth a retry with backoff: the job itself is fine, something it talks to hiccupped.
def _transient_types() -> tuple[type[BaseException], ...]:
    from kombu.exceptions import OperationalError as BrokerOperationalError
    from sqlalchemy.exc import InterfaceError, OperationalError

    types: list[type[BaseException]] = [TransientJobError, OperationalError, InterfaceError, BrokerOperationalError]
    try:
        from redis.exceptions import ConnectionError as RedisConnectionError
        from redis.exceptions import TimeoutError as RedisTimeoutError

        types += [RedisConnectionError, RedisTimeoutError]
    except ImportError:  # redis is optional on the embedded default
        pass
    return tuple(types)


TRANSIENT_ERRORS = _transient_types()


def is_transient(exc: BaseException) -> bool:
    """A database or broker hiccup: a retry with backoff may succeed."""
    if isinstance(exc, DBAPIError) and exc.connection_invalidated:
        return True
    return isinstance(exc, TRANSIENT_ERRORS)


@dataclasses.dataclass
class Delivery:
    """What one delivery knows about the job it claimed while it runs (kind-specific fields in subclasses)."""

    job_id: str
    owner: str
    tenant_id: str
    queue: str
    device_requested: str
    attempt: int
    queued_at: Any
    started_at: Any
    t0: float  # time.perf_counter() when the delivery began

    def elapsed(self) -> float:
        return time.perf_counter() - self.t0
