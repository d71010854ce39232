"""Per-rule delivery KPIs: what was sent, and what the providers' tracking said became of it.

Counts are by notification (a message opened five times counts once) over the notifications
*sent* in the window, so a rate always compares like with like:

- delivery rate = delivered / sent, bounce rate = bounced / sent;
- open, click and complaint rates = opened, clicked, complained / delivered (over sent when
  the provider reports no deliveries, as SMTP does not).

Webhook actions (``channel`` ``webhook``) have only sent and failed counts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlmodel import Session

from crm_notify.outbox.models import Notification, NotificationStatus
from crm_notify.webhooks.events import EventType
from crm_notify.webhooks.models import TrackingEventRecord

#: Tracking event types counted per rule (each once per notification).
COUNTED_TYPES = (
    EventType.DELIVERED,
    EventType.OPENED,
    EventType.CLICKED,
    EventType.BOUNCED,
    EventType.COMPLAINED,
    EventType.UNSUBSCRIBED,
)


def _rate(count: int, base: int) -> float | None:
    return round(count / base, 4) if base else None


@dataclass
class RuleKpis:
    """The counts and rates of one rule and channel."""

    rule: str
    channel: str
    sent: int = 0
    failed: int = 0
    delivered: int = 0
    opened: int = 0
    clicked: int = 0
    bounced: int = 0
    complained: int = 0
    unsubscribed: int = 0

    @property
    def reached(self) -> int:
        """The base of engagement rates: deliveries, or sends when none are reported."""
        return self.delivered or self.sent

    def rates(self) -> dict[str, float | None]:
        """Delivery, open, click, bounce and complaint rates (``None`` without a base)."""
        return {
            "delivery_rate": _rate(self.delivered, self.sent),
            "open_rate": _rate(self.opened, self.reached),
            "click_rate": _rate(self.clicked, self.reached),
            "bounce_rate": _rate(self.bounced, self.sent),
            "complaint_rate": _rate(self.complained, self.reached),
        }

    def to_json(self) -> dict[str, Any]:
        """Counts and rates as one JSON object."""
        return {**asdict(self), **self.rates()}


def rule_kpis(
    *,
    session: Session,
    since: datetime | None = None,
    until: datetime | None = None,
    rule: str | None = None,
) -> list[RuleKpis]:
    """KPIs per rule and channel for notifications sent in ``[since, until)``, by rule name.

    Failed counts the notifications that ended ``failed`` in the window (by last update).
    """
    table = Notification.__table__  # type: ignore[attr-defined]
    events = TrackingEventRecord.__table__  # type: ignore[attr-defined]

    def window(column: sa.ColumnElement[Any]) -> list[sa.ColumnElement[bool]]:
        clauses = []
        if since is not None:
            clauses.append(column >= since)
        if until is not None:
            clauses.append(column < until)
        if rule is not None:
            clauses.append(table.c.rule == rule)
        return clauses

    results: dict[tuple[str, str], RuleKpis] = {}

    def entry(rule_name: str, channel: str) -> RuleKpis:
        return results.setdefault((rule_name, channel), RuleKpis(rule_name, channel))

    sent = sa.select(table.c.rule, table.c.channel, sa.func.count()).where(
        table.c.status == NotificationStatus.SENT.value, *window(table.c.sent_at)
    )
    for rule_name, channel, count in session.execute(sent.group_by(table.c.rule, table.c.channel)):
        entry(rule_name, channel).sent = count
    failed = sa.select(table.c.rule, table.c.channel, sa.func.count()).where(
        table.c.status == NotificationStatus.FAILED.value, *window(table.c.updated_at)
    )
    for rule_name, channel, count in session.execute(
        failed.group_by(table.c.rule, table.c.channel)
    ):
        entry(rule_name, channel).failed = count
    tracked = (
        sa.select(
            table.c.rule,
            table.c.channel,
            events.c.event_type,
            sa.func.count(sa.distinct(events.c.notification_id)),
        )
        .select_from(events.join(table, events.c.notification_id == table.c.id))
        .where(
            events.c.event_type.in_([kind.value for kind in COUNTED_TYPES]),
            table.c.status == NotificationStatus.SENT.value,
            *window(table.c.sent_at),
        )
        .group_by(table.c.rule, table.c.channel, events.c.event_type)
    )
    for rule_name, channel, event_type, count in session.execute(tracked):
        setattr(entry(rule_name, channel), event_type, count)
    return [results[key] for key in sorted(results)]


def format_kpis(rows: Iterable[RuleKpis]) -> str:
    """A plain-text table of ``rows`` for the terminal."""
    header = (
        "RULE",
        "CHANNEL",
        "SENT",
        "FAILED",
        "DELIVERED",
        "OPEN",
        "CLICK",
        "BOUNCE",
        "COMPLAINT",
    )
    lines = [header]
    for row in rows:
        rates = row.rates()
        lines.append(
            (
                row.rule,
                row.channel,
                str(row.sent),
                str(row.failed),
                _percent(rates["delivery_rate"]),
                _percent(rates["open_rate"]),
                _percent(rates["click_rate"]),
                _percent(rates["bounce_rate"]),
                _percent(rates["complaint_rate"]),
            )
        )
    if len(lines) == 1:
        return "no notifications sent in this period"
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    )


def _percent(rate: float | None) -> str:
    return "-" if rate is None else f"{rate * 100:.1f}%"
