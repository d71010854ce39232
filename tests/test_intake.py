"""Intake: events stored once, state kept, rules decided, outbox rows written atomically."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from crm_notify.commerce.models import Order
from crm_notify.contacts.models import Contact
from crm_notify.errors import EventValidationError
from crm_notify.events.models import Event
from crm_notify.events.schemas import SegmentCall, parse_batch, parse_call
from crm_notify.intake import Intake
from crm_notify.outbox.models import Decision, Notification
from crm_notify.rules.loader import load_rules
from tests.support.servers import write_tree

RULES = {
    "shipped.yaml": """
name: order-shipped
trigger:
  order_status: {to: shipped}
when: "order.total is none or order.total >= 0"
template: order_shipped
purpose: transactional
""",
    "big.yaml": """
name: big-order
trigger:
  event: Order Completed
when: "order.total > 100"
template: order_shipped
purpose: transactional
""",
    "promo.yaml": """
name: promo
trigger:
  event: Order Completed
template: order_shipped
purpose: marketing
""",
    "welcome.yaml": """
name: welcome
trigger:
  identify: {first: true}
template: welcome
purpose: transactional
""",
}

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def _call(obj: dict[str, Any]) -> SegmentCall:
    return parse_call(obj, type_hint=None, received_at=NOW)


def _identify(user: str, email: str, message_id: str = "", **traits: Any) -> SegmentCall:
    return _call(
        {
            "type": "identify",
            "userId": user,
            "messageId": message_id or f"id-{user}-{email}",
            "traits": {"email": email, **traits},
            "timestamp": "2026-11-20T10:00:00Z",
        }
    )


def _track(user: str, event: str, message_id: str, ts: str, **properties: Any) -> SegmentCall:
    return _call(
        {
            "type": "track",
            "userId": user,
            "event": event,
            "messageId": message_id,
            "properties": properties,
            "timestamp": ts,
        }
    )


@pytest.fixture
def intake(engine: Engine, tmp_path: Path) -> Intake:
    write_tree(tmp_path / "rules", RULES)
    return Intake(engine=engine, rules=load_rules(tmp_path / "rules"))


def _rows(engine: Engine, model: Any) -> list[Any]:
    with Session(engine) as session:
        return list(session.exec(select(model).order_by(col(model.id))))


def test_identify_creates_a_contact_with_normalised_email_and_welcome(
    intake: Intake, engine: Engine
) -> None:
    # Given a first identify with a mixed-case domain and traits
    call = _identify("u1", "Alice@EXAMPLE.com", language="de-AT", timezone="Europe/Vienna")
    # When it is ingested
    result = intake.ingest([call])
    # Then one contact exists with the normalised address and traits
    (contact,) = _rows(engine, Contact)
    assert contact.email == "Alice@example.com"
    assert (contact.language, contact.timezone) == ("de-AT", "Europe/Vienna")
    # And the welcome rule produced exactly one pending notification with its decision
    (notification,) = _rows(engine, Notification)
    assert result.notification_ids == [notification.id]
    assert (notification.rule, notification.to_address, notification.status) == (
        "welcome",
        "Alice@example.com",
        "pending",
    )
    (decision,) = _rows(engine, Decision)
    assert (decision.outcome, decision.notification_id) == ("send", notification.id)


def test_repeated_message_id_is_acknowledged_and_ignored(intake: Intake, engine: Engine) -> None:
    # Given an identify already ingested
    call = _identify("u1", "alice@example.com")
    intake.ingest([call])
    # When the same messageId arrives again (a client retry)
    result = intake.ingest([call])
    # Then nothing new is written
    assert (result.accepted, result.duplicates) == (0, 1)
    assert len(_rows(engine, Event)) == 1
    assert len(_rows(engine, Notification)) == 1


def test_second_identify_updates_without_welcome(intake: Intake, engine: Engine) -> None:
    intake.ingest([_identify("u1", "alice@example.com", "m1")])
    intake.ingest([_identify("u1", "alice@example.com", "m2", first_name="Alice")])
    (contact,) = _rows(engine, Contact)
    assert contact.traits["first_name"] == "Alice"
    assert len(_rows(engine, Notification)) == 1


def test_order_status_change_to_shipped_triggers_once(intake: Intake, engine: Engine) -> None:
    # Given a known contact and an order placed
    intake.ingest([_identify("u1", "alice@example.com")])
    intake.ingest(
        [_track("u1", "Order Completed", "o-1", "2026-11-20T10:01:00Z", order_id="A1", total=20)]
    )
    # When the order is updated to shipped, and the same status is sent again later
    intake.ingest(
        [
            _track(
                "u1",
                "Order Updated",
                "o-2",
                "2026-11-20T11:00:00Z",
                order_id="A1",
                status="shipped",
                tracking_number="TN1",
            )
        ]
    )
    intake.ingest(
        [
            _track(
                "u1",
                "Order Updated",
                "o-3",
                "2026-11-20T11:30:00Z",
                order_id="A1",
                status="shipped",
            )
        ]
    )
    # Then exactly one order-shipped notification exists, with the order in its context
    shipped = [n for n in _rows(engine, Notification) if n.rule == "order-shipped"]
    assert len(shipped) == 1
    assert shipped[0].context["order"]["tracking_number"] == "TN1"
    (order,) = _rows(engine, Order)
    assert (order.status, order.previous_status) == ("shipped", "completed")


def test_late_event_does_not_roll_an_order_back(intake: Intake, engine: Engine) -> None:
    # Given an order already shipped
    intake.ingest([_identify("u1", "alice@example.com")])
    intake.ingest(
        [
            _track(
                "u1",
                "Order Updated",
                "o-2",
                "2026-11-20T11:00:00Z",
                order_id="A1",
                status="shipped",
            )
        ]
    )
    # When an older "processing" update arrives late
    intake.ingest(
        [
            _track(
                "u1",
                "Order Updated",
                "o-1",
                "2026-11-20T09:00:00Z",
                order_id="A1",
                status="processing",
            )
        ]
    )
    # Then the order stays shipped and the event is still stored
    (order,) = _rows(engine, Order)
    assert order.status == "shipped"
    assert {e.message_id for e in _rows(engine, Event)} >= {"o-1", "o-2"}


def test_skips_are_recorded_with_their_reason(intake: Intake, engine: Engine) -> None:
    # Given a contact
    intake.ingest([_identify("u1", "alice@example.com")])
    # When a small order completes (big-order's condition fails; promo is marketing)
    intake.ingest(
        [_track("u1", "Order Completed", "o-1", "2026-11-20T10:01:00Z", order_id="A1", total=20)]
    )
    # Then both rules have a skip decision saying why, and no notification
    reasons = {d.rule: (d.outcome, d.reason) for d in _rows(engine, Decision)}
    assert reasons["big-order"] == ("skip", "condition not met: order.total > 100")
    assert reasons["promo"][0] == "skip" and "marketing consent" in reasons["promo"][1]
    assert [n.rule for n in _rows(engine, Notification)] == ["welcome"]


def test_event_for_a_contact_without_email_is_skipped(intake: Intake, engine: Engine) -> None:
    intake.ingest(
        [_track("anon", "Order Completed", "o-1", "2026-11-20T10:01:00Z", order_id="A", total=500)]
    )
    (decision,) = [d for d in _rows(engine, Decision) if d.rule == "big-order"]
    assert decision.reason == "no email address known for this contact"


def test_invalid_email_in_a_batch_writes_nothing(intake: Intake, engine: Engine) -> None:
    # Given a batch whose third call has an invalid address
    calls = parse_batch(
        {
            "batch": [
                {"type": "identify", "userId": "u1", "traits": {"email": "a@example.com"}},
                {
                    "type": "track",
                    "userId": "u1",
                    "event": "Order Completed",
                    "properties": {"order_id": "A1"},
                },
                {"type": "identify", "userId": "u2", "traits": {"email": "not an address"}},
            ]
        },
        received_at=NOW,
    )
    # When ingested, Then the error names the field and no row was written
    with pytest.raises(EventValidationError) as excinfo:
        intake.ingest(calls)
    assert excinfo.value.field == "batch[2].traits.email"
    for model in (Event, Contact, Order, Notification, Decision):
        assert _rows(engine, model) == []


def test_email_owned_by_another_user_is_rejected(intake: Intake, engine: Engine) -> None:
    intake.ingest([_identify("u1", "alice@example.com")])
    with pytest.raises(EventValidationError) as excinfo:
        intake.ingest([_identify("u2", "alice@example.com")])
    assert excinfo.value.field == "traits.email"
    assert len(_rows(engine, Contact)) == 1
