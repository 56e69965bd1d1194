"""`kronos-jobs keys create|list|revoke`, the client commands' KRONOS_API_KEY, and `db upgrade`
keeping the database password to itself."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from click.testing import CliRunner
from fastapi.testclient import TestClient

from api.main import create_app
from kronos_jobs.cli import main
from kronos_jobs.core.settings import Settings, get_settings


@pytest.fixture
def keyed(settings: Settings) -> Settings:
    return settings.model_copy(update={"auth": "on", "auth_cache_seconds": 0})  # a revoke applies at once


@pytest.fixture
def http(keyed: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(keyed)) as client:
        yield client


def run(settings: Settings, *args: str, http: TestClient | None = None):
    obj = {"settings": settings} if http is None else {"settings": settings, "http": http}
    return CliRunner().invoke(main, list(args), obj=obj, catch_exceptions=False)


def test_create_list_use_and_revoke(keyed: Settings, http: TestClient) -> None:
    created = run(keyed, "keys", "create", "--tenant", "acme", "--scope", "read", "--name", "dashboard")
    assert created.exit_code == 0, created.output
    token = created.stdout.strip()
    assert token.startswith("kj_") and len(token) > 40
    assert "shown only now" in created.stderr and "tenant acme" in created.stderr
    key_id = token.split("_")[1]

    listed = run(keyed, "keys", "list").stdout
    assert key_id in listed and "acme" in listed and "dashboard" in listed and token not in listed

    anonymous = run(keyed, "models", http=http)
    assert anonymous.exit_code != 0 and "KRONOS_API_KEY" in anonymous.output
    with_key = keyed.model_copy(update={"api_key": token})
    assert run(with_key, "models", http=http).exit_code == 0
    refused = run(with_key, "schedules", "run", "nope", http=http)  # read-only key: submit refused
    assert refused.exit_code != 0 and "HTTP 403" in refused.output

    assert run(keyed, "keys", "revoke", key_id).exit_code == 0
    assert key_id not in run(keyed, "keys", "list").stdout and key_id in run(keyed, "keys", "list", "--all").stdout
    assert "HTTP 401" in run(with_key, "models", http=http).output
    assert run(keyed, "keys", "revoke", "000000000000").exit_code != 0


def test_bad_tenant_and_scope_are_refused(keyed: Settings) -> None:
    assert run(keyed, "keys", "create", "--tenant", "a b/c").exit_code != 0
    assert run(keyed, "keys", "create", "--scope", "root").exit_code != 0


def test_client_takes_the_key_from_kronos_api_key(keyed: Settings, http: TestClient, monkeypatch) -> None:
    token = run(keyed, "keys", "create").stdout.strip()
    monkeypatch.setenv("KRONOS_API_KEY", token)
    get_settings.cache_clear()  # `keys create` above read (and cached) the environment without the key
    result = CliRunner().invoke(main, ["models"], obj={"http": http}, catch_exceptions=False)  # settings from env
    assert result.exit_code == 0, result.output


def test_db_upgrade_does_not_print_the_password(keyed: Settings, monkeypatch) -> None:
    import kronos_jobs.db.migrate as migrate

    monkeypatch.setattr(migrate, "upgrade", lambda settings: None)
    url = "postgresql+psycopg://kronos:s3cr/et:pw?x@db.internal:5432/kronos"
    result = run(keyed.model_copy(update={"database_url": url}), "db", "upgrade")
    assert result.exit_code == 0
    assert "s3cr" not in result.output and "kronos:***@db.internal:5432/kronos" in result.output
