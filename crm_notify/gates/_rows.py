"""Moving held items between statuses, with their status history (their decision-log entries
are written with :func:`crm_notify.outbox.repository.log_decisions`).

Shared by the release functions and the ``cancel_on`` withdrawal; each works in the caller's
session (and transaction).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import cast

import sqlalchemy as sa
from sqlmodel import Session

from crm_notify.db import insert_rows, new_row
from crm_notify.outbox.models import (
    Notification,
    NotificationStatus,
    NotificationStatusChange,
)

#: The notification table, for statements that need no ORM bookkeeping.
NOTIFICATION = cast(sa.Table, sa.inspect(Notification).local_table)


@dataclass(frozen=True, slots=True)
class Moved:
    """A notification moved by :func:`move_items`: what its decision entry needs."""

    id: int
    rule: str
    event_id: int | None
    contact_id: int | None


def move_items(
    session: Session,
    *,
    gate_id: int | None,
    to_status: NotificationStatus,
    detail: str,
    moment: datetime,
    ids: Sequence[int] | None = None,
) -> list[Moved]:
    """Move the ``gated`` items of gate ``gate_id`` (those of ``ids`` only, when given; any
    gate's when ``gate_id`` is ``None``) to ``to_status``, with a status-history entry each.

    Returns:
        The moved notifications, by id (an item no longer ``gated`` is left as it is).
    """
    table = NOTIFICATION
    stmt = (
        sa.update(table)
        .where(table.c.status == NotificationStatus.GATED.value)
        .values(status=to_status.value, updated_at=moment)
        .returning(table.c.id, table.c.rule, table.c.event_id, table.c.contact_id)
    )
    if gate_id is not None:
        stmt = stmt.where(table.c.gate_id == gate_id)
    if ids is not None:
        stmt = stmt.where(table.c.id.in_(list(ids)))
    moved = sorted((Moved(*row) for row in session.execute(stmt)), key=lambda row: row.id)
    insert_rows(
        session,
        NotificationStatusChange,
        [
            new_row(
                NotificationStatusChange,
                {
                    "notification_id": row.id,
                    "status": to_status.value,
                    "detail": detail,
                    "at": moment,
                },
            )
            for row in moved
        ],
    )
    return moved
