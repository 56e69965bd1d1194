"""Who is calling: API keys resolved to a tenant and scopes, as FastAPI dependencies.

Every /v1 route takes a caller: `CallerDep` (api/deps.py) asks for the `read` scope on GET and
HEAD and for `submit` on everything else; `ReaderDep`, `SubmitterDep` and `AdminDep` ask for one
scope whatever the method. A key is sent as `Authorization: Bearer <token>` (or `X-API-Key`).
With KRONOS_AUTH resolving to off (settings.auth_required), the caller is the default tenant with
every scope. Routes scope every query by `caller.tenant_id`, so another tenant's id reads as 404.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Annotated, Any

from fastapi import Depends, Header, Request
from starlette.exceptions import HTTPException

from api.deps import Caller, CallerDep, SessionDep, SettingsDep
from api.quotas import TooManyRequests
from kronos_jobs.core.names import DEFAULT_TENANT, Scope
from kronos_jobs.core.settings import Settings
from kronos_jobs.crud import api_keys as key_crud
from kronos_jobs.crud import jobs as job_crud
from kronos_jobs.db.session import session_scope

logger = logging.getLogger(__name__)

ALL_SCOPES = frozenset(scope.value for scope in Scope)
READ_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
MAX_TOKEN_CHARS = 256
UNAUTHENTICATED = {"WWW-Authenticate": 'Bearer realm="kronos-jobs"'}

# Execution-metadata keys that identify the deployment (hosts, processes, software versions):
# shown to admin keys only.
ADMIN_ONLY_METADATA = frozenset({"worker_id", "worker_host", "worker_pid", "torch_version", "cuda_version",
                                 "owner", "lease_owner", "hostname", "pid"})


class KeyCache:
    """Keys this process looked up, for KRONOS_AUTH_CACHE_SECONDS: one database round trip fewer per
    request, at the price of a revoke reaching this process only when the entry expires. Only
    keys found and active are kept (an unknown token is looked up every time), by token digest."""

    MAX_ENTRIES = 10_000

    def __init__(self, seconds: float):
        self.seconds = seconds
        self._entries: dict[str, tuple[float, Caller]] = {}
        self._lock = threading.Lock()

    def get(self, digest: str) -> Caller | None:
        entry = self._entries.get(digest)
        if entry is None or entry[0] < time.monotonic():
            return None
        return entry[1]

    def put(self, digest: str, caller: Caller) -> None:
        if self.seconds <= 0:
            return
        with self._lock:
            if len(self._entries) >= self.MAX_ENTRIES:
                self._entries.clear()
            self._entries[digest] = (time.monotonic() + self.seconds, caller)


def _resolve_key(request: Request, session: Any, token: str) -> Caller | None:
    cache: KeyCache | None = getattr(request.app.state, "key_cache", None)
    digest = key_crud.token_digest(token)
    caller = cache.get(digest) if cache is not None else None
    if caller is None:
        key = key_crud.find_active_key(session, token=token)
        if key is None:
            return None
        caller = Caller(tenant_id=key.tenant_id, scopes=frozenset(key.scopes or ()), key_id=key.id)
        if cache is not None:
            cache.put(digest, caller)
    return caller


# The web console's pages (api/routes/console.py) are opened by a browser, which cannot send a
# bearer header: its login form puts the key in this cookie (HttpOnly, SameSite=Strict), read on
# /console paths only, so the JSON API never takes a key from a cookie (no cross-site requests).
CONSOLE_COOKIE = "kronos_console_key"
CONSOLE_PREFIX = "/console"


def presented_token(request: Request) -> str | None:
    authorization = request.headers.get("authorization")
    if authorization:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise HTTPException(401, "Authorization must be `Bearer <API key>`", headers=UNAUTHENTICATED)
        return token.strip()
    token = request.headers.get("x-api-key")
    if not token and request.url.path.startswith(CONSOLE_PREFIX):
        token = request.cookies.get(CONSOLE_COOKIE)
    return token or None


def authenticate(request: Request, settings: Settings, session: Any, scope: Scope | None) -> Caller:
    """The caller of `request`, holding `scope` (None: by method); 401, 403 or 429 otherwise."""
    if not settings.auth_required:
        return Caller(tenant_id=DEFAULT_TENANT, scopes=ALL_SCOPES, key_id=None)
    token = presented_token(request)
    if token is None:
        raise HTTPException(401, "an API key is required: send `Authorization: Bearer <key>` "
                                 "(`kronos-jobs keys create` makes one)", headers=UNAUTHENTICATED)
    caller = _resolve_key(request, session, token) if len(token) <= MAX_TOKEN_CHARS else None
    if caller is None:
        raise HTTPException(401, "unknown or revoked API key", headers=UNAUTHENTICATED)
    needed = scope or (Scope.READ if request.method in READ_METHODS else Scope.SUBMIT)
    if not caller.has(needed):
        raise HTTPException(403, f"API key {caller.key_id} lacks the `{needed.value}` scope (it has: "
                                 f"{', '.join(sorted(caller.scopes)) or 'none'})")
    limiter = getattr(request.app.state, "rate_limiter", None)
    if limiter is not None:
        limiter.hit(caller.key_id)
    return caller


def requires(scope: Scope):
    """A dependency resolving the caller and insisting on `scope`."""

    def dependency(request: Request, settings: SettingsDep, session: SessionDep) -> Caller:
        return authenticate(request, settings, session, scope)

    dependency.__name__ = f"require_{scope.value}"
    return dependency


ReaderDep = Annotated[Caller, Depends(requires(Scope.READ))]
SubmitterDep = Annotated[Caller, Depends(requires(Scope.SUBMIT))]
AdminDep = Annotated[Caller, Depends(requires(Scope.ADMIN))]


def optional_admin(request: Request, settings: SettingsDep) -> bool:
    """Whether the request carries admin rights (auth off counts); never raises for a missing key.

    For routes that must answer while the database is down (/readyz): a session only if a key came.
    """
    if not settings.auth_required:
        return True
    try:
        token = presented_token(request)
    except HTTPException:
        return False
    if not token or len(token) > MAX_TOKEN_CHARS:
        return False
    try:
        with session_scope(settings) as session:
            caller = _resolve_key(request, session, token)
            return caller is not None and caller.is_admin
    except Exception:  # database down: readiness still answers, without the admin details
        return False


def require_admin_own_session(request: Request, settings: SettingsDep) -> Caller:
    """AdminDep for routes without a request session (/metrics): no database touched while auth is off."""
    if not settings.auth_required:
        return authenticate(request, settings, None, Scope.ADMIN)
    with session_scope(settings) as session:
        return authenticate(request, settings, session, Scope.ADMIN)


IsAdminDep = Annotated[bool, Depends(optional_admin)]


def visible_metadata(metadata: dict[str, Any] | None, caller: Caller) -> dict[str, Any]:
    """A job's execution metadata as `caller` may see it: without hosts, pids and versions unless admin."""
    if caller.is_admin:
        return dict(metadata or {})

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k not in ADMIN_ONLY_METADATA}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return strip(metadata or {})


def check_inflight_quota(
    caller: CallerDep,
    session: SessionDep,
    settings: SettingsDep,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=255, include_in_schema=False)] = None,
) -> None:
    """429 when the tenant already has KRONOS_MAX_INFLIGHT_JOBS queued or running jobs.

    A repeated Idempotency-Key the tenant already used passes: it creates nothing, it returns the job.
    Concurrent submits can overshoot the quota by the number racing at once (count, then insert).
    """
    if settings.max_inflight_jobs is None:
        return
    if idempotency_key and job_crud.find_by_idempotency_key(session, tenant_id=caller.tenant_id, key=idempotency_key):
        return
    in_flight = job_crud.count_in_flight(session, tenant_id=caller.tenant_id)
    if in_flight >= settings.max_inflight_jobs:
        raise TooManyRequests(f"tenant {caller.tenant_id} has {in_flight} queued or running jobs, the most allowed "
                              f"(KRONOS_MAX_INFLIGHT_JOBS={settings.max_inflight_jobs}); retry when some finish",
                              retry_after=settings.heartbeat_seconds)


InflightQuota = Depends(check_inflight_quota)
