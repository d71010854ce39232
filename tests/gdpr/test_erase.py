"""Erasure (GDPR Art. 17): no table holds the person's address, name or ids afterwards."""

from __future__ import annotations

import sqlalchemy as sa
from sqlmodel import Session, SQLModel, select

from crm_notify.commerce.models import Cart, Order
from crm_notify.contacts.models import Contact
from crm_notify.db import import_models, session_scope
from crm_notify.events.models import Event
from crm_notify.gdpr import erase_contact
from crm_notify.gdpr.erase import ERASED_ADDRESS
from crm_notify.guards.models import ConsentRecord, Suppression
from crm_notify.guards.suppression import address_hash, suppressed_for
from crm_notify.outbox.models import Decision, Notification, NotificationStatusChange
from crm_notify.timers.models import Timer
from crm_notify.webhooks.events import EventType, TrackingEvent
from crm_notify.webhooks.ingest import record_tracking_events
from tests.gdpr.conftest import ANONYMOUS_ID, EMAIL, NAME, USER_ID, World, build_alice, call

#: What must not be found anywhere after erasure (compared lower-cased).
TRACES = (EMAIL.lower(), NAME.lower(), "liddell", USER_ID, ANONYMOUS_ID)


def _dump(world: World) -> dict[str, list[str]]:
    """Every row of every table, as lower-cased text, by table."""
    import_models()
    found: dict[str, list[str]] = {}
    with world.engine.connect() as connection:
        for table in SQLModel.metadata.sorted_tables:
            rows = connection.execute(sa.select(table)).all()
            found[table.name] = [str(tuple(row)).lower() for row in rows]
    return found


def _traces(world: World) -> list[tuple[str, str]]:
    return [
        (table, trace)
        for table, rows in _dump(world).items()
        for row in rows
        for trace in TRACES
        if trace in row
    ]


def test_erase_leaves_no_trace_in_any_table(world: World) -> None:
    # Given a contact with events, an order, a cart, a timer, a delivered notification,
    # consent, a suppression entry, and her address in another contact's traits
    build_alice(world)
    alice = world.contact()
    with Session(world.engine) as session:
        assert session.exec(select(Order).where(Order.contact_id == alice.id)).all()
        assert session.exec(select(Cart).where(Cart.contact_id == alice.id)).all()
        assert session.exec(select(Timer).where(Timer.contact_id == alice.id)).all()
        shipped = session.exec(
            select(Notification).where(Notification.rule == "order-shipped")
        ).one()
        assert shipped.status == "sent"
        assert shipped.message is not None and NAME in shipped.message
    # and two tracking events about her mail: one linked to it, one only by her address
    with session_scope(world.engine) as session:
        record_tracking_events(
            session=session,
            provider="sendgrid",
            events=[
                TrackingEvent(
                    event_type=EventType.OPENED,
                    provider_event_type="open",
                    notification_id=shipped.id,
                    event_id="e-open",
                    payload={"email": EMAIL},
                ),
                TrackingEvent(
                    event_type=EventType.DEFERRED,
                    provider_event_type="deferred",
                    recipient=EMAIL.upper(),
                    event_id="e-deferred",
                    payload={"email": EMAIL},
                ),
                TrackingEvent(
                    event_type=EventType.DELIVERED,
                    provider_event_type="delivered",
                    recipient="bob@example.com",
                    event_id="e-bob",
                    payload={"email": "bob@example.com"},
                ),
            ],
        )
    tables_with_traces = {table for table, _ in _traces(world)}
    assert {
        "tracking_event",
        "contact",
        "event",
        "notification",
        "suppression",
        "consent_record",
    } <= tables_with_traces

    # When she is erased
    with session_scope(world.engine) as session:
        report = erase_contact(session=session, contact=session.get(Contact, alice.id), actor="dpo")

    # Then no table holds her address (in any case), name, userId or anonymousId
    assert _traces(world) == []
    assert report.events_deleted == 6  # 5 of hers (one anonymous) + the shared device's
    assert report.orders_deleted == report.carts_deleted == 1
    assert report.timers_deleted >= 1
    assert report.consent_records_deleted == 1
    assert report.tracking_events_deleted == 2  # Bob's stays
    assert report.notifications_anonymised >= 2  # welcome and order-shipped
    assert report.other_contacts_scrubbed == 1
    with Session(world.engine) as session:
        # her notifications are kept for counts, anonymised
        shipped = session.exec(
            select(Notification).where(Notification.rule == "order-shipped")
        ).one()
        assert (shipped.status, shipped.to_address, shipped.contact_id) == (
            "sent",
            ERASED_ADDRESS,
            None,
        )
        assert shipped.message is None and shipped.subject is None and shipped.context == {}
        history = session.exec(
            select(NotificationStatusChange.status).where(
                NotificationStatusChange.notification_id == shipped.id
            )
        ).all()
        assert "sent" in history
        assert not session.exec(select(Decision).where(Decision.contact_id == alice.id)).all()
        assert not session.exec(select(ConsentRecord)).all()
        # one hard entry for her address, by hash only
        entries = session.exec(select(Suppression)).all()
        assert {(e.purpose, e.reason, e.email) for e in entries} == {
            ("*", "erased", None),
            ("marketing", "complaint", None),
        }
        assert {e.address_hash for e in entries} == {address_hash(EMAIL)}
        assert next(e for e in entries if e.purpose == "*").created_by == "dpo"
        # Bob is untouched; the shared device keeps what is not hers
        bob = session.exec(select(Contact).where(Contact.user_id == "u-bob")).one()
        assert bob.email == "bob@example.com"
        assert session.exec(select(Event).where(Event.message_id == "m-bob")).one()
        shared = session.exec(select(Contact).where(Contact.anonymous_id == "anon-shared")).one()
        assert shared.traits == {"plan": "free"}


def test_a_later_import_of_the_address_is_not_mailed(world: World) -> None:
    # Given Alice erased
    build_alice(world)
    alice = world.contact()
    with session_scope(world.engine) as session:
        erase_contact(session=session, contact=session.get(Contact, alice.id), actor="dpo")

    # When a later import identifies her address again (a new contact)
    world.intake.ingest(
        [
            call(
                {
                    "type": "identify",
                    "userId": "u-imported",
                    "messageId": "m-import",
                    "traits": {"email": EMAIL.lower(), "name": NAME},
                }
            )
        ]
    )

    # Then the address is suppressed for every purpose, and the welcome was skipped for it
    imported = world.contact("u-imported")
    with Session(world.engine) as session:
        entry = suppressed_for(session=session, email=EMAIL, purpose="transactional")
        assert entry is not None and entry.reason == "erased"
        assert not session.exec(
            select(Notification).where(Notification.contact_id == imported.id)
        ).all()
        (decision,) = session.exec(
            select(Decision).where(Decision.contact_id == imported.id, Decision.rule == "welcome")
        ).all()
        assert decision.outcome == "skip"
        assert decision.reason.startswith("address suppressed (erased, ")


def test_erasing_a_contact_without_an_address_or_links(world: World) -> None:
    # Given a bare contact
    with session_scope(world.engine) as session:
        bare = Contact(user_id="u-bare")
        session.add(bare)
    # When erased
    with session_scope(world.engine) as session:
        report = erase_contact(session=session, contact=session.get(Contact, bare.id), actor="dpo")
    # Then it is gone and nothing is suppressed (there is no address)
    assert report.suppression_id is None and report.events_deleted == 0
    with Session(world.engine) as session:
        assert session.get(Contact, bare.id) is None
        assert not session.exec(select(Suppression)).all()
