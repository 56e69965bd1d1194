"""Migrations: a fresh database gets every table, concurrent start-ups are safe, and the scripts
match db/models.py exactly."""

from __future__ import annotations

import multiprocessing

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import inspect

from kronos_jobs.core.settings import Settings
from kronos_jobs.db import migrate
from kronos_jobs.db.models import Base
from kronos_jobs.db.session import get_engine, make_engine


def test_upgrade_creates_every_table(db_url, tmp_path):
    settings = Settings(data_dir=tmp_path, database_url=db_url)
    migrate.upgrade(settings)
    with get_engine(settings).connect() as connection:
        tables = set(inspect(connection).get_table_names())
        assert migrate.current_revision(connection) == migrate.head_revision()
    assert set(Base.metadata.tables) <= tables
    assert "alembic_version" in tables


def test_upgrade_twice_is_a_no_op(db_settings):
    migrate.upgrade(db_settings)
    with get_engine(db_settings).connect() as connection:
        assert migrate.current_revision(connection) == migrate.head_revision()


def test_migration_matches_models(db_settings):
    # What `alembic revision --autogenerate` would write: nothing, or a model change lacks a migration.
    engine = make_engine(db_settings.effective_database_url)
    try:
        with engine.connect() as connection:
            context = MigrationContext.configure(connection, opts={"compare_type": True})
            assert compare_metadata(context, Base.metadata) == []
    finally:
        engine.dispose()


def test_sqlite_parent_directory_is_created(tmp_path):
    settings = Settings(data_dir=tmp_path / "does" / "not" / "exist")
    migrate.upgrade(settings)
    assert (tmp_path / "does" / "not" / "exist" / "kronos.db").is_file()


def _upgrade_in_child(url: str, data_dir: str) -> None:
    migrate.upgrade(Settings(data_dir=data_dir, database_url=url))


def test_concurrent_upgrades_all_succeed(db_url, tmp_path):
    # Four processes starting together, as the API and three workers do; fork start so the test
    # stays fast, which also exercises engines built after a fork.
    context = multiprocessing.get_context("fork")
    children = [context.Process(target=_upgrade_in_child, args=(db_url, str(tmp_path))) for _ in range(4)]
    for child in children:
        child.start()
    for child in children:
        child.join(timeout=120)
    assert [child.exitcode for child in children] == [0, 0, 0, 0]
    with get_engine(Settings(data_dir=tmp_path, database_url=db_url)).connect() as connection:
        assert migrate.current_revision(connection) == migrate.head_revision()
        assert set(Base.metadata.tables) <= set(inspect(connection).get_table_names())


def test_head_is_the_initial_revision_chain():
    script = migrate.ScriptDirectory.from_config(migrate.alembic_config())
    assert [rev.revision for rev in script.walk_revisions()][-1] == "0001"
    assert len(script.get_heads()) == 1, "migrations branched: merge the heads"


def test_in_memory_sqlite_needs_no_lock_file(tmp_path):
    migrate.upgrade(Settings(data_dir=tmp_path, database_url="sqlite:///:memory:"))
    assert not list(tmp_path.iterdir())
