"""Bring the database schema to the newest Alembic revision, safely from many processes at once.

The API, every worker and `kronos-jobs db upgrade` call `upgrade()` at start-up. Without a lock,
two processes starting together would both see an empty database and both try to create the
tables; so the whole upgrade runs under a cross-process lock: `pg_advisory_lock` on PostgreSQL,
an fcntl lock on a file next to the database on SQLite. The Alembic scripts ship inside the
package (`kronos_jobs/db/migrations`), so no alembic.ini is needed at run time.
"""

from __future__ import annotations

import fcntl
import logging
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, text
from sqlalchemy.engine import make_url

from kronos_jobs.core.settings import Settings, get_settings
from kronos_jobs.db.session import make_engine

logger = logging.getLogger(__name__)

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# Any constant works as long as every process uses the same one; this is "kronosdb" in ASCII.
ADVISORY_LOCK_KEY = 0x6B726F6E6F736462


def alembic_config(url: str | None = None) -> Config:
    """An Alembic Config pointing at the packaged scripts (and at `url`, for the alembic CLI)."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        config.set_main_option("sqlalchemy.url", url.replace("%", "%%"))  # ConfigParser escaping
    return config


def head_revision() -> str | None:
    """The newest revision shipped with this code."""
    return ScriptDirectory.from_config(alembic_config()).get_current_head()


def current_revision(connection: Connection) -> str | None:
    """The revision the connected database is at (None when never migrated)."""
    return MigrationContext.configure(connection).get_current_revision()


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+b") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)  # blocks until the other process is done
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


@contextmanager
def _advisory_lock(connection: Connection) -> Iterator[None]:
    connection.execute(text("SELECT pg_advisory_lock(:key)"), {"key": ADVISORY_LOCK_KEY})
    # A session-level advisory lock outlives transactions; commit so Alembic starts its own.
    connection.commit()
    try:
        yield
    finally:
        connection.rollback()  # a failed migration leaves an aborted transaction behind
        connection.execute(text("SELECT pg_advisory_unlock(:key)"), {"key": ADVISORY_LOCK_KEY})
        connection.commit()


def _sqlite_lock_path(url: str) -> Path | None:
    database = make_url(url).database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(os.path.abspath(database) + ".migrate.lock")


def upgrade(settings: Settings | None = None, *, revision: str = "head") -> None:
    """Migrate the configured database to `revision` (default: the newest)."""
    url = (settings or get_settings()).effective_database_url
    backend = make_url(url).get_backend_name()
    engine = make_engine(url)  # a private engine, disposed below: upgrade runs before any fork
    config = alembic_config()
    try:
        with engine.connect() as connection:
            config.attributes["connection"] = connection
            if backend == "postgresql":
                with _advisory_lock(connection):
                    command.upgrade(config, revision)
            else:
                lock_path = _sqlite_lock_path(url) if backend == "sqlite" else None
                if lock_path is None:
                    command.upgrade(config, revision)
                else:
                    with _file_lock(lock_path):
                        command.upgrade(config, revision)
            logger.info("database schema at %s (%s)", current_revision(connection), backend)
    finally:
        engine.dispose()
