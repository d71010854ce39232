"""The cache of fetch answers: Redis when one is configured, else a table of the database.

A step with ``cache: 1h`` keeps each successful answer for an hour, keyed by the request
(:func:`cache_key`: a SHA-256 of the method, the final URL, the body and the header values, so
no credential is stored in clear). Expiry is decided by :func:`crm_notify.clock.now`, stored
with the entry; Redis also expires its keys on its own clock (which tests cannot freeze), a
little later. The table's expired rows are deleted as new answers are written.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping
from datetime import datetime, timedelta
from typing import Any

import redis
import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Engine
from sqlmodel import Field, Session, SQLModel, col, select

from crm_notify.clock import as_utc, now
from crm_notify.db import json_column, session_scope, utc_column

logger = logging.getLogger(__name__)

#: How much longer than the entry Redis keeps a key (its clock is not ours).
REDIS_GRACE = timedelta(minutes=1)


class FetchCacheEntry(SQLModel, table=True):
    """One cached answer (the database cache); ``key`` is :func:`cache_key`'s hash."""

    __tablename__ = "fetch_cache"

    key: str = Field(primary_key=True, max_length=64)
    data: Any = Field(sa_column=json_column())
    expires_at: datetime = Field(sa_column=utc_column(index=True))
    created_at: datetime = Field(default_factory=now, sa_column=utc_column())


def cache_key(method: str, url: str, body: bytes, headers: Mapping[str, str]) -> str:
    """The key of a request: a SHA-256 (hex) of its method, URL, body and header values.

    Parameters:
        method: ``GET`` or ``POST``.
        url: the final URL (templates rendered, ``${NAME}`` references resolved).
        body: the bytes sent.
        headers: the step's headers, resolved (their values are only hashed).
    """
    digest = hashlib.sha256()
    for piece in (method.encode(), url.encode(), body):
        digest.update(len(piece).to_bytes(8, "big") + piece)
    for name, value in sorted((name.lower(), value) for name, value in headers.items()):
        digest.update(hashlib.sha256(f"{name}\0{value}".encode()).digest())
    return digest.hexdigest()


class FetchCache:
    """Base class of fetch caches; subclasses implement :meth:`_get` and :meth:`_put`.

    Failures of the store are logged and count as a miss: a cache never stops a send.
    """

    #: Shown in logs.
    name = "cache"

    def get(self, key: str) -> Any | None:
        """The answer cached under ``key`` and not expired, or ``None``."""
        try:
            return self._get(key, now())
        except (redis.RedisError, sa.exc.SQLAlchemyError, ValueError) as exc:
            logger.warning("fetch %s unavailable (%s): not used", self.name, type(exc).__name__)
            return None

    def put(self, key: str, data: Any, *, ttl: timedelta) -> None:
        """Keep ``data`` under ``key`` for ``ttl`` from now."""
        try:
            self._put(key, data, now() + ttl)
        except (redis.RedisError, sa.exc.SQLAlchemyError, ValueError) as exc:
            logger.warning("fetch %s unavailable (%s): not stored", self.name, type(exc).__name__)

    def close(self) -> None:
        """Release connections."""

    def _get(self, key: str, moment: datetime) -> Any | None:
        raise NotImplementedError(f"{type(self).__name__}._get")

    def _put(self, key: str, data: Any, expires_at: datetime) -> None:
        raise NotImplementedError(f"{type(self).__name__}._put")


class RedisFetchCache(FetchCache):
    """Answers in Redis, under ``<namespace>:fetch:<key>``.

    Parameters:
        client: the Redis client.
        namespace: the key prefix (``CRM_NOTIFY_REDIS_NAMESPACE``).
    """

    name = "cache (Redis)"

    def __init__(self, client: redis.Redis, *, namespace: str) -> None:
        self._client = client
        self._prefix = f"{namespace}:fetch:"

    def close(self) -> None:
        self._client.close()

    def _get(self, key: str, moment: datetime) -> Any | None:
        raw = self._client.get(self._prefix + key)
        if raw is None:
            return None
        entry = json.loads(raw)
        if datetime.fromisoformat(entry["expires_at"]) <= moment:
            return None
        return entry["data"]

    def _put(self, key: str, data: Any, expires_at: datetime) -> None:
        entry = {"expires_at": as_utc(expires_at).isoformat(), "data": data}
        ttl = (expires_at - now()) + REDIS_GRACE
        self._client.set(
            self._prefix + key,
            json.dumps(entry, separators=(",", ":")),
            px=max(int(ttl.total_seconds() * 1000), 1),
        )


class DatabaseFetchCache(FetchCache):
    """Answers in the ``fetch_cache`` table (the embedded default, without Redis).

    Parameters:
        engine: the database.
    """

    name = "cache (database)"

    def __init__(self, engine: Engine) -> None:
        self._engine = engine

    def _get(self, key: str, moment: datetime) -> Any | None:
        with Session(self._engine) as session:
            return session.exec(
                select(FetchCacheEntry.data).where(
                    FetchCacheEntry.key == key, col(FetchCacheEntry.expires_at) > moment
                )
            ).first()

    def _put(self, key: str, data: Any, expires_at: datetime) -> None:
        table = FetchCacheEntry.__table__  # type: ignore[attr-defined]
        values = {"key": key, "data": data, "expires_at": expires_at, "created_at": now()}
        with session_scope(self._engine) as session:
            dialect = session.get_bind().dialect.name
            insert: Any = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(table)
            session.execute(
                insert.values(values).on_conflict_do_update(
                    index_elements=["key"],
                    set_={
                        name: insert.excluded[name] for name in ("data", "expires_at", "created_at")
                    },
                )
            )
            session.execute(sa.delete(table).where(table.c.expires_at <= now()))
