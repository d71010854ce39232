"""timers and notification steps

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23 00:51:34.260015
"""

from collections.abc import Sequence

import sqlalchemy as sa

from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "timer",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("key", sa.String(length=767), nullable=False),
        sa.Column("rule", sa.String(length=255), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("contact_id", sa.Integer(), nullable=True),
        sa.Column("entity_type", sa.String(length=16), nullable=True),
        sa.Column("entity_id", sa.String(length=255), nullable=True),
        sa.Column("event_id", sa.Integer(), nullable=True),
        sa.Column("dedupe_key", sa.String(length=512), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("trigger_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("due_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["contact_id"],
            ["contact.id"],
        ),
        sa.ForeignKeyConstraint(
            ["event_id"],
            ["event.id"],
        ),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("key"),
    )
    with op.batch_alter_table("timer", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_timer_contact_id"), ["contact_id"], unique=False)
        batch_op.create_index(
            "ix_timer_rule_entity", ["rule", "entity_type", "entity_id"], unique=False
        )
        batch_op.create_index("ix_timer_status_due_at", ["status", "due_at"], unique=False)

    with op.batch_alter_table("notification", schema=None) as batch_op:
        batch_op.add_column(sa.Column("dedupe_key", sa.String(length=512), nullable=True))
        batch_op.add_column(sa.Column("step", sa.Integer(), nullable=False, server_default="0"))
        batch_op.add_column(sa.Column("timer_id", sa.Integer(), nullable=True))
        batch_op.create_index(
            batch_op.f("ix_notification_dedupe_key"), ["dedupe_key"], unique=False
        )
        batch_op.create_foreign_key("fk_notification_timer_id", "timer", ["timer_id"], ["id"])


def downgrade() -> None:
    with op.batch_alter_table("notification", schema=None) as batch_op:
        batch_op.drop_constraint("fk_notification_timer_id", type_="foreignkey")
        batch_op.drop_index(batch_op.f("ix_notification_dedupe_key"))
        batch_op.drop_column("timer_id")
        batch_op.drop_column("step")
        batch_op.drop_column("dedupe_key")

    with op.batch_alter_table("timer", schema=None) as batch_op:
        batch_op.drop_index("ix_timer_status_due_at")
        batch_op.drop_index("ix_timer_rule_entity")
        batch_op.drop_index(batch_op.f("ix_timer_contact_id"))

    op.drop_table("timer")
