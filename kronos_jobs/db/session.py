"""Engines and sessions, built lazily and once per process.

Nothing here runs at import time. Engines are cached per process id: a prefork Celery child
inherits its parent's pool, and two processes sharing one PostgreSQL socket or SQLite handle
corrupt each other's traffic, so a child always builds its own engine.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError
from sqlalchemy.orm import Session, sessionmaker

from kronos_jobs.core.settings import Settings, get_settings

logger = logging.getLogger(__name__)

# SQLite waits this long for another writer instead of failing with "database is locked".
SQLITE_BUSY_TIMEOUT_S = 30.0
# A pooled PostgreSQL connection idle this long is pinged before use (_ping_idle_connections).
PING_IDLE_SECONDS = 5.0
_IDLE_SINCE = "kronos_idle_since"

_lock = threading.Lock()
_engines: dict[tuple[int, str], Engine] = {}
_sessionmakers: dict[tuple[int, str, bool], sessionmaker[Session]] = {}  # (pid, url, autocommit)


def _on_sqlite_connect(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        # WAL lets readers (the API) proceed while a worker writes results.
        cursor.execute("PRAGMA journal_mode=WAL")
        # NORMAL is durable against application crashes in WAL mode and much faster than FULL.
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.execute("PRAGMA foreign_keys=ON")  # off by default in SQLite; our FKs cascade
        cursor.execute(f"PRAGMA busy_timeout={int(SQLITE_BUSY_TIMEOUT_S * 1000)}")
    finally:
        cursor.close()


def make_engine(url: str, **kwargs: Any) -> Engine:
    """A new engine for `url`, configured for concurrent use by API threads and worker processes."""
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:" and not database.startswith("file:"):
            # SQLite creates the file but not its folder; the embedded default starts from nothing.
            os.makedirs(os.path.dirname(os.path.abspath(database)), exist_ok=True)
        connect_args = {"check_same_thread": False, "timeout": SQLITE_BUSY_TIMEOUT_S}
        connect_args.update(kwargs.pop("connect_args", {}))
        engine = create_engine(url, connect_args=connect_args, **kwargs)
        event.listen(engine, "connect", _on_sqlite_connect)
        return engine
    engine = create_engine(url, **kwargs)
    if not kwargs.get("pool_pre_ping"):  # a caller who asks for the full pre-ping gets it
        _ping_idle_connections(engine)
    return engine


def _ping_idle_connections(engine: Engine) -> None:
    """Like `pool_pre_ping`, but only for connections that sat in the pool PING_IDLE_SECONDS or more.

    A connection dropped by a database restart or an idle timeout is replaced instead of failing
    the next job that draws it. A connection used moments ago skips the ping, which would
    otherwise cost a round trip on every session (a small forecast job opens three). If the
    database restarts within that moment, the first statement fails as a disconnect, the pool
    drops every connection, and the caller retries: a job as a transient error (tasks.deliver),
    an API client after its 503.
    """

    @event.listens_for(engine, "checkin")
    def _mark_idle(_dbapi_connection: Any, record: Any) -> None:
        record.info[_IDLE_SINCE] = time.monotonic()

    @event.listens_for(engine, "checkout")
    def _ping_if_idle(dbapi_connection: Any, record: Any, _proxy: Any) -> None:
        idle_since = record.info.pop(_IDLE_SINCE, None)  # none: a fresh connection
        if idle_since is None or time.monotonic() - idle_since < PING_IDLE_SECONDS:
            return
        dialect = engine.dialect
        try:
            dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error as exc:
            if not dialect.is_disconnect(exc, dbapi_connection, None):
                raise
            # The pool discards this connection and checks out a new one.
            raise DisconnectionError(f"idle connection failed its ping: {exc}") from exc


def _url_of(settings: Settings | None) -> str:
    return (settings or get_settings()).effective_database_url


def _forget_inherited_engines(pid: int) -> None:
    """Drop engines built by a parent process without closing the parent's connections."""
    for key in [k for k in _engines if k[0] != pid]:
        # close=False: closing would send a terminate on sockets the parent still uses.
        _engines.pop(key).dispose(close=False)
    for key in [k for k in _sessionmakers if k[0] != pid]:
        del _sessionmakers[key]


def get_engine(settings: Settings | None = None) -> Engine:
    """The engine for `settings` (default: get_settings()), built once per process."""
    url = _url_of(settings)
    pid = os.getpid()
    with _lock:
        engine = _engines.get((pid, url))
        if engine is None:
            _forget_inherited_engines(pid)
            engine = make_engine(url)
            _engines[(pid, url)] = engine
            logger.debug("database engine created for %s in pid %d", engine.url.render_as_string(hide_password=True), pid)
        return engine


def get_sessionmaker(settings: Settings | None = None, *, autocommit: bool = False) -> sessionmaker[Session]:
    """A session factory bound to get_engine(settings).

    expire_on_commit=False: callers return the rows they just committed (the API serialises a
    job after session_scope commits), which must not trigger a reload on a closed session.
    autocommit=True: each statement is its own transaction (see session_scope).
    """
    engine = get_engine(settings)
    key = (os.getpid(), _url_of(settings), autocommit)
    with _lock:
        factory = _sessionmakers.get(key)
        if factory is None:
            bind = engine.execution_options(isolation_level="AUTOCOMMIT") if autocommit else engine
            factory = sessionmaker(bind=bind, expire_on_commit=False)
            _sessionmakers[key] = factory
        return factory


@contextmanager
def session_scope(settings: Settings | None = None, *, autocommit: bool = False) -> Iterator[Session]:
    """A session that commits when the block succeeds and rolls back when it raises.

    autocommit=True: every statement commits on its own and nothing rolls back. Only for a block
    that writes with ONE statement (a job claim) and otherwise reads: it saves the BEGIN and
    COMMIT round trips a transaction costs.
    """
    session = get_sessionmaker(settings, autocommit=autocommit)()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def dispose_engines() -> None:
    """Close this process's engines (worker shutdown, tests); the next call builds new ones."""
    pid = os.getpid()
    with _lock:
        _sessionmakers.clear()
        for key in list(_engines):
            engine = _engines.pop(key)
            engine.dispose(close=key[0] == pid)
