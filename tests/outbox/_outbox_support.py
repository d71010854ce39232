"""Shared by the dead-letter and ``crm-notify outbox`` tests: a SendGrid stand-in on loopback,
settings pointing at it, a notification to deliver, and a clock-driven retry loop."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from freezegun.api import FrozenDateTimeFactory, StepTickTimeFactory
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from crm_notify.config import Settings
from crm_notify.contacts.models import Contact
from crm_notify.db import make_engine
from crm_notify.migrations import upgrade
from crm_notify.outbox import repository
from crm_notify.outbox.delivery import DeliveryService
from crm_notify.outbox.models import Notification, NotificationStatusChange
from tests.esp._api_server import ApiServer

#: The API key the stand-in expects.
KEY = "SG.dead-letter-test"


def sendgrid_settings(
    make_settings: Callable[..., Settings], api: ApiServer, **overrides: Any
) -> Settings:
    """Settings sending through SendGrid at ``api``, on a migrated database.

    The failover circuit breaker is kept out of the way (a very high threshold): with it, a
    lone failing ESP is skipped between trial sends, so fewer requests reach the stand-in.
    """
    values: dict[str, Any] = {
        "esp_url": f"sendgrid://{KEY}@{api.netloc}?insecure=1&timeout=5",
        "mail_from": "Shop <shop@example.com>",
        "esp_failover_threshold": 1_000_000,
    }
    settings = make_settings(**{**values, **overrides})
    engine = make_engine(settings.database_url)
    upgrade(engine)
    engine.dispose()
    return settings


def add_notification(
    engine: Engine,
    *,
    key: str = "k1",
    email: str = "alice@example.com",
    rule: str = "order-shipped",
) -> int:
    """A contact and a transactional ``order_shipped`` notification to them; its id."""
    with Session(engine) as session:
        contact = session.exec(select(Contact).where(Contact.email == email)).first()
        if contact is None:
            contact = Contact(email=email, user_id=f"u-{key}")
            session.add(contact)
            session.flush()
        notification = Notification(
            idempotency_key=key,
            rule=rule,
            template="order_shipped",
            purpose="transactional",
            contact_id=contact.id,
            to_address=email,
            context={"contact": {"first_name": "Alice"}, "order": {"order_id": "A1"}},
        )
        assert repository.create_notification(
            session=session, notification=notification, reason="test"
        )
        session.commit()
        assert notification.id is not None
        return notification.id


def row(engine: Engine, notification_id: int) -> Notification:
    """The notification as stored now."""
    with Session(engine) as session:
        found = session.get(Notification, notification_id)
        assert found is not None
        session.expunge(found)
        return found


def history(engine: Engine, notification_id: int) -> list[tuple[str, str | None]]:
    """The status history: (status, detail), oldest first."""
    with Session(engine) as session:
        rows = session.exec(
            select(NotificationStatusChange)
            .where(NotificationStatusChange.notification_id == notification_id)
            .order_by(col(NotificationStatusChange.id))
        )
        return [(r.status, r.detail) for r in rows]


def deliver_until_done(
    delivery: DeliveryService,
    notification_id: int,
    clock: FrozenDateTimeFactory | StepTickTimeFactory,
    *,
    max_rounds: int = 200,
) -> list[str]:
    """Deliver, and while it is retrying jump the frozen clock to the retry and deliver again.

    Returns:
        The outcome of each attempt (``retrying`` ..., then the final one).
    """
    outcomes: list[str] = []
    for _ in range(max_rounds):
        outcome = delivery.deliver(notification_id)
        outcomes.append(outcome.status)
        if outcome.status != "retrying":
            return outcomes
        assert outcome.retry_in is not None
        clock.tick(outcome.retry_in)
    raise AssertionError(f"still retrying after {max_rounds} attempts")


def message_ids(api: ApiServer) -> list[str]:
    """The Message-ID header of every request the SendGrid stand-in received."""
    return [request.json["headers"]["Message-ID"] for request in api.requests]
