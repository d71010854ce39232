"""A rich contact for the GDPR tests: built through the real intake and delivery."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from crm_notify.contacts.models import Contact
from crm_notify.db import session_scope
from crm_notify.esp import adapter_from_url
from crm_notify.events.models import Event
from crm_notify.events.schemas import SegmentCall, parse_call
from crm_notify.guards.models import ConsentRecord
from crm_notify.guards.policy import SendPolicy
from crm_notify.guards.suppression import SuppressionGuard, suppress
from crm_notify.intake import Intake
from crm_notify.outbox.delivery import DeliveryService
from crm_notify.outbox.models import Notification
from crm_notify.render.templates import TemplateStore
from crm_notify.rules.loader import load_rules
from tests.conftest import ROOT

#: Alice's identifiers, as the shop sends them (mixed case on purpose).
EMAIL = "Alice.Liddell@Example.com"
NAME = "Alice Liddell"
USER_ID = "u-alice-7"
ANONYMOUS_ID = "anon-alice-1"


def call(obj: dict[str, Any]) -> SegmentCall:
    """A Segment call as the API would parse it."""
    return parse_call(obj, type_hint=None, received_at=datetime.now(UTC))


@dataclass
class World:
    """The pipeline the tests drive."""

    engine: Engine
    intake: Intake
    delivery: DeliveryService

    def deliver_all(self) -> None:
        with Session(self.engine) as session:
            ids = session.exec(select(Notification.id).order_by(col(Notification.id))).all()
        for notification_id in ids:
            assert notification_id is not None
            self.delivery.deliver(notification_id)

    def contact(self, user_id: str = USER_ID) -> Contact:
        with Session(self.engine) as session:
            found = session.exec(select(Contact).where(Contact.user_id == user_id)).one()
            session.expunge(found)
            return found


def make_world(engine: Engine, outbox: Path) -> World:
    """The real intake (suppression guard only) and delivery to files in ``outbox``."""
    templates = TemplateStore(ROOT / "templates")
    rules = load_rules(ROOT / "rules", template_exists=templates.exists)
    delivery = DeliveryService(
        engine=engine,
        templates=templates,
        adapter=adapter_from_url(f"file://{outbox}"),
        mail_from="Shop <orders@shop.example>",
        max_attempts=3,
    )
    policy = SendPolicy(guards=(SuppressionGuard(),))
    return World(engine, Intake(engine=engine, rules=rules, policy=policy), delivery)


@pytest.fixture
def world(engine: Engine, tmp_path: Path) -> World:
    return make_world(engine, tmp_path / "outbox")


def build_alice(world: World) -> None:
    """Alice browses anonymously, signs up, orders, gets a shipped email, fills a cart,
    consents, and is suppressed for marketing by hand; Bob, another customer, too."""
    world.intake.ingest(
        [
            call(
                {
                    "type": "track",
                    "anonymousId": ANONYMOUS_ID,
                    "event": "Product Viewed",
                    "messageId": "m-view",
                    "properties": {"product_id": "P1", "note": f"viewed by {NAME}"},
                }
            ),
            call(
                {
                    "type": "identify",
                    "userId": USER_ID,
                    "anonymousId": ANONYMOUS_ID,
                    "messageId": "m-identify",
                    "traits": {
                        "email": EMAIL,
                        "name": NAME,
                        "first_name": "Alice",
                        "last_name": "Liddell",
                        "address": {"city": "Oxford", "country": "GB"},
                    },
                    "context": {"ip": "203.0.113.7"},
                }
            ),
            call(
                {
                    "type": "track",
                    "userId": USER_ID,
                    "event": "Order Completed",
                    "messageId": "m-order",
                    "properties": {
                        "order_id": "SO-1",
                        "total": 42.5,
                        "shipping_name": NAME,
                        "contact_email": EMAIL.upper(),
                    },
                }
            ),
            call(
                {
                    "type": "track",
                    "userId": USER_ID,
                    "event": "Order Updated",
                    "messageId": "m-shipped",
                    "properties": {"order_id": "SO-1", "status": "shipped"},
                }
            ),
            call(
                {
                    "type": "track",
                    "userId": USER_ID,
                    "event": "Product Added",
                    "messageId": "m-cart",
                    "properties": {"cart_id": "C-1", "product_id": "P2", "name": f"Mug for {NAME}"},
                }
            ),
            call(
                {
                    "type": "identify",
                    "userId": "u-bob",
                    "messageId": "m-bob",
                    "traits": {"email": "bob@example.com", "name": "Bob Stone"},
                }
            ),
        ]
    )
    world.deliver_all()
    alice = world.contact()
    with session_scope(world.engine) as session:
        identify = session.exec(select(Event).where(Event.message_id == "m-identify")).one()
        shipped = session.exec(
            select(Notification).where(Notification.rule == "order-shipped")
        ).one()
        session.add(
            ConsentRecord(
                contact_id=alice.id,
                purpose="marketing",
                granted=True,
                source="api",
                ip="203.0.113.7",
                user_agent="Mozilla/5.0",
                actor=f"support for {NAME}",
                event_id=identify.id,
                notification_id=shipped.id,
            )
        )
        suppress(
            session=session,
            email=EMAIL,
            reason="complaint",
            purpose="marketing",
            created_by="ops",
            detail=f"{NAME} <{EMAIL}> complained by phone",
        )
        # Another contact (a shared device) once had her address; its traits still hold it.
        other = Contact(anonymous_id="anon-shared", traits={"email": EMAIL.lower(), "plan": "free"})
        session.add(other)
        session.flush()
        session.add(
            Event(
                message_id="m-shared",
                type="identify",
                anonymous_id="anon-shared",
                contact_id=other.id,
                payload={"traits": {"email": EMAIL.lower()}},
            )
        )
