"""API fixtures: an app on the tmp SQLite `settings` (root conftest) and its test client.

The client runs with KRONOS_AUTH=on and sends an admin key of the default tenant, so every API
test goes through authentication (tests/api/test_auth.py covers scopes, tenants and limits).
Jobs created here go to the embedded filesystem broker in the tmp data dir; no worker runs, so
they stay queued. Tests that need other states move jobs through the crud functions.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from api.main import create_app
from kronos_jobs.core.names import DEFAULT_TENANT
from kronos_jobs.core.settings import Settings

# TestClient's requests carry Host: testserver unless a base URL says otherwise.
BASE_URL = "http://127.0.0.1"


@pytest.fixture
def auth_settings(settings: Settings) -> Settings:
    """`settings` with keys required, each looked up on every request (a revoke applies at once), and no
    request-rate limit (tests that count requests set their own)."""
    return settings.model_copy(update={"auth": "on", "rate_limit": None, "auth_cache_seconds": 0})


@pytest.fixture
def make_key(auth_settings: Settings) -> Callable[..., str]:
    """make_key(tenant=..., scopes=[...]) -> a new token (the database must be migrated: use after `client`)."""
    from kronos_jobs.crud import api_keys
    from kronos_jobs.db.session import session_scope

    def make(tenant: str = DEFAULT_TENANT, scopes: tuple[str, ...] = ("admin",)) -> str:
        with session_scope(auth_settings) as session:
            return api_keys.create_key(session, tenant_id=tenant, scopes=scopes)[1]

    return make


@pytest.fixture
def client(auth_settings: Settings, make_key: Callable[..., str]) -> Iterator[TestClient]:
    """A client whose `with` block runs the app's lifespan (database migration), with an admin key."""
    with TestClient(create_app(auth_settings), base_url=BASE_URL) as test_client:
        test_client.headers["Authorization"] = f"Bearer {make_key()}"
        yield test_client


@pytest.fixture
def db(client: TestClient, settings: Settings) -> Iterator[Session]:
    """A session on the client's database (migrated by the client's start-up)."""
    from kronos_jobs.db.session import get_sessionmaker

    with get_sessionmaker(settings)() as session:
        yield session
