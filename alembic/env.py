"""Alembic environment: migrates the database named by crm-notify's settings."""

from __future__ import annotations

from typing import Any

from sqlmodel import SQLModel

from alembic import context
from crm_notify.config import load_settings
from crm_notify.db import UTCDateTime, import_models, make_engine

import_models()
target_metadata = SQLModel.metadata


def render_item(type_: str, obj: Any, autogen_context: Any) -> str | bool:
    """Write our column types as plain SQLAlchemy types, so migrations never import app code."""
    if type_ == "type" and isinstance(obj, UTCDateTime):
        return "sa.DateTime(timezone=True)"
    if type_ == "type" and type(obj).__name__ == "AutoString":
        length = getattr(obj, "length", None)
        return f"sa.String(length={length})" if length else "sa.String()"
    return False


def run_migrations() -> None:
    """Run migrations on the connection given by the caller, or on the configured database."""
    connection = context.config.attributes.get("connection")
    if connection is None:
        url = context.config.attributes.get("database_url") or load_settings().database_url
        engine = make_engine(url)
        with engine.connect() as connection:
            _run(connection)
        engine.dispose()
    else:
        _run(connection)


def _run(connection: Any) -> None:
    context.configure(
        connection=connection,
        target_metadata=target_metadata,
        compare_type=True,
        render_as_batch=connection.dialect.name == "sqlite",
        render_item=render_item,
    )
    with context.begin_transaction():
        context.run_migrations()


run_migrations()
