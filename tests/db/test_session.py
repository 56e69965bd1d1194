"""Engines: SQLite configured for concurrent processes, one engine per process, session scope."""

from __future__ import annotations

import multiprocessing
import os

import pytest
from sqlalchemy import select, text
from sqlalchemy.pool import NullPool

from kronos_jobs.db import session as db_session
from kronos_jobs.db.models import Job
from kronos_jobs.testing.factories import make_job


def test_sqlite_pragmas(tmp_path):
    engine = db_session.make_engine(f"sqlite:///{tmp_path / 'nested' / 'dir' / 'x.db'}")
    try:
        with engine.connect() as connection:
            pragma = lambda name: connection.exec_driver_sql(f"PRAGMA {name}").scalar()  # noqa: E731
            assert pragma("journal_mode") == "wal"
            assert pragma("foreign_keys") == 1
            assert pragma("busy_timeout") == 30_000
    finally:
        engine.dispose()
    assert (tmp_path / "nested" / "dir").is_dir()


@pytest.mark.integration
def test_an_idle_connection_the_server_dropped_is_replaced(pg_url, monkeypatch):
    engine = db_session.make_engine(pg_url, pool_size=1)
    try:
        with engine.connect() as connection:
            dropped = connection.execute(text("SELECT pg_backend_pid()")).scalar()
        with db_session.make_engine(pg_url, poolclass=NullPool).connect() as admin:  # a restart, for this connection
            admin.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": dropped})
        monkeypatch.setattr(db_session, "PING_IDLE_SECONDS", 0.0)  # as if it sat idle a while
        with engine.connect() as connection:  # pinged, found dead, replaced: the caller never sees it
            assert connection.execute(text("SELECT pg_backend_pid()")).scalar() != dropped
    finally:
        engine.dispose()


@pytest.mark.integration
def test_a_connection_used_moments_ago_is_not_pinged(pg_url, monkeypatch):
    engine = db_session.make_engine(pg_url, pool_size=1)
    pings = []
    real_ping = engine.dialect.do_ping
    monkeypatch.setattr(engine.dialect, "do_ping", lambda c: pings.append(c) or real_ping(c))
    try:
        for _ in range(3):
            with engine.connect() as connection:
                connection.execute(text("SELECT 1"))
        assert pings == []
        monkeypatch.setattr(db_session, "PING_IDLE_SECONDS", 0.0)
        with engine.connect() as connection:
            connection.execute(text("SELECT 1"))
        assert len(pings) == 1
    finally:
        engine.dispose()


def test_engine_is_cached_per_process(db_settings):
    assert db_session.get_engine(db_settings) is db_session.get_engine(db_settings)
    assert db_session.get_sessionmaker(db_settings) is db_session.get_sessionmaker(db_settings)


def _child_engine_works(settings, parent_engine_id: int, results) -> None:
    engine = db_session.get_engine(settings)
    with engine.connect() as connection:
        connection.execute(text("SELECT 1"))
    results.put((id(engine) != parent_engine_id, os.getpid()))


def test_forked_child_builds_its_own_engine(db_settings):
    parent = db_session.get_engine(db_settings)
    with parent.connect() as connection:  # a pooled connection the child inherits
        connection.execute(text("SELECT 1"))
    context = multiprocessing.get_context("fork")
    results = context.Queue()
    child = context.Process(target=_child_engine_works, args=(db_settings, id(parent), results))
    child.start()
    child.join(60)
    assert child.exitcode == 0
    own_engine, pid = results.get(timeout=5)
    assert own_engine and pid != os.getpid()
    with parent.connect() as connection:  # the parent's pool survived the child
        assert connection.execute(text("SELECT 1")).scalar() == 1


def test_session_scope_commits_and_rolls_back(db_settings):
    with db_session.session_scope(db_settings) as session:
        kept = make_job(session, commit=False).id
    with pytest.raises(RuntimeError):
        with db_session.session_scope(db_settings) as session:
            make_job(session, commit=False, job_id="f" * 32)
            raise RuntimeError("boom")
    with db_session.session_scope(db_settings) as session:
        assert set(session.scalars(select(Job.id))) == {kept}


def test_autocommit_scope_commits_each_statement(db_settings):
    with pytest.raises(RuntimeError):
        with db_session.session_scope(db_settings, autocommit=True) as session:
            make_job(session, commit=False, job_id="a" * 32)  # its INSERT is committed at once
            raise RuntimeError("boom")
    with db_session.session_scope(db_settings) as session:
        assert set(session.scalars(select(Job.id))) == {"a" * 32}


def test_dispose_engines_builds_fresh_ones(db_settings):
    before = db_session.get_engine(db_settings)
    db_session.dispose_engines()
    assert db_session.get_engine(db_settings) is not before


def test_importing_the_data_layer_creates_no_engine():
    # A prefork worker imports everything before forking; an engine made at import would be shared.
    import subprocess
    import sys

    code = ("import kronos_jobs.crud, kronos_jobs.db.migrate, kronos_jobs.db.session as s; "
            "assert not s._engines, s._engines")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=120)
