"""Storing tracking events, whatever the provider: hostile values, erased people, unmatched
unsubscribes, repeats inside a batch and concurrent replays (SQLite and PostgreSQL)."""

from __future__ import annotations

import threading

from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from crm_notify.contacts.models import Contact
from crm_notify.db import session_scope
from crm_notify.gdpr import erase_contact
from crm_notify.guards.models import ConsentRecord, Suppression
from crm_notify.outbox.models import Notification, NotificationStatus
from crm_notify.webhooks.events import BounceKind, EventType, TrackingEvent
from crm_notify.webhooks.ingest import record_tracking_events
from crm_notify.webhooks.models import TrackingEventRecord


def _sent(engine: Engine, n: int = 1, *, email: str = "alice@example.com") -> list[int]:
    with session_scope(engine) as session:
        contact = Contact(email=email, user_id=f"u-{email}")
        session.add(contact)
        session.flush()
        rows = [
            Notification(
                idempotency_key=f"{email}-{i}",
                rule="promo",
                template="t",
                purpose="marketing",
                to_address=email,
                contact_id=contact.id,
                status=NotificationStatus.SENT,
                esp="sendgrid",
                esp_message_id=f"sg-{email}-{i}",
            )
            for i in range(n)
        ]
        session.add_all(rows)
        session.flush()
        return [row.id for row in rows if row.id is not None]


def _event(
    event_id: str, event_type: EventType = EventType.OPENED, **fields: object
) -> TrackingEvent:
    values: dict[str, object] = {
        "provider_event_type": event_type.value,
        "recipient": "alice@example.com",
        "provider_message_id": "sg-alice@example.com-0",
    }
    values.update(fields)
    return TrackingEvent(event_type=event_type, event_id=event_id, **values)  # type: ignore[arg-type]


def _record(
    engine: Engine, events: list[TrackingEvent], purposes: tuple[str, ...] = ("marketing",)
):  # type: ignore[no-untyped-def]
    with session_scope(engine) as session:
        return record_tracking_events(
            session=session, provider="sendgrid", events=events, purposes=purposes
        )


def _stored(engine: Engine) -> list[TrackingEventRecord]:
    with Session(engine) as session:
        return list(session.exec(select(TrackingEventRecord).order_by(TrackingEventRecord.id)))


def test_nul_characters_and_overlong_ids_are_stored_not_refused(engine: Engine) -> None:
    _sent(engine)
    summary = _record(
        engine,
        [
            _event(
                "e\x00-1",
                EventType.BOUNCED,
                bounce_kind=BounceKind.SOFT,
                description="550 mailbox\x00 full",
                payload={"reason": "bad\x00 byte", "nested": ["\x00"]},
            ),
            _event("e-2", provider_message_id="x" * 600),
        ],
    )
    assert (summary.stored, summary.duplicates) == (2, 0)
    first, second = _stored(engine)
    assert first.description == "550 mailbox full" and first.payload["reason"] == "bad byte"
    assert first.event_key == "sendgrid:e-1"
    assert second.provider_message_id == "x" * 255 and second.notification_id is None


def test_a_repeat_inside_one_batch_is_a_duplicate(engine: Engine) -> None:
    _sent(engine)
    summary = _record(engine, [_event("same"), _event("same"), _event("other")])
    assert (summary.received, summary.stored, summary.duplicates) == (3, 2, 1)


def test_concurrent_replays_of_a_batch_store_each_event_once(engine: Engine) -> None:
    _sent(engine, 50)
    batch = [_event(f"e-{i}", provider_message_id=f"sg-alice@example.com-{i}") for i in range(50)]
    results = []
    barrier = threading.Barrier(3)

    def post() -> None:
        barrier.wait()
        results.append(_record(engine, batch))

    threads = [threading.Thread(target=post) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(r.stored for r in results) == 50
    assert sum(r.duplicates for r in results) == 100
    assert len(_stored(engine)) == 50
    assert all(row.notification_id is not None for row in _stored(engine))


def test_an_erased_persons_late_complaint_keeps_the_entry_hash_only(engine: Engine) -> None:
    _sent(engine)
    with session_scope(engine) as session:
        contact = session.exec(select(Contact)).one()
        erase_contact(session=session, contact=contact, actor="dpo")
    # When the provider reports a complaint days later
    _record(
        engine,
        [
            _event(
                "late",
                EventType.COMPLAINED,
                provider_message_id=None,
                payload={"email": "alice@example.com"},
            )
        ],
    )
    # Then the erased entry stays as it was: no address in clear, no new reason
    with Session(engine) as session:
        (entry,) = session.exec(select(Suppression)).all()
    assert (entry.reason, entry.email, entry.purpose) == ("erased", None, "*")
    (stored,) = _stored(engine)
    assert stored.payload == {} and stored.description is None
    assert stored.recipient_hash == entry.address_hash


def test_an_unsubscribe_from_mail_that_is_not_ours_changes_no_consent(engine: Engine) -> None:
    _sent(engine)
    summary = _record(
        engine, [_event("u1", EventType.UNSUBSCRIBED, provider_message_id="from-another-tool")]
    )
    assert summary.unmatched == 1
    with Session(engine) as session:
        assert session.exec(select(ConsentRecord)).all() == []


def test_a_hard_bounce_keeps_an_existing_entry_for_every_purpose(engine: Engine) -> None:
    _sent(engine)
    _record(engine, [_event("c", EventType.COMPLAINED)])
    _record(engine, [_event("b", EventType.BOUNCED, bounce_kind=BounceKind.HARD)])
    with Session(engine) as session:
        entries = session.exec(select(Suppression)).all()
    assert [(e.reason, e.purpose, e.created_by) for e in entries] == [
        ("complaint", "*", "sendgrid-webhook")
    ]
