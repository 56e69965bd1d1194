"""Dependencies, as `Annotated` aliases so that handler signatures read like prose."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from kronos_jobs.core.names import DEFAULT_TENANT
from kronos_jobs.core.settings import Settings
from kronos_jobs.db.session import session_scope


def get_app_settings(request: Request) -> Settings:
    """The settings `create_app` was built with."""
    return request.app.state.settings


SettingsDep = Annotated[Settings, Depends(get_app_settings)]


def get_session(settings: SettingsDep) -> Iterator[Session]:
    """A session that commits when the handler returns and rolls back when it raises."""
    with session_scope(settings) as session:
        yield session


# scope="function": the commit happens before the response is sent, so a 2xx means it is stored.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


@dataclass(frozen=True)
class Caller:
    """Who is calling. One default tenant until API keys arrive; every query is scoped by it."""

    tenant_id: str


def get_caller() -> Caller:
    return Caller(tenant_id=DEFAULT_TENANT)


CallerDep = Annotated[Caller, Depends(get_caller)]
