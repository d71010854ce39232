"""Timer rows: schedule, cancel, and claim the due ones."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Session, col, select

from crm_notify.clock import now
from crm_notify.timers.models import Timer, TimerStatus


def schedule_timer(*, session: Session, timer: Timer) -> bool:
    """Insert ``timer`` unless a timer with its key exists.

    Returns:
        ``True`` when inserted.
    """
    exists = session.exec(select(Timer.id).where(Timer.key == timer.key)).first()
    if exists is not None:
        return False
    session.add(timer)
    session.flush()
    return True


def cancel_pending(
    *,
    session: Session,
    rules: Iterable[str],
    reason: str,
    entity_type: str | None = None,
    entity_id: str | None = None,
    contact_id: int | None = None,
    keep_key: str | None = None,
    only_without_entity: bool = False,
) -> int:
    """Cancel the pending timers of ``rules`` for one entity, or for one contact.

    ``keep_key`` names a timer to leave alone (the one about to be scheduled again);
    ``only_without_entity`` limits a contact's cancel to timers that name no entity.

    Returns:
        How many timers were cancelled.
    """
    names = list(rules)
    if not names:
        return 0
    stmt = (
        sa.update(Timer)
        .where(col(Timer.rule).in_(names))
        .where(col(Timer.status) == TimerStatus.PENDING.value)
        .values(status=TimerStatus.CANCELLED.value, reason=reason, updated_at=now())
    )
    if keep_key is not None:
        stmt = stmt.where(col(Timer.key) != keep_key)
    if entity_id is not None:
        stmt = stmt.where(col(Timer.entity_type) == entity_type, col(Timer.entity_id) == entity_id)
    elif contact_id is not None:
        stmt = stmt.where(col(Timer.contact_id) == contact_id)
        if only_without_entity:
            stmt = stmt.where(col(Timer.entity_id).is_(None))
    else:
        return 0
    result = session.execute(stmt)
    return int(result.rowcount)  # type: ignore[attr-defined]


def claim_due(*, session: Session, moment: datetime, limit: int) -> list[Timer]:
    """Lock and return up to ``limit`` pending timers due at ``moment``, oldest first.

    On PostgreSQL the rows are locked ``FOR UPDATE SKIP LOCKED``: schedulers running at once
    each get different timers, and a timer stays locked until its transaction ends, so it fires
    once. SQLite runs one writer at a time, which gives the same guarantee.
    """
    query = (
        select(Timer)
        .where(col(Timer.status) == TimerStatus.PENDING.value)
        .where(col(Timer.due_at) <= moment)
        .order_by(col(Timer.due_at), col(Timer.id))
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    return list(session.exec(query))


def finish_timer(*, session: Session, timer: Timer, status: TimerStatus, reason: str) -> None:
    """Record the outcome of a fired timer (in the firing transaction)."""
    timer.status = status
    timer.reason = reason
    timer.updated_at = now()
    session.add(timer)


def next_due_at(*, session: Session) -> datetime | None:
    """When the next pending timer is due (``None`` when there is none)."""
    return session.exec(
        select(sa.func.min(Timer.due_at)).where(col(Timer.status) == TimerStatus.PENDING.value)
    ).first()
