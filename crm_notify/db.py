"""Database engine, sessions and the column types shared by every table."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Engine
from sqlmodel import Session, create_engine

from crm_notify.clock import as_utc

#: JSON column: JSONB on PostgreSQL, JSON text elsewhere.
JSONType = sa.JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(sa.types.TypeDecorator[datetime]):
    """Timestamps stored as UTC and always returned timezone-aware (SQLite drops the zone)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        value = as_utc(value)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        return None if value is None else as_utc(value)


def utc_column(*, nullable: bool = False, index: bool = False) -> Any:
    """A ``UTCDateTime`` column for use as ``sa_column`` in SQLModel tables."""
    return sa.Column(UTCDateTime(), nullable=nullable, index=index)


def json_column(*, nullable: bool = False) -> Any:
    """A JSON column for use as ``sa_column`` in SQLModel tables."""
    return sa.Column(JSONType, nullable=nullable)


def import_models() -> None:
    """Import every table module so that ``SQLModel.metadata`` knows all tables."""
    from crm_notify.auth import models as _auth  # noqa: F401
    from crm_notify.commerce import models as _commerce  # noqa: F401
    from crm_notify.contacts import models as _contacts  # noqa: F401
    from crm_notify.events import models as _events  # noqa: F401
    from crm_notify.outbox import models as _outbox  # noqa: F401


def make_engine(database_url: str, *, pool_size: int = 10) -> Engine:
    """Create the engine for ``database_url``.

    Statement parameters are never put into error messages or logs: they hold personal data.

    SQLite gets WAL journaling, a busy timeout and enforced foreign keys; its parent folder is
    created when missing, so the embedded default needs no set-up.
    """
    if database_url.startswith("sqlite"):
        path = sa.engine.make_url(database_url).database
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        engine = create_engine(
            database_url,
            connect_args={"check_same_thread": False, "timeout": 30},
            hide_parameters=True,
        )

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute("PRAGMA busy_timeout=30000")
            cursor.close()
            # Let SQLAlchemy issue BEGIN itself, so "BEGIN IMMEDIATE" can take the write lock.
            dbapi_connection.isolation_level = None

        @sa.event.listens_for(engine, "begin")
        def _sqlite_begin(connection: Any) -> None:
            connection.exec_driver_sql("BEGIN IMMEDIATE")

        return engine
    return create_engine(
        database_url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        hide_parameters=True,
    )


@contextmanager
def session_scope(engine: Engine) -> Iterator[Session]:
    """A session whose transaction commits on success and rolls back on any error."""
    with Session(engine, expire_on_commit=False) as session:
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
