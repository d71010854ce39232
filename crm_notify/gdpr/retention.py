"""Retention: events and rendered bodies are kept for a configured age, then purged.

Events older than the age are deleted (decisions, timers, notifications and consent records
keep their rows but lose the link), except those a pending timer still needs to fire.
Finished notifications (sent, failed, cancelled) older than the age keep their status and
ids for counts but lose their rendered subject and message and their template context, and
finished timers lose their payload (a digest's copies of the sends it merged). Tracking
events older than the age keep their type and link (for the KPIs) but lose the provider's
payload and description. Webhook subscriptions' deliveries that never went out (every retry
failed, or the subscription stayed disabled) are deleted at the same age.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta

import sqlalchemy as sa
from sqlmodel import Session, col, select

from crm_notify.clock import now
from crm_notify.events.models import Event
from crm_notify.guards.models import ConsentRecord
from crm_notify.outbox.models import Decision, Notification, NotificationStatus
from crm_notify.subscriptions.models import SubscriptionDelivery
from crm_notify.timers.models import Timer, TimerStatus
from crm_notify.webhooks.models import TrackingEventRecord

logger = logging.getLogger(__name__)

#: Statuses after which a notification's body is no longer needed.
FINISHED = (NotificationStatus.SENT, NotificationStatus.FAILED, NotificationStatus.CANCELLED)


@dataclass(frozen=True)
class PurgeReport:
    """What :func:`purge` removed: events deleted, notifications whose bodies were cleared,
    and the cut-off (everything before it was purged)."""

    cutoff: datetime
    events_deleted: int
    notifications_cleared: int


def purge(*, session: Session, older_than: timedelta) -> PurgeReport:
    """Purge events received, and finished notifications created, more than ``older_than``
    ago (see the module docstring); the caller commits.

    Raises:
        ValueError: ``older_than`` is not positive.
    """
    if older_than <= timedelta(0):
        raise ValueError("the retention age must be positive")
    cutoff = now() - older_than
    still_needed = select(col(Timer.event_id)).where(
        Timer.status == TimerStatus.PENDING, col(Timer.event_id).is_not(None)
    )
    old = select(col(Event.id)).where(
        col(Event.received_at) < cutoff, col(Event.id).not_in(still_needed)
    )
    ids = [i for i in session.exec(old) if i is not None]
    deleted = 0
    for start in range(0, len(ids), 500):  # bounded IN lists
        chunk = ids[start : start + 500]
        for model, column in (
            (Decision, col(Decision.event_id)),
            (Timer, col(Timer.event_id)),
            (Notification, col(Notification.event_id)),
            (ConsentRecord, col(ConsentRecord.event_id)),
        ):
            session.execute(sa.update(model).where(column.in_(chunk)).values(event_id=None))
        result = session.execute(sa.delete(Event).where(col(Event.id).in_(chunk)))
        deleted += int(getattr(result, "rowcount", 0) or 0)
    cleared = session.execute(
        sa.update(Notification)
        .where(
            col(Notification.created_at) < cutoff,
            col(Notification.status).in_(FINISHED),
            sa.or_(
                col(Notification.message).is_not(None),
                col(Notification.subject).is_not(None),
                col(Notification.context) != {},
            ),
        )
        .values(message=None, subject=None, context={})
    )
    # Digests keep copies of the sends they merged: gone with the finished timer's age.
    session.execute(
        sa.update(Timer)
        .where(
            col(Timer.updated_at) < cutoff,
            col(Timer.status) != TimerStatus.PENDING.value,
            col(Timer.payload).is_not(None),
        )
        .values(payload=None)
    )
    session.execute(
        sa.update(TrackingEventRecord)
        .where(col(TrackingEventRecord.received_at) < cutoff)
        .values(payload={}, description=None, url=None)
    )
    # Webhook deliveries that never went out (failed, or waiting on a disabled subscription)
    session.execute(
        sa.delete(SubscriptionDelivery).where(col(SubscriptionDelivery.created_at) < cutoff)
    )
    report = PurgeReport(cutoff, deleted, int(getattr(cleared, "rowcount", 0) or 0))
    logger.info(
        "retention purge: %d events deleted, %d notification bodies cleared",
        report.events_deleted,
        report.notifications_cleared,
    )
    return report
