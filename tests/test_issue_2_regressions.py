"""Regressions found while reviewing issue 2 (core pipeline), one test each."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from freezegun import freeze_time
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from crm_notify.commerce.models import Order
from crm_notify.contacts.models import Contact
from crm_notify.errors import EventValidationError
from crm_notify.events._json import loads_strict
from crm_notify.events.schemas import SegmentCall, parse_call
from crm_notify.intake import Intake
from crm_notify.outbox import repository
from crm_notify.outbox.models import Notification
from crm_notify.outbox.relay import Relay
from crm_notify.rules.loader import load_rules
from tests.conftest import ROOT


def _call(obj: dict[str, Any]) -> SegmentCall:
    return parse_call(obj, type_hint=None, received_at=datetime.now(UTC))


@pytest.fixture
def intake(engine: Engine) -> Intake:
    return Intake(engine=engine, rules=load_rules(ROOT / "rules"))


def _notifications(engine: Engine, rule: str | None = None) -> list[Notification]:
    with Session(engine) as session:
        query = select(Notification).order_by(col(Notification.id))
        if rule:
            query = query.where(Notification.rule == rule)
        return list(session.exec(query))


def _contacts(engine: Engine) -> list[Contact]:
    with Session(engine) as session:
        return list(session.exec(select(Contact).order_by(col(Contact.id))))


def test_issue_2_concurrent_shipped_updates_notify_once(intake: Intake, engine: Engine) -> None:
    # Given a paid order of a known customer
    intake.ingest(
        [_call({"type": "identify", "userId": "u", "traits": {"email": "u@example.com"}})]
    )
    intake.ingest(
        [
            _call(
                {
                    "type": "track",
                    "userId": "u",
                    "event": "Order Updated",
                    "properties": {"order_id": "O1", "status": "paid"},
                    "timestamp": "2026-11-20T10:00:00Z",
                }
            )
        ]
    )
    # When four "shipped" updates with different messageIds arrive at the same moment
    barrier = threading.Barrier(4)
    errors: list[BaseException] = []

    def send(n: int) -> None:
        call = _call(
            {
                "type": "track",
                "userId": "u",
                "event": "Order Updated",
                "messageId": f"ship-{n}",
                "timestamp": "2026-11-20T11:00:00Z",
                "properties": {"order_id": "O1", "status": "shipped"},
            }
        )
        barrier.wait()
        try:
            intake.ingest([call])
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=send, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Then all were accepted and exactly one "order shipped" notification exists
    assert errors == []
    assert len(_notifications(engine, "order-shipped")) == 1


def test_issue_2_shared_device_does_not_merge_two_customers(intake: Intake, engine: Engine) -> None:
    # Given a customer identified on a device
    intake.ingest(
        [
            _call(
                {
                    "type": "identify",
                    "userId": "D1",
                    "anonymousId": "dev",
                    "traits": {"email": "d1@example.com"},
                }
            )
        ]
    )
    # When another customer identifies on the same device
    intake.ingest(
        [
            _call(
                {
                    "type": "identify",
                    "userId": "D2",
                    "anonymousId": "dev",
                    "traits": {"email": "d2@example.com", "first_name": "Two"},
                }
            )
        ]
    )
    # Then they are two contacts, each with their own address, and both got their welcome
    by_user = {c.user_id: c.email for c in _contacts(engine)}
    assert by_user == {"D1": "d1@example.com", "D2": "d2@example.com"}
    assert sorted(n.to_address for n in _notifications(engine, "welcome")) == [
        "d1@example.com",
        "d2@example.com",
    ]


def test_issue_2_address_conflicts_are_4xx_or_resolved(intake: Intake, engine: Engine) -> None:
    # Given a known customer and an anonymous visitor
    intake.ingest(
        [_call({"type": "identify", "userId": "A1", "traits": {"email": "a@example.com"}})]
    )
    intake.ingest([_call({"type": "identify", "anonymousId": "an"})])
    # When the visitor claims the customer's address, Then it is refused naming the field
    with pytest.raises(EventValidationError) as excinfo:
        intake.ingest(
            [_call({"type": "identify", "anonymousId": "an", "traits": {"email": "a@example.com"}})]
        )
    assert excinfo.value.field == "traits.email"
    # Given an address first seen on an anonymous contact
    intake.ingest(
        [_call({"type": "identify", "anonymousId": "anB", "traits": {"email": "b@example.com"}})]
    )
    intake.ingest([_call({"type": "identify", "userId": "B2"})])
    # When a known customer identifies with it, Then the address moves to them
    intake.ingest(
        [_call({"type": "identify", "userId": "B2", "traits": {"email": "b@example.com"}})]
    )
    owners = [c.user_id for c in _contacts(engine) if c.email == "b@example.com"]
    assert owners == ["B2"]


def test_issue_2_odd_but_valid_values_do_not_break_state(intake: Intake, engine: Engine) -> None:
    # Given an order event with a very long status and a total that overflows a float
    intake.ingest(
        [_call({"type": "identify", "userId": "u", "traits": {"email": "u@example.com"}})]
    )
    intake.ingest(
        [
            _call(
                {
                    "type": "track",
                    "userId": "u",
                    "event": "Order Updated",
                    "properties": {"order_id": "O2", "status": "s" * 200, "total": "1e999"},
                }
            )
        ]
    )
    # Then it is stored, with no total
    with Session(engine) as session:
        order = session.exec(select(Order).where(Order.order_id == "O2")).one()
    assert order.status == "s" * 200 and order.total is None


def test_issue_2_unicode_line_separator_in_a_name_is_refused(intake: Intake) -> None:
    with pytest.raises(EventValidationError) as excinfo:
        intake.ingest(
            [
                _call(
                    {
                        "type": "identify",
                        "userId": "u",
                        "traits": {"email": "u@example.com", "first_name": "H\u2028X"},
                    }
                )
            ]
        )
    assert excinfo.value.field == "traits.first_name"


@pytest.mark.parametrize(
    ("document", "field"),
    [
        (r'{"userId": "u\u0000x", "event": "X"}', "userId"),
        (r'{"userId": "u", "properties": {"a\u0000": 1}}', "properties"),
        (r'{"userId": "u", "event": "\ud800"}', "event"),
    ],
)
def test_issue_2_nul_and_lone_surrogates_are_refused(document: str, field: str) -> None:
    with pytest.raises(EventValidationError) as excinfo:
        loads_strict(document)
    assert excinfo.value.field == field


def test_issue_2_future_timestamp_cannot_freeze_an_order(intake: Intake, engine: Engine) -> None:
    # Given an event stamped by a wrong clock far in the future
    intake.ingest(
        [_call({"type": "identify", "userId": "u", "traits": {"email": "u@example.com"}})]
    )
    intake.ingest(
        [
            _call(
                {
                    "type": "track",
                    "userId": "u",
                    "event": "Order Updated",
                    "timestamp": "2099-01-01T00:00:00Z",
                    "properties": {"order_id": "O3", "status": "paid"},
                }
            )
        ]
    )
    # When the order ships ten minutes later
    later = (datetime.now(UTC) + timedelta(minutes=10)).isoformat()
    intake.ingest(
        [
            _call(
                {
                    "type": "track",
                    "userId": "u",
                    "event": "Order Updated",
                    "timestamp": later,
                    "properties": {"order_id": "O3", "status": "shipped"},
                }
            )
        ]
    )
    # Then the update applies and the customer is told
    assert len(_notifications(engine, "order-shipped")) == 1


def test_issue_2_relay_does_not_requeue_the_same_rows_every_pass(
    intake: Intake, engine: Engine
) -> None:
    # Given a queued notification whose broker message was lost
    requeued: list[int] = []

    def enqueue(ids: Any) -> None:
        requeued.extend(ids)
        with Session(engine) as session:
            repository.mark_queued(session=session, notification_ids=ids)
            session.commit()

    relay = Relay(engine=engine, enqueue=enqueue, interval_s=5, lease_s=60)
    with freeze_time("2026-11-20 12:00:00") as frozen:
        intake.ingest(
            [_call({"type": "identify", "userId": "u", "traits": {"email": "u@example.com"}})]
        )
        (notification,) = _notifications(engine)
        with Session(engine) as session:
            repository.mark_queued(session=session, notification_ids=[notification.id or 0])
            session.commit()
        # When the relay runs after the lease, and again one interval later
        frozen.tick(timedelta(seconds=61))
        first = relay.run_once()
        frozen.tick(timedelta(seconds=5))
        second = relay.run_once()
    # Then it requeued the row once, not on every pass
    assert (first, second) == (1, 0)


def test_issue_2_non_string_names_do_not_block_delivery(
    make_settings: Any, engine: Engine, tmp_path: Path
) -> None:
    from crm_notify.runtime import Runtime

    # Given a contact whose first name was sent as a number
    runtime = Runtime.from_settings(make_settings(), engine=engine)
    runtime.intake.ingest(
        [
            _call(
                {
                    "type": "identify",
                    "userId": "u",
                    "traits": {"email": "u@example.com", "first_name": 42},
                }
            )
        ]
    )
    # Then the welcome is delivered (inline on the embedded default) without a display name
    (notification,) = _notifications(engine)
    assert notification.status == "sent"
    assert "To: u@example.com" in (notification.message or "")
