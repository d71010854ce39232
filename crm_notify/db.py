"""Database engine, sessions and the column types shared by every table."""

from __future__ import annotations

import functools
import sqlite3
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from pathlib import Path
from typing import Any

import sqlalchemy as sa
from pydantic_core import PydanticUndefined
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.engine import Engine
from sqlmodel import Session, SQLModel, create_engine

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
    from crm_notify.console import models as _console  # noqa: F401
    from crm_notify.contacts import models as _contacts  # noqa: F401
    from crm_notify.events import models as _events  # noqa: F401
    from crm_notify.fetch import cache as _fetch  # noqa: F401
    from crm_notify.gates import model as _gates  # noqa: F401
    from crm_notify.guards import models as _guards  # noqa: F401
    from crm_notify.lifecycle import models as _lifecycle  # noqa: F401
    from crm_notify.outbox import models as _outbox  # noqa: F401
    from crm_notify.subscriptions import models as _subscriptions  # noqa: F401
    from crm_notify.timers import models as _timers  # noqa: F401
    from crm_notify.webhooks import models as _webhooks  # noqa: F401


#: Seconds SQLite waits for the write lock (its busy timeout), and threads of one process for
#: their turn before they try anyway.
SQLITE_BUSY_TIMEOUT_S = 30


def _sqlite_connection_class(writer: threading.Lock) -> type[sqlite3.Connection]:
    """A ``sqlite3.Connection`` that hands ``writer`` back once its transaction has ended."""

    class _Connection(sqlite3.Connection):
        holds_writer = False

        def _release_writer(self) -> None:
            if self.holds_writer:
                self.holds_writer = False
                writer.release()

        def commit(self) -> None:
            try:
                super().commit()
            finally:
                self._release_writer()

        def rollback(self) -> None:
            try:
                super().rollback()
            finally:
                self._release_writer()

        def close(self) -> None:
            try:
                super().close()
            finally:
                self._release_writer()

    return _Connection


def make_engine(database_url: str, *, pool_size: int = 10) -> Engine:
    """Create the engine for ``database_url``.

    Statement parameters are never put into error messages or logs: they hold personal data.

    SQLite gets WAL journaling, a busy timeout and enforced foreign keys; its parent folder is
    created when missing, so the embedded default needs no set-up. Every SQLite transaction
    takes the write lock at its start (``BEGIN IMMEDIATE``); the threads of one process queue
    for it on a lock, handed over as each transaction ends, instead of polling the file with
    the busy handler's growing sleeps (other processes still meet the busy timeout).
    """
    if database_url.startswith("sqlite"):
        path = sa.engine.make_url(database_url).database
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
        writer = threading.Lock()
        engine = create_engine(
            database_url,
            connect_args={
                "check_same_thread": False,
                "timeout": SQLITE_BUSY_TIMEOUT_S,
                "factory": _sqlite_connection_class(writer),
            },
            hide_parameters=True,
        )

        @sa.event.listens_for(engine, "connect")
        def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
            cursor = dbapi_connection.cursor()
            cursor.execute("PRAGMA journal_mode=WAL")
            cursor.execute("PRAGMA synchronous=NORMAL")
            cursor.execute("PRAGMA foreign_keys=ON")
            cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_S * 1000}")
            cursor.close()
            # Let SQLAlchemy issue BEGIN itself, so "BEGIN IMMEDIATE" can take the write lock.
            dbapi_connection.isolation_level = None

        @sa.event.listens_for(engine, "begin")
        def _sqlite_begin(connection: Any) -> None:
            # After the timeout, go ahead without the lock: SQLite still serialises writers.
            held = writer.acquire(timeout=SQLITE_BUSY_TIMEOUT_S)
            try:
                connection.exec_driver_sql("BEGIN IMMEDIATE")
            except BaseException:
                if held:
                    writer.release()
                raise
            connection.connection.dbapi_connection.holds_writer = held

        return engine
    return create_engine(
        database_url,
        pool_size=pool_size,
        max_overflow=pool_size,
        pool_pre_ping=True,
        hide_parameters=True,
    )


@functools.cache
def _field_defaults(model: type[SQLModel]) -> tuple[tuple[str, Any, Callable[[], Any] | None], ...]:
    """(field, default, default factory) of each field of ``model`` that has a default, except
    an auto-incremented primary key."""
    primary = {column.name for column in sa.inspect(model).primary_key}
    found = []
    for name, info in model.model_fields.items():
        if name in primary:
            continue
        factory: Any = info.default_factory
        if factory is None and info.default is PydanticUndefined:
            continue
        found.append((name, info.default, factory))
    return tuple(found)


def new_row(model: type[SQLModel], values: dict[str, Any]) -> dict[str, Any]:
    """The column values of a new ``model`` row as its constructor would set them: ``values``,
    plus every other field's default. For :func:`insert_rows`, which skips building ORM
    objects for append-only rows."""
    row = {
        name: factory() if factory is not None else default
        for name, default, factory in _field_defaults(model)
        if name not in values
    }
    row.update(values)
    return row


def insert_rows(
    session: Session,
    model: type[SQLModel],
    rows: Sequence[dict[str, Any]],
    *,
    key: str | None = None,
) -> dict[Any, int]:
    """Insert ``rows`` (made by :func:`new_row`) in the session's transaction, as few
    multi-row ``INSERT`` statements.

    Parameters:
        key: a unique column; when given, the new ids are returned by its value.

    Returns:
        ``{row[key]: id}`` with ``key``, else an empty dict.
    """
    if not rows:
        return {}
    if key is None:
        session.execute(_insert_statement(model, None), list(rows))
        return {}
    result = session.execute(_insert_statement(model, key), list(rows))
    return {row_key: row_id for row_id, row_key in result}


@functools.cache
def _insert_statement(model: type[SQLModel], key: str | None) -> sa.Insert:
    """The ``INSERT`` of :func:`insert_rows` (returning ids and ``key`` when given), built once
    per table, so SQLAlchemy finds its compiled form without rebuilding it every time."""
    table = sa.inspect(model).local_table
    insert = sa.insert(table)
    return insert if key is None else insert.returning(table.c.id, table.c[key])


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
