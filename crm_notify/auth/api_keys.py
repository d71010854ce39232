"""API keys: created once, shown once, stored as SHA-256 hashes.

Keys are 32 random bytes, so a fast hash is enough: there is nothing to brute-force. Lookup
hashes the presented key and compares in the database by an indexed column.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from crm_notify.auth.models import ApiKey
from crm_notify.clock import now
from crm_notify.db import session_scope
from crm_notify.errors import CrmNotifyError

#: Every key starts with this, so a leaked key is easy to recognise in code and logs.
KEY_PREFIX = "cn_"


class ApiKeyError(CrmNotifyError):
    """An API key cannot be created or revoked as asked."""


def hash_key(key: str) -> str:
    """Return the hex SHA-256 of ``key``."""
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def create_api_key(name: str, *, engine: Engine) -> str:
    """Create a key named ``name`` and return it; only its hash is stored.

    Raises:
        ApiKeyError: the name is empty or already used.
    """
    name = name.strip()
    if not name or len(name) > 255:
        raise ApiKeyError("an API key needs a name of 1 to 255 characters")
    key = KEY_PREFIX + secrets.token_urlsafe(32)
    with session_scope(engine) as session:
        if session.exec(select(ApiKey).where(ApiKey.name == name)).first():
            raise ApiKeyError(f"an API key named {name!r} already exists")
        session.add(ApiKey(name=name, prefix=key[:10], key_hash=hash_key(key)))
    return key


def revoke_api_key(name: str, *, engine: Engine) -> None:
    """Revoke the key named ``name``.

    Raises:
        ApiKeyError: no active key has that name.
    """
    with session_scope(engine) as session:
        row = session.exec(select(ApiKey).where(ApiKey.name == name)).first()
        if row is None or row.revoked_at is not None:
            raise ApiKeyError(f"no active API key named {name!r}")
        row.revoked_at = now()
        session.add(row)


def list_api_keys(*, engine: Engine) -> list[ApiKey]:
    """Return every key (hashes included; callers show name, prefix and dates only)."""
    with Session(engine) as session:
        return list(session.exec(select(ApiKey).order_by(ApiKey.name)))


class ApiKeyAuthenticator:
    """Resolves a presented key to its name, caching hashes of known-good keys briefly."""

    def __init__(self, *, engine: Engine, cache_ttl_s: float = 30.0) -> None:
        self._engine = engine
        self._cache_ttl_s = cache_ttl_s
        self._cache: dict[str, tuple[str, float]] = {}

    def __call__(self, key: str) -> str | None:
        """Return the key's name, or ``None`` when the key is unknown or revoked."""
        if not key:
            return None
        digest = hash_key(key)
        cached = self._cache.get(digest)
        moment = now().timestamp()
        if cached is not None and moment - cached[1] < self._cache_ttl_s:
            return cached[0]
        with Session(self._engine) as session:
            row = session.exec(select(ApiKey).where(ApiKey.key_hash == digest)).first()
        if (
            row is None
            or row.revoked_at is not None
            or not hmac.compare_digest(row.key_hash, digest)
        ):
            self._cache.pop(digest, None)
            return None
        self._cache[digest] = (row.name, moment)
        return row.name
