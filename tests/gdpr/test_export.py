"""Export (GDPR Art. 15): everything held on the person, and nothing on anyone else."""

from __future__ import annotations

import json

from sqlmodel import Session, select

from crm_notify.contacts.models import Contact
from crm_notify.db import session_scope
from crm_notify.gdpr import export_contact
from crm_notify.outbox.models import Notification
from crm_notify.webhooks.events import EventType, TrackingEvent
from crm_notify.webhooks.ingest import record_tracking_events
from tests.gdpr.conftest import EMAIL, NAME, USER_ID, World, build_alice


def test_export_holds_every_kind_of_data_on_the_person(world: World) -> None:
    # Given Alice's history (and Bob's)
    build_alice(world)
    alice = world.contact()
    # When exported
    with Session(world.engine) as session:
        data = export_contact(session=session, contact=session.get(Contact, alice.id))
    # Then it is plain JSON
    text = json.dumps(data)
    assert "bob" not in text.lower()
    # with the contact row and every event, the anonymous one before sign-up included
    assert data["contact"]["user_id"] == USER_ID
    assert data["contact"]["traits"]["name"] == NAME
    assert {e["message_id"] for e in data["events"]} == {
        "m-view",
        "m-identify",
        "m-order",
        "m-shipped",
        "m-cart",
        "m-shared",  # another contact's event that names her address
    }
    identify = next(e for e in data["events"] if e["message_id"] == "m-identify")
    assert identify["payload"]["traits"]["email"] == EMAIL
    # orders, carts and timers
    assert [o["order_id"] for o in data["orders"]] == ["SO-1"]
    assert [c["cart_id"] for c in data["carts"]] == ["C-1"]
    assert data["timers"] and all(t["rule"] == "abandoned-cart" for t in data["timers"])
    # notifications with the rendered message, context and status history
    shipped = next(n for n in data["notifications"] if n["rule"] == "order-shipped")
    assert NAME in shipped["message"] and shipped["subject"]
    assert shipped["context"]["contact"]["email"] == alice.email
    assert [s["status"] for s in shipped["status_history"]][-1] == "sent"
    # decisions, consent and suppression entries for her address
    assert {d["rule"] for d in data["decisions"]} >= {"welcome", "order-shipped"}
    assert [(c["purpose"], c["granted"], c["ip"]) for c in data["consent_records"]] == [
        ("marketing", True, "203.0.113.7")
    ]
    assert [(s["purpose"], s["reason"]) for s in data["suppressions"]] == [
        ("marketing", "complaint")
    ]
    assert isinstance(data["exported_at"], str)


def test_export_holds_the_tracking_events_about_her_mail(world: World) -> None:
    build_alice(world)
    alice = world.contact()
    with session_scope(world.engine) as session:
        shipped = session.exec(
            select(Notification).where(Notification.rule == "order-shipped")
        ).one()
        record_tracking_events(
            session=session,
            provider="postmark",
            events=[
                TrackingEvent(
                    event_type=EventType.DELIVERED,
                    provider_event_type="Delivery",
                    notification_id=shipped.id,
                    event_id="e-1",
                ),
                TrackingEvent(
                    event_type=EventType.BOUNCED,
                    provider_event_type="SoftBounce",
                    recipient=EMAIL,
                    event_id="e-2",
                ),
                TrackingEvent(
                    event_type=EventType.OPENED,
                    provider_event_type="Open",
                    recipient="bob@example.com",
                    event_id="e-3",
                ),
            ],
        )
    with Session(world.engine) as session:
        data = export_contact(session=session, contact=session.get(Contact, alice.id))
    assert [e["provider_event_type"] for e in data["tracking_events"]] == ["Delivery", "SoftBounce"]
