"""fetch cache

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-07 10:00:00.000000
"""

from collections.abc import Sequence

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql

from alembic import op

revision: str = "0009"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "fetch_cache",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column(
            "data",
            sa.JSON().with_variant(postgresql.JSONB(astext_type=sa.Text()), "postgresql"),
            nullable=False,
        ),
        sa.Column("expires_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    with op.batch_alter_table("fetch_cache", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_fetch_cache_expires_at"), ["expires_at"], unique=False)


def downgrade() -> None:
    with op.batch_alter_table("fetch_cache", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_fetch_cache_expires_at"))
    op.drop_table("fetch_cache")
