"""Per-rule delivery KPIs: what was sent, and what the providers' tracking said became of it.

Counts are by notification (a message opened five times counts once) over the notifications
*sent* in the window, so a rate always compares like with like:

- delivery rate = delivered / sent, bounce rate = bounced / sent;
- open, click and complaint rates = opened, clicked, complained / delivered (over sent when
  the provider reports no deliveries, as SMTP does not).

Webhook actions (``channel`` ``webhook``) have only sent and failed counts.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
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
    found = _collect(session, since=since, until=until, rule=rule, by_day=False)
    return [found[key] for key in sorted(found)]


def daily_rule_kpis(
    *, session: Session, since: datetime, until: datetime, rule: str | None = None
) -> dict[str, list[RuleKpis]]:
    """:func:`rule_kpis` for each UTC day of ``[since, until)`` that had any, in the same
    three queries (grouped by day too), by day (``YYYY-MM-DD``)."""
    by_day: dict[str, list[RuleKpis]] = {}
    found = _collect(session, since=since, until=until, rule=rule, by_day=True)
    for key in sorted(found):
        by_day.setdefault(key[0], []).append(found[key])
    return by_day


def _utc_day(session: Session, column: Any) -> Any:
    """``column``'s UTC day as ``YYYY-MM-DD`` (SQLite stores UTC without a zone)."""
    # Constants inline, not bound: PostgreSQL matches the GROUP BY expression to the selected
    # one only when they are written alike.
    if session.get_bind().dialect.name == "postgresql":
        utc = sa.func.timezone(sa.literal_column("'UTC'"), column)
        return sa.func.to_char(utc, sa.literal_column("'YYYY-MM-DD'"))
    return sa.func.strftime(sa.literal_column("'%Y-%m-%d'"), column)


def _collect(
    session: Session,
    *,
    since: datetime | None,
    until: datetime | None,
    rule: str | None,
    by_day: bool,
) -> dict[tuple[str, str, str], RuleKpis]:
    """The KPIs by (day, rule, channel); the day is ``""`` unless ``by_day``."""
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

    def keys(column: sa.ColumnElement[Any]) -> list[Any]:
        """What a query groups by: the day of ``column`` (with ``by_day``), rule, channel."""
        day = [_utc_day(session, column)] if by_day else []
        return [*day, table.c.rule, table.c.channel]

    results: dict[tuple[str, str, str], RuleKpis] = {}

    def entry(row: Sequence[Any]) -> RuleKpis:
        day, rule_name, channel = row if by_day else ("", *row)
        return results.setdefault((day, rule_name, channel), RuleKpis(rule_name, channel))

    sent_keys = keys(table.c.sent_at)
    sent = (
        sa.select(*sent_keys, sa.func.count())
        .where(table.c.status == NotificationStatus.SENT.value, *window(table.c.sent_at))
        .group_by(*sent_keys)
    )
    for *key, count in session.execute(sent):
        entry(key).sent = count
    failed_keys = keys(table.c.updated_at)
    failed = (
        sa.select(*failed_keys, sa.func.count())
        .where(table.c.status == NotificationStatus.FAILED.value, *window(table.c.updated_at))
        .group_by(*failed_keys)
    )
    for *key, count in session.execute(failed):
        entry(key).failed = count
    tracked = (
        sa.select(
            *sent_keys,
            events.c.event_type,
            sa.func.count(sa.distinct(events.c.notification_id)),
        )
        .select_from(events.join(table, events.c.notification_id == table.c.id))
        .where(
            events.c.event_type.in_([kind.value for kind in COUNTED_TYPES]),
            table.c.status == NotificationStatus.SENT.value,
            *window(table.c.sent_at),
        )
        .group_by(*sent_keys, events.c.event_type)
    )
    for *key, event_type, count in session.execute(tracked):
        setattr(entry(key), event_type, count)
    return results


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
