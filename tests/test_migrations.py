"""The Alembic migrations create exactly the schema the models describe."""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import Engine
from sqlmodel import SQLModel

from crm_notify.db import import_models
from crm_notify.migrations import pending_revision


def test_models_and_migrations_agree(engine: Engine) -> None:
    # Given a database migrated to head (the engine fixture runs `upgrade`)
    import_models()
    # When Alembic compares it with the models
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        differences = compare_metadata(context, SQLModel.metadata)
    # Then there is nothing to migrate
    assert differences == []
    assert pending_revision(engine) is None
