"""Root fixtures shared by every test package. Keep this file small; package fixtures live in
their own conftest.py, factories in kronos_jobs/testing/factories.py.

External services follow one rule, applied by `require_service`: a test that needs PostgreSQL or
Redis reads its URL from KRONOS_TEST_DATABASE_URL / KRONOS_TEST_REDIS_URL. Unset: the test is
skipped, except under CI=true where it fails (CI must never go green by skipping). Set but not
answering: the test fails. Worker processes get a Redis DB of their own from `claim_redis_db`.
"""

from __future__ import annotations

import itertools
import os
import shutil
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session
from sqlalchemy.pool import NullPool

from kronos_jobs.core.settings import Settings, get_settings
from kronos_jobs.testing.services import TEST_DATABASE_URL_ENV, require_service

# --- settings --------------------------------------------------------------------------------------


@pytest.fixture(scope="session", autouse=True)
def _kernel_cache_in_a_temp_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Predictors cache CPU kernel choices under $XDG_CACHE_HOME; tests (and the workers they start) keep theirs out of ~/.cache."""
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old


@pytest.fixture(autouse=True)
def _hermetic_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """A developer's exported KRONOS_* variables must not change test outcomes (test URLs stay)."""
    for name in list(os.environ):
        if name.startswith("KRONOS_") and not name.startswith("KRONOS_TEST_"):
            monkeypatch.delenv(name)
    get_settings.cache_clear()
    yield
    get_settings.cache_clear()


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    """Embedded-default settings rooted in a fresh temp dir (SQLite file, filesystem broker).

    `testserver` is the Host header of Starlette's TestClient; the API answers only trusted hosts.
    """
    return Settings(data_dir=tmp_path / "kronos-data", database_url=None, broker_url=None,
                    trusted_hosts=["127.0.0.1", "localhost", "testserver"])


# --- databases -------------------------------------------------------------------------------------

_SESSION_TOKEN = uuid.uuid4().hex[:8]  # schemas of this pytest run: kt_<token>_<n>
_schema_numbers = itertools.count()


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A URL whose connections see a fresh, empty PostgreSQL schema, dropped after the test."""
    from kronos_jobs.db.session import dispose_engines, make_engine

    server = make_url(require_service(TEST_DATABASE_URL_ENV))
    if server.drivername == "postgresql":
        server = server.set(drivername="postgresql+psycopg")  # psycopg 3 is the driver we ship
    schema = f"kt_{_SESSION_TOKEN}_{next(_schema_numbers)}"
    admin = make_engine(server.render_as_string(hide_password=False), poolclass=NullPool)
    with admin.begin() as connection:
        connection.execute(text(f'CREATE SCHEMA "{schema}"'))
    url = server.update_query_dict({"options": f"-csearch_path={schema}"}).render_as_string(hide_password=False)
    try:
        yield url
    finally:
        dispose_engines()  # close the test's pooled connections before dropping what they use
        with admin.begin() as connection:
            connection.execute(text(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE'))
        admin.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """An empty database: a SQLite file, and PostgreSQL (a fresh schema) when configured."""
    from kronos_jobs.db.session import dispose_engines

    if request.param == "postgresql":
        yield request.getfixturevalue("pg_url")
        return
    yield f"sqlite:///{tmp_path / 'db' / 'kronos-test.db'}"
    dispose_engines()


@pytest.fixture(scope="session")
def _migrated_sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SQLite file migrated to head per run; tests copy it (much faster than migrating)."""
    from kronos_jobs.db.migrate import upgrade

    path = tmp_path_factory.mktemp("sqlite-template") / "kronos.db"
    upgrade(Settings(data_dir=path.parent, database_url=f"sqlite:///{path}"))  # closes its engine
    return path


@pytest.fixture
def db_settings(request: pytest.FixtureRequest, db_url: str, tmp_path: Path) -> Settings:
    """Settings on `db_url` with the schema migrated to head."""
    from kronos_jobs.db.migrate import upgrade

    configured = Settings(data_dir=tmp_path / "kronos-data", database_url=db_url, broker_url=None)
    database = make_url(db_url).database
    if make_url(db_url).get_backend_name() == "sqlite" and database not in (None, "", ":memory:") \
            and not Path(database).exists():
        Path(database).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(request.getfixturevalue("_migrated_sqlite_template"), database)
    else:
        upgrade(configured)
    return configured


@pytest.fixture
def session(db_settings: Settings) -> Iterator[Session]:
    """A session on the migrated test database; the test commits what it wants others to see."""
    from kronos_jobs.db.session import get_sessionmaker

    with get_sessionmaker(db_settings)() as db_session:
        yield db_session
