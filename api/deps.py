"""Dependencies, as `Annotated` aliases so that handler signatures read like prose."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Annotated, Any

from fastapi import Depends, Request
from sqlalchemy.orm import Session

from kronos_jobs.core.names import Scope
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
    """Who is calling: the tenant every query is scoped by, the key's scopes, and the key (None = auth off)."""

    tenant_id: str
    scopes: frozenset[str] = field(default_factory=lambda: frozenset(scope.value for scope in Scope))
    key_id: str | None = None

    @property
    def is_admin(self) -> bool:
        return Scope.ADMIN.value in self.scopes

    def has(self, scope: Any) -> bool:
        return self.is_admin or getattr(scope, "value", scope) in self.scopes


def get_caller(request: Request, settings: SettingsDep, session: SessionDep) -> Caller:
    """The authenticated caller (api/auth.py): `read` scope for GET and HEAD, `submit` otherwise."""
    from api.auth import authenticate  # api.auth builds on this module

    return authenticate(request, settings, session, None)


CallerDep = Annotated[Caller, Depends(get_caller)]
