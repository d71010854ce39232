"""The explain timeline: events with their decisions, later decisions at their own time."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from crm_notify.contacts.models import Contact
from crm_notify.db import session_scope
from crm_notify.events.models import Event
from crm_notify.explain import explain_contact, parse_moment
from crm_notify.explain_text import format_timeline
from crm_notify.guards.models import ConsentRecord
from crm_notify.guards.suppression import suppress
from crm_notify.outbox.models import Decision, Notification, NotificationStatusChange

T0 = datetime(2026, 11, 20, 10, 0, 1, tzinfo=UTC)


def seed_history(engine: Engine) -> int:
    """Alice: marketing consent, an order update (one send, one skip), a quiet-hours deferral
    by the scheduler, a send the scheduler took later for the event, and Bob's decisions."""
    with session_scope(engine) as session:
        alice = Contact(email="alice@example.com", user_id="u1", timezone="Europe/Warsaw")
        bob = Contact(email="bob@example.com", user_id="u2")
        session.add_all([alice, bob])
        session.flush()
        session.add(
            ConsentRecord(
                contact_id=alice.id,
                purpose="marketing",
                granted=True,
                source="segment",
                recorded_at=datetime(2026, 11, 1, 10, 0, tzinfo=UTC),
            )
        )
        event = Event(
            message_id="msg-1",
            type="track",
            name="Order Updated",
            contact_id=alice.id,
            timestamp=T0,
            received_at=T0,
        )
        quiet = Event(
            message_id="msg-2", type="identify", contact_id=alice.id, received_at=T0 + timedelta(1)
        )
        session.add_all([event, quiet])
        session.flush()
        shipped = Notification(
            idempotency_key="k1",
            rule="order-shipped",
            template="order_shipped",
            purpose="transactional",
            contact_id=alice.id,
            event_id=event.id,
            to_address="alice@example.com",
            status="sent",
            created_at=T0,
            sent_at=T0 + timedelta(seconds=2),
        )
        session.add(shipped)
        session.flush()
        for status, seconds in (("pending", 0), ("queued", 1), ("sending", 1), ("sent", 2)):
            session.add(
                NotificationStatusChange(
                    notification_id=shipped.id, status=status, at=T0 + timedelta(seconds=seconds)
                )
            )
        session.add_all(
            [
                Decision(
                    event_id=event.id,
                    contact_id=alice.id,
                    rule="order-shipped",
                    outcome="send",
                    reason="rule matched",
                    notification_id=shipped.id,
                    at=T0,
                ),
                Decision(
                    event_id=event.id,
                    contact_id=alice.id,
                    rule="abandoned-cart",
                    outcome="skip",
                    reason="limit 1 per 7d reached",
                    details={"limit": "1/7d", "count": 1},
                    at=T0,
                ),
                Decision(
                    event_id=None,
                    contact_id=alice.id,
                    rule="abandoned-cart",
                    outcome="defer",
                    reason="quiet hours until 08:00 Europe/Warsaw",
                    at=datetime(2026, 11, 20, 23, 10, tzinfo=UTC),
                ),
                Decision(
                    event_id=event.id,
                    contact_id=alice.id,
                    rule="review-request",
                    outcome="skip",
                    reason="condition false: order.total > 100",
                    at=T0 + timedelta(days=3),
                ),
                Decision(
                    contact_id=bob.id,
                    rule="order-shipped",
                    outcome="skip",
                    reason="bob's decision",
                    at=T0,
                ),
            ]
        )
        assert alice.id is not None
        return alice.id


def _timeline(engine: Engine, **options: Any) -> tuple[str, dict[str, Any]]:
    with Session(engine) as session:
        alice = session.exec(select(Contact).where(Contact.user_id == "u1")).one()
        timeline = explain_contact(
            session=session, contact=alice, purposes=("marketing", "newsletter"), **options
        )
        return format_timeline(timeline), timeline.to_json()


def test_timeline_groups_decisions_under_events_and_later_ones_at_their_time(
    engine: Engine,
) -> None:
    # Given Alice's history
    seed_history(engine)
    # When explained
    text, data = _timeline(engine)
    # Then the text reads as a timeline
    assert text.splitlines() == [
        "alice@example.com (contact 1, user u1, time zone Europe/Warsaw)",
        "consent: marketing granted 2026-11-01 10:00 UTC (segment) · newsletter: none",
        "suppression: none",
        "",
        '2026-11-20 10:00:01 UTC  track "Order Updated" (msg-1)',
        "  order-shipped  send   rule matched → notification 1: sent 10:00:03",
        "  abandoned-cart skip   limit 1 per 7d reached",
        "                        count=1 limit=1/7d",
        "2026-11-20 23:10:00 UTC  scheduler",
        "  abandoned-cart defer  quiet hours until 08:00 Europe/Warsaw",
        "2026-11-21 10:00:01 UTC  identify (msg-2)",
        "  no rule triggered",
        '2026-11-23 10:00:01 UTC  scheduler (for track "Order Updated" (msg-1))',
        "  review-request skip   condition false: order.total > 100",
    ]
    # And the JSON holds the same, with the notification's history; nothing of Bob's
    assert "bob" not in json.dumps(data)
    entries = data["entries"]
    assert isinstance(entries, list)
    first = entries[0]
    assert first["event"]["message_id"] == "msg-1"
    sent = first["decisions"][0]["notification"]
    assert [h["status"] for h in sent["history"]] == ["pending", "queued", "sending", "sent"]
    assert first["decisions"][1]["details"] == {"limit": "1/7d", "count": 1}
    assert entries[1]["kind"] == "scheduler" and entries[1]["event"] is None
    assert data["contact"]["consent"][0]["granted"] is True


def test_timeline_filters_by_rule_and_time(engine: Engine) -> None:
    seed_history(engine)
    # Only one rule: events without its decisions are left out
    text, _ = _timeline(engine, rule="abandoned-cart")
    assert "order-shipped" not in text and "identify" not in text
    assert text.count("abandoned-cart") == 2
    # Only a time range
    text, data = _timeline(
        engine,
        since=datetime(2026, 11, 20, 12, 0, tzinfo=UTC),
        until=datetime(2026, 11, 22, tzinfo=UTC),
    )
    assert [e["kind"] for e in data["entries"]] == ["scheduler", "event"]
    # Only the most recent entry
    _, data = _timeline(engine, limit=1)
    assert data["truncated"] is True and len(data["entries"]) == 1


def test_timeline_shows_suppression_and_an_empty_history(engine: Engine) -> None:
    with session_scope(engine) as session:
        session.add(Contact(email="alice@example.com", user_id="u1"))
        suppress(
            session=session,
            email="alice@example.com",
            reason="hard_bounce",
            created_by="esp",
        )
    text, _ = _timeline(engine)
    lines = text.splitlines()
    assert lines[0] == "alice@example.com (contact 1, user u1, no time zone)"
    assert lines[1] == "consent: marketing: none · newsletter: none"
    assert lines[2].startswith("suppression: all mail (hard_bounce, ") and "by esp" in lines[2]
    assert lines[-1] == "nothing recorded"


NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("text", "end_of_day", "expected"),
    [
        ("7d", False, NOW - timedelta(days=7)),
        ("24h", False, NOW - timedelta(hours=24)),
        ("2026-11-01", False, datetime(2026, 11, 1, tzinfo=UTC)),
        ("2026-11-01", True, datetime(2026, 11, 2, tzinfo=UTC)),
        ("2026-11-01T10:30:00Z", False, datetime(2026, 11, 1, 10, 30, tzinfo=UTC)),
        ("2026-11-01T10:30:00+01:00", False, datetime(2026, 11, 1, 9, 30, tzinfo=UTC)),
    ],
)
def test_parse_moment(text: str, end_of_day: bool, expected: datetime) -> None:
    assert parse_moment(text, now=NOW, end_of_day=end_of_day) == expected


def test_parse_moment_refuses_other_text() -> None:
    with pytest.raises(ValueError, match="not a duration"):
        parse_moment("last week", now=NOW)
