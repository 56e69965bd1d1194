"""API fixtures: an app on the tmp SQLite `settings` (root conftest) and its test client.

Jobs created here go to the embedded filesystem broker in the tmp data dir; no worker runs, so
they stay queued. Tests that need other states move jobs through the crud functions.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from api.main import create_app
from kronos_jobs.core.settings import Settings


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    """A client whose `with` block runs the app's lifespan (database migration)."""
    with TestClient(create_app(settings)) as test_client:
        yield test_client


@pytest.fixture
def db(client: TestClient, settings: Settings) -> Iterator[Session]:
    """A session on the client's database (migrated by the client's start-up)."""
    from kronos_jobs.db.session import get_sessionmaker

    with get_sessionmaker(settings)() as session:
        yield session
