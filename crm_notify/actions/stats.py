"""Webhook actions counted per rule, by status (for the per-rule KPI report)."""

from __future__ import annotations

from datetime import datetime

import sqlalchemy as sa
from sqlmodel import Session, col, select

from crm_notify.actions.model import WEBHOOK_CHANNEL
from crm_notify.outbox.models import Notification, NotificationStatus

#: The statuses every rule's counts have (zero when none); in-flight ones count as ``pending``.
COUNTED_STATUSES = ("sent", "failed", "retrying", "cancelled", "pending")
#: Statuses of requests not sent yet and not waiting for a retry.
_IN_FLIGHT = frozenset(
    {NotificationStatus.PENDING, NotificationStatus.QUEUED, NotificationStatus.SENDING}
)


def webhook_counts_by_rule(
    session: Session, *, since: datetime | None = None, until: datetime | None = None
) -> dict[str, dict[str, int]]:
    """Count each rule's webhook-action notifications by status.

    Parameters:
        session: a database session.
        since: only notifications created at or after this moment.
        until: only notifications created before this moment.

    Returns:
        ``{rule: {"sent": n, "failed": n, "retrying": n, "cancelled": n, "pending": n}}`` for
        every rule with at least one webhook notification in the period, rules sorted by name;
        ``pending`` adds up pending, queued and sending ones.
    """
    query = (
        select(Notification.rule, Notification.status, sa.func.count())
        .where(Notification.channel == WEBHOOK_CHANNEL)
        .group_by(col(Notification.rule), col(Notification.status))
    )
    if since is not None:
        query = query.where(col(Notification.created_at) >= since)
    if until is not None:
        query = query.where(col(Notification.created_at) < until)
    counts: dict[str, dict[str, int]] = {}
    for rule, status, count in session.exec(query):
        per_rule = counts.setdefault(rule, dict.fromkeys(COUNTED_STATUSES, 0))
        key = "pending" if status in _IN_FLIGHT else str(status)
        per_rule[key] = per_rule.get(key, 0) + int(count)
    return dict(sorted(counts.items()))
