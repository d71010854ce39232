"""Retention purge: old events and old rendered bodies go; links are cut, counts stay."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from freezegun import freeze_time
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from crm_notify.contacts.models import Contact
from crm_notify.db import session_scope
from crm_notify.events.models import Event
from crm_notify.gdpr import purge
from crm_notify.guards.models import ConsentRecord
from crm_notify.outbox.models import Decision, Notification, NotificationStatus
from crm_notify.timers.models import Timer, TimerStatus

OLD = datetime(2025, 1, 10, 12, 0, tzinfo=UTC)
RECENT = datetime(2026, 11, 1, 12, 0, tzinfo=UTC)


def _seed(engine: Engine) -> dict[str, int]:
    with session_scope(engine) as session:
        contact = Contact(email="alice@example.com", user_id="u1")
        session.add(contact)
        session.flush()
        events = {}
        for name, at in (("old", OLD), ("recent", RECENT), ("old-pending", OLD)):
            event = Event(
                message_id=name,
                type="track",
                name="Order Updated",
                contact_id=contact.id,
                timestamp=at,
                received_at=at,
                payload={"properties": {"who": "Alice"}},
            )
            session.add(event)
            session.flush()
            assert event.id is not None
            events[name] = event.id
        notifications = {}
        for name, at, status in (
            ("old-sent", OLD, NotificationStatus.SENT),
            ("old-retrying", OLD, NotificationStatus.RETRYING),
            ("recent-sent", RECENT, NotificationStatus.SENT),
        ):
            notification = Notification(
                idempotency_key=name,
                rule="r",
                template="t",
                purpose="transactional",
                contact_id=contact.id,
                event_id=events["old"],
                to_address="alice@example.com",
                status=status,
                context={"contact": {"first_name": "Alice"}},
                subject="Hello Alice",
                message="To: alice@example.com\n\nHello Alice",
                created_at=at,
            )
            session.add(notification)
            session.flush()
            assert notification.id is not None
            notifications[name] = notification.id
        session.add(
            Decision(
                event_id=events["old"],
                contact_id=contact.id,
                rule="r",
                outcome="send",
                reason="rule matched",
                at=OLD,
            )
        )
        session.add(
            ConsentRecord(
                contact_id=contact.id,
                purpose="marketing",
                granted=True,
                source="api",
                event_id=events["old"],
                recorded_at=OLD,
            )
        )
        session.add(
            Timer(
                key="pending",
                rule="r",
                contact_id=contact.id,
                event_id=events["old-pending"],
                trigger_at=OLD,
                due_at=RECENT + timedelta(days=60),
                status=TimerStatus.PENDING,
            )
        )
        session.add(
            Timer(
                key="fired",
                rule="r",
                contact_id=contact.id,
                event_id=events["old"],
                trigger_at=OLD,
                due_at=OLD,
                status=TimerStatus.FIRED,
            )
        )
    return {**events, **notifications}


@freeze_time("2026-11-20T12:00:00Z")
def test_purge_deletes_old_events_and_clears_old_bodies(engine: Engine) -> None:
    # Given events and notifications from two years ago and from this month
    ids = _seed(engine)
    # When purging what is older than 365 days
    with session_scope(engine) as session:
        report = purge(session=session, older_than=timedelta(days=365))
    # Then the old event is gone (the one a pending timer still needs stays), links are cut
    assert (report.events_deleted, report.notifications_cleared) == (1, 1)
    assert report.cutoff == datetime(2025, 11, 20, 12, 0, tzinfo=UTC)
    with Session(engine) as session:
        assert {e.message_id for e in session.exec(select(Event))} == {"recent", "old-pending"}
        assert [d.event_id for d in session.exec(select(Decision))] == [None]
        assert [c.event_id for c in session.exec(select(ConsentRecord))] == [None]
        timers = {t.key: t.event_id for t in session.exec(select(Timer))}
        assert timers == {"pending": ids["old-pending"], "fired": None}
        old = session.get(Notification, ids["old-sent"])
        assert old is not None
        assert (old.message, old.subject, old.context, old.status, old.event_id) == (
            None,
            None,
            {},
            "sent",
            None,
        )
        # a notification still being delivered keeps what it needs; recent ones are untouched
        for name in ("old-retrying", "recent-sent"):
            kept = session.get(Notification, ids[name])
            assert kept is not None and kept.message and kept.context
    # And purging again finds nothing more
    with session_scope(engine) as session:
        again = purge(session=session, older_than=timedelta(days=365))
    assert (again.events_deleted, again.notifications_cleared) == (0, 0)


def test_purge_refuses_a_non_positive_age(engine: Engine) -> None:
    with session_scope(engine) as session, pytest.raises(ValueError, match="positive"):
        purge(session=session, older_than=timedelta(0))
