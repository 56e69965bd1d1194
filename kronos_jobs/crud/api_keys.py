"""API keys: create (the token is returned once), look up by token, list, revoke.

A token is `kj_<id>_<secret>`: 32 random bytes from `secrets` (256 bits), so the stored SHA-256 of
it cannot be reversed by guessing, and the lookup is one indexed equality. A slow password hash
(bcrypt, argon2) protects low-entropy passwords; on a random 256-bit token it adds no safety and
would cost tens of milliseconds on every request.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from collections.abc import Iterable

from sqlalchemy import select
from sqlalchemy.orm import Session

from kronos_jobs.core.errors import InvalidRequest, NotFound
from kronos_jobs.core.names import TENANT_PATTERN, Scope
from kronos_jobs.db.models import ApiKey, utcnow

TOKEN_PREFIX = "kj_"
_TENANT = re.compile(TENANT_PATTERN)


def token_digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def create_key(session: Session, *, tenant_id: str, scopes: Iterable[Scope | str], name: str = "") -> tuple[ApiKey, str]:
    """A new key row and its token (the only time the token exists outside the caller's hands)."""
    if not _TENANT.match(tenant_id):
        raise InvalidRequest(f"tenant {tenant_id!r}: 1-64 letters, digits, '_', '.' or '-', starting with a letter or digit",
                             details=[{"field": "tenant", "message": "invalid tenant name"}])
    try:
        chosen = sorted({Scope(s).value for s in scopes})
    except ValueError as exc:
        raise InvalidRequest(f"scopes: {exc}; choose from {', '.join(s.value for s in Scope)}",
                             details=[{"field": "scopes", "message": str(exc)}]) from None
    if not chosen:
        raise InvalidRequest("scopes: at least one scope is needed", details=[{"field": "scopes", "message": "empty"}])
    key_id = secrets.token_hex(6)
    token = f"{TOKEN_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    key = ApiKey(id=key_id, token_sha256=token_digest(token), tenant_id=tenant_id, scopes=chosen, name=name[:128])
    session.add(key)
    session.flush()
    return key, token


def find_active_key(session: Session, *, token: str) -> ApiKey | None:
    """The unrevoked key whose token this is, or None."""
    key = session.scalar(select(ApiKey).where(ApiKey.token_sha256 == token_digest(token)))
    if key is None or key.revoked_at is not None:
        return None
    return key


def list_keys(session: Session, *, tenant_id: str | None = None, include_revoked: bool = False) -> list[ApiKey]:
    query = select(ApiKey)
    if tenant_id is not None:
        query = query.where(ApiKey.tenant_id == tenant_id)
    if not include_revoked:
        query = query.where(ApiKey.revoked_at.is_(None))
    return list(session.scalars(query.order_by(ApiKey.created_at, ApiKey.id)))


def revoke_key(session: Session, *, key_id: str) -> ApiKey:
    """Revoke a key by its id (the token's `kj_<id>_` part); revoking twice keeps the first time."""
    key = session.get(ApiKey, key_id)
    if key is None:
        raise NotFound(f"no API key {key_id!r}", details=[{"field": "key_id", "message": "not found"}])
    if key.revoked_at is None:
        key.revoked_at = utcnow()
        session.flush()
    return key
