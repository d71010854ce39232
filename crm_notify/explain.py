"""Why a contact got (or did not get) each message: the decision log as a timeline.

:func:`explain_contact` reads a contact's events, the decisions taken for them (and those the
scheduler or delivery took later), the notifications those decisions wrote with their status
history, the contact's current consent and suppression.
:func:`crm_notify.explain_text.format_timeline` prints it for support staff;
:meth:`Timeline.to_json` is what the decisions API returns.

A decision is shown under its event when it was taken as the event arrived; one taken later
(a delayed step, a deferred send, a cancellation at delivery) gets its own line at its own time.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from sqlmodel import Session, col, select

from crm_notify._json import jsonable
from crm_notify.clock import as_utc
from crm_notify.contacts.models import Contact
from crm_notify.events.models import Event
from crm_notify.guards.models import ConsentRecord, Suppression
from crm_notify.guards.suppression import address_hash_or_none
from crm_notify.outbox.models import Decision, Notification, NotificationStatusChange
from crm_notify.rules.durations import parse_duration

#: Entries a timeline holds by default (the most recent).
DEFAULT_LIMIT = 200
#: A decision this close to its event's arrival was taken for it on arrival.
SAME_MOMENT = timedelta(minutes=1)


@dataclass
class ConsentState:
    """The latest consent record of one purpose (``granted`` is ``None``: no record)."""

    purpose: str
    granted: bool | None
    at: datetime | None = None
    source: str | None = None
    record_id: int | None = None


@dataclass
class SuppressionState:
    """A suppression-list entry for the contact's address."""

    id: int
    purpose: str
    reason: str
    created_by: str
    at: datetime


@dataclass
class ContactSummary:
    """Who the timeline is about."""

    id: int
    email: str | None
    user_id: str | None
    timezone: str | None
    consent: list[ConsentState]
    suppressions: list[SuppressionState]


@dataclass
class StatusChange:
    """One step of a notification's status history."""

    status: str
    at: datetime
    detail: str | None


@dataclass
class NotificationSummary:
    """A notification a decision wrote, with where it is now and how it got there."""

    id: int
    status: str
    template: str
    purpose: str
    created_at: datetime
    sent_at: datetime | None
    history: list[StatusChange]


@dataclass
class DecisionEntry:
    """One decision: outcome, reason and the inputs that decided it."""

    id: int
    at: datetime
    rule: str
    outcome: str
    reason: str
    details: dict[str, Any]
    event_id: int | None
    notification: NotificationSummary | None


@dataclass
class EventSummary:
    """An event, without its payload."""

    id: int
    type: str
    name: str | None
    message_id: str
    timestamp: datetime
    received_at: datetime


@dataclass
class TimelineEntry:
    """What happened at one moment: an event arriving (``kind`` ``event``) with the decisions
    taken for it, or decisions taken later (``scheduler``, ``delivery``), with their event."""

    at: datetime
    kind: str
    event: EventSummary | None
    decisions: list[DecisionEntry] = field(default_factory=list)


@dataclass
class Timeline:
    """A contact's explained history, oldest first; ``truncated`` when older entries were
    left out to stay within the limit."""

    contact: ContactSummary
    entries: list[TimelineEntry]
    rule: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    truncated: bool = False

    def to_json(self) -> dict[str, Any]:
        """The timeline as JSON-able data (timestamps in ISO 8601)."""
        data: dict[str, Any] = jsonable(dataclasses.asdict(self))
        return data


def parse_moment(text: str, *, now: datetime, end_of_day: bool = False) -> datetime:
    """Read a ``--since``/``--until`` value: a duration (``7d``: that long ago), an ISO date
    (its start, or with ``end_of_day`` its end) or an ISO date and time (UTC unless given).

    Raises:
        ValueError: none of these.
    """
    text = text.strip()
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        day = date.fromisoformat(text)
    except ValueError:
        pass
    else:
        start = datetime.combine(day, time(0), tzinfo=UTC)
        return start + timedelta(days=1) if end_of_day else start
    try:
        return as_utc(datetime.fromisoformat(text.replace("Z", "+00:00")))
    except ValueError:
        raise ValueError(
            f"{text!r} is not a duration (7d, 24h), a date (2026-11-20) or a date and time "
            "(2026-11-20T10:00:00Z)"
        ) from None


def explain_contact(
    *,
    session: Session,
    contact: Contact,
    rule: str | None = None,
    since: datetime | None = None,
    until: datetime | None = None,
    purposes: Sequence[str] = ("marketing",),
    limit: int = DEFAULT_LIMIT,
) -> Timeline:
    """Build ``contact``'s timeline.

    Parameters:
        rule: only this rule's decisions (and the events that had one).
        since, until: only what happened in ``[since, until)``.
        purposes: purposes whose consent is shown even without a record (transactional
            needs none and is left out).
        limit: at most this many entries, the most recent.
    """
    assert contact.id is not None
    decisions = _decisions(session, contact.id, rule, since, until)
    shown = _events(session, contact.id, since, until) if rule is None else {}
    events = dict(shown)
    missing = {d.event_id for d in decisions if d.event_id and d.event_id not in events}
    if missing:  # events outside the range (or of no interest) that decisions refer to
        rows = session.exec(select(Event).where(col(Event.id).in_(sorted(missing))))
        events.update({row.id: row for row in rows if row.id is not None})
    notifications = _notifications(session, [d.notification_id for d in decisions])
    entries = _entries(decisions, events, notifications, shown=set(shown))
    truncated = len(entries) > limit
    return Timeline(
        contact=_summary(session, contact, purposes),
        entries=entries[-limit:] if truncated else entries,
        rule=rule,
        since=since,
        until=until,
        truncated=truncated,
    )


def _decisions(
    session: Session,
    contact_id: int,
    rule: str | None,
    since: datetime | None,
    until: datetime | None,
) -> list[Decision]:
    query = select(Decision).where(Decision.contact_id == contact_id)
    if rule is not None:
        query = query.where(Decision.rule == rule)
    if since is not None:
        query = query.where(col(Decision.at) >= since)
    if until is not None:
        query = query.where(col(Decision.at) < until)
    return list(session.exec(query.order_by(col(Decision.at), col(Decision.id))))


def _events(
    session: Session, contact_id: int, since: datetime | None, until: datetime | None
) -> dict[int, Event]:
    query = select(Event).where(Event.contact_id == contact_id)
    if since is not None:
        query = query.where(col(Event.received_at) >= since)
    if until is not None:
        query = query.where(col(Event.received_at) < until)
    return {row.id: row for row in session.exec(query) if row.id is not None}


def _notifications(session: Session, ids: Sequence[int | None]) -> dict[int, NotificationSummary]:
    wanted = sorted({i for i in ids if i is not None})
    if not wanted:
        return {}
    history: dict[int, list[StatusChange]] = {}
    changes = session.exec(
        select(NotificationStatusChange)
        .where(col(NotificationStatusChange.notification_id).in_(wanted))
        .order_by(col(NotificationStatusChange.id))
    )
    for change in changes:
        history.setdefault(change.notification_id, []).append(
            StatusChange(change.status, change.at, change.detail)
        )
    found = {}
    for row in session.exec(select(Notification).where(col(Notification.id).in_(wanted))):
        assert row.id is not None
        found[row.id] = NotificationSummary(
            id=row.id,
            status=str(row.status),
            template=row.template,
            purpose=row.purpose,
            created_at=row.created_at,
            sent_at=row.sent_at,
            history=history.get(row.id, []),
        )
    return found


def _event_summary(row: Event) -> EventSummary:
    assert row.id is not None
    return EventSummary(row.id, row.type, row.name, row.message_id, row.timestamp, row.received_at)


def _entries(
    decisions: Sequence[Decision],
    events: dict[int, Event],
    notifications: dict[int, NotificationSummary],
    *,
    shown: set[int],
) -> list[TimelineEntry]:
    """Entries for the events in ``shown`` (even without decisions) and for every decision:
    under its event when taken as it arrived, else on its own at its own time."""
    by_event: dict[int, TimelineEntry] = {}
    for event_id in shown:
        row = events[event_id]
        by_event[event_id] = TimelineEntry(row.received_at, "event", _event_summary(row))
    later: list[TimelineEntry] = []
    for decision in decisions:
        assert decision.id is not None
        entry = DecisionEntry(
            id=decision.id,
            at=decision.at,
            rule=decision.rule,
            outcome=str(decision.outcome),
            reason=decision.reason,
            details=dict(decision.details or {}),
            event_id=decision.event_id,
            notification=notifications.get(decision.notification_id or -1),
        )
        event = events.get(decision.event_id or -1)
        if event is not None and abs(decision.at - event.received_at) <= SAME_MOMENT:
            group = by_event.get(event.id or -1)
            if group is None:
                group = TimelineEntry(event.received_at, "event", _event_summary(event))
                by_event[event.id or -1] = group
            group.decisions.append(entry)
            continue
        kind = "delivery" if decision.reason.startswith("cancelled at delivery") else "scheduler"
        previous = later[-1] if later else None
        if (
            previous is not None
            and previous.kind == kind
            and previous.event == (_event_summary(event) if event else None)
            and abs(decision.at - previous.at) <= timedelta(seconds=1)
        ):
            previous.decisions.append(entry)
        else:
            later.append(
                TimelineEntry(decision.at, kind, _event_summary(event) if event else None, [entry])
            )
    return sorted([*by_event.values(), *later], key=lambda e: (e.at, e.kind != "event"))


def _summary(session: Session, contact: Contact, purposes: Sequence[str]) -> ContactSummary:
    assert contact.id is not None
    latest: dict[str, ConsentRecord] = {}
    records = session.exec(
        select(ConsentRecord)
        .where(ConsentRecord.contact_id == contact.id)
        .order_by(col(ConsentRecord.id))
    )
    for record in records:
        latest[record.purpose] = record
    shown = [p for p in dict.fromkeys([*purposes, *latest]) if p != "transactional"]
    consent = [
        ConsentState(p, r.granted, r.recorded_at, r.source, r.id)
        if (r := latest.get(p)) is not None
        else ConsentState(p, None)
        for p in shown
    ]
    digest = address_hash_or_none(contact.email)
    entries = (
        session.exec(
            select(Suppression)
            .where(Suppression.address_hash == digest)
            .order_by(col(Suppression.id))
        ).all()
        if digest
        else []
    )
    suppressions = [
        SuppressionState(s.id or 0, s.purpose, s.reason, s.created_by, s.created_at)
        for s in entries
    ]
    return ContactSummary(
        contact.id, contact.email, contact.user_id, contact.timezone, consent, suppressions
    )
