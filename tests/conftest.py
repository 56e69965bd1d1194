"""Root fixtures shared by every test package. Keep this file small; package fixtures live in
their own conftest.py, factories in tests/factories.py.

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

from kronos_jobs.settings import Settings, get_settings

TEST_DATABASE_URL_ENV = "KRONOS_TEST_DATABASE_URL"  # e.g. postgresql+psycopg://postgres@127.0.0.1:5432/test
TEST_REDIS_URL_ENV = "KRONOS_TEST_REDIS_URL"  # e.g. redis://127.0.0.1:6379/15

_probed: dict[str, str | None] = {}  # url -> None when it answered, else why not


def in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() == "true"


def _probe(url: str) -> str | None:
    """None when the service at `url` answers within a few seconds, else the reason."""
    try:
        if url.startswith("postgres"):
            import psycopg

            parsed = make_url(url)
            with psycopg.connect(host=parsed.host, port=parsed.port or 5432, user=parsed.username,
                                 password=parsed.password, dbname=parsed.database, connect_timeout=5):
                pass
        elif url.startswith(("redis://", "rediss://")):
            import redis

            redis.Redis.from_url(url, socket_connect_timeout=5, socket_timeout=5).ping()
    except Exception as exc:  # any failure to answer counts; the message says which
        return f"{type(exc).__name__}: {exc}"
    return None


def require_service(url_env_var: str) -> str:
    """The URL in `url_env_var`, checked once per session to answer; skip or fail per the rule above."""
    url = os.environ.get(url_env_var, "").strip()
    if not url:
        if in_ci():
            pytest.fail(f"{url_env_var} is not set, and CI=true requires this service", pytrace=False)
        pytest.skip(f"{url_env_var} is not set")
    if url not in _probed:
        _probed[url] = _probe(url)
    if _probed[url] is not None:
        pytest.fail(f"{url_env_var}={url} does not answer: {_probed[url]}", pytrace=False)
    return url


REDIS_CLAIM_KEY = "kronos-test-claim"


def claim_redis_db(base_url: str, ttl_seconds: int = 3600) -> str:
    """A Redis URL on a DB number no one else uses, claimed atomically for this test session.

    Test sessions of several engineers share one Redis server; a worker consuming another session's
    queue would take its messages (and drop them: no such job in its database). An empty DB is
    claimed with SET NX before any worker touches it, so two sessions never pick the same one; the
    DB of `base_url` itself is skipped because plain tests use it directly. Release with FLUSHDB.
    """
    import redis

    base = make_url(base_url)
    token = uuid.uuid4().hex
    for number in range(14, 0, -1):
        if str(number) == str(base.database or "0"):
            continue
        url = str(base.set(database=str(number)))
        client = redis.Redis.from_url(url)
        if client.dbsize() == 0 and client.set(REDIS_CLAIM_KEY, token, nx=True, ex=ttl_seconds):
            if client.dbsize() == 1:
                return url
            client.delete(REDIS_CLAIM_KEY)  # someone else's keys arrived meanwhile; keep looking
    pytest.fail(f"no free Redis DB on {base_url}")


# --- settings --------------------------------------------------------------------------------------


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
    """Embedded-default settings rooted in a fresh temp dir (SQLite file, filesystem broker)."""
    return Settings(data_dir=tmp_path / "kronos-data", database_url=None, broker_url=None)


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
