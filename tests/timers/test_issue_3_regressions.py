"""Regressions found while reviewing issue 3 (time), one test each."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from freezegun import freeze_time
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from crm_notify.events.schemas import parse_batch, parse_call
from crm_notify.intake import Intake
from crm_notify.outbox.models import Notification
from crm_notify.rules.loader import load_rules
from crm_notify.timers.firing import TimerFiring
from crm_notify.timers.models import Timer
from crm_notify.timers.scheduler import Scheduler
from tests.support.servers import write_tree

RULES = {
    "nudge.yaml": """
name: checkout-nudge
trigger: {event: Checkout Started}
delay: 2h
cancel_on: [Order Completed]
template: order_shipped
purpose: transactional
""",
    "late-ship.yaml": """
name: shipped-later
trigger:
  order_status: {to: shipped}
delay: 1h
dedupe_window: 7d
template: order_shipped
purpose: transactional
""",
    "idle.yaml": """
name: idle-custom
trigger:
  idle_for: {entity: cart, after: 10h, activity: [Product Added]}
template: abandoned_cart
purpose: transactional
""",
}

T0 = datetime(2026, 5, 4, 8, 0, tzinfo=UTC)


@pytest.fixture
def intake(engine: Engine, tmp_path: Path) -> Intake:
    write_tree(tmp_path / "rules", RULES)
    return Intake(engine=engine, rules=load_rules(tmp_path / "rules"))


def _run(intake: Intake, engine: Engine) -> None:
    Scheduler(
        engine=engine, fire=TimerFiring(rules=intake.rules), enqueue=None, interval_s=1
    ).run_once()


def _track(intake: Intake, event: str, at: datetime | None = None, **props: Any) -> None:
    call = {
        "type": "track",
        "userId": "u1",
        "event": event,
        "properties": props,
        "timestamp": (at or datetime.now(UTC)).isoformat(),
    }
    intake.ingest([parse_call(call, type_hint=None, received_at=datetime.now(UTC))])


def _sent(engine: Engine, rule: str) -> list[Notification]:
    with Session(engine) as session:
        return list(
            session.exec(
                select(Notification).where(Notification.rule == rule).order_by(col(Notification.id))
            )
        )


@pytest.fixture
def customer(intake: Intake) -> None:
    with freeze_time(T0):
        intake.ingest(
            [
                parse_call(
                    {"type": "identify", "userId": "u1", "traits": {"email": "u1@example.com"}},
                    type_hint=None,
                    received_at=T0,
                )
            ]
        )


@pytest.mark.usefixtures("customer")
def test_issue_3_order_for_the_cart_cancels_a_delayed_event_rule(
    intake: Intake, engine: Engine
) -> None:
    with freeze_time(T0) as frozen:
        _track(intake, "Checkout Started", cart_id="C1")
        frozen.tick(timedelta(minutes=30))
        _track(intake, "Order Completed", cart_id="C1", order_id="O1")
        frozen.tick(timedelta(hours=3))
        _run(intake, engine)
    assert _sent(engine, "checkout-nudge") == []


def test_issue_3_cancel_in_the_same_batch_as_the_trigger(intake: Intake, engine: Engine) -> None:
    with freeze_time(T0) as frozen:
        calls = parse_batch(
            {
                "batch": [
                    {
                        "type": "track",
                        "anonymousId": "a1",
                        "event": "Checkout Started",
                        "properties": {"cart_id": "C1"},
                    },
                    {
                        "type": "track",
                        "anonymousId": "a1",
                        "event": "Order Completed",
                        "properties": {"cart_id": "C1", "order_id": "O1"},
                    },
                ]
            },
            received_at=T0,
        )
        intake.ingest(calls)
        with Session(engine) as session:
            assert list(session.exec(select(Timer).where(Timer.rule == "checkout-nudge"))) == []
        frozen.tick(timedelta(hours=3))
        _run(intake, engine)


@pytest.mark.usefixtures("customer")
def test_issue_3_delayed_status_rule_keeps_its_dedupe_window(
    intake: Intake, engine: Engine
) -> None:
    with freeze_time(T0) as frozen:
        for status in ("shipped", "processing", "shipped"):
            frozen.tick(timedelta(minutes=5))
            _track(intake, "Order Updated", order_id="O1", status=status)
        frozen.tick(timedelta(hours=2))
        _run(intake, engine)
    assert len(_sent(engine, "shipped-later")) == 1


@pytest.mark.usefixtures("customer")
def test_issue_3_a_future_timestamp_does_not_postpone_a_delayed_send(
    intake: Intake, engine: Engine
) -> None:
    with freeze_time(T0) as frozen:
        _track(intake, "Checkout Started", at=T0 + timedelta(days=365), cart_id="C9")
        frozen.tick(timedelta(hours=2, minutes=10))
        _run(intake, engine)
    assert len(_sent(engine, "checkout-nudge")) == 1


@pytest.mark.usefixtures("customer")
def test_issue_3_activity_outside_the_rule_does_not_kill_its_timer(
    intake: Intake, engine: Engine
) -> None:
    with freeze_time(T0) as frozen:
        _track(intake, "Product Added", cart_id="C1", product_id="P1")
        frozen.tick(timedelta(hours=5))
        _track(intake, "Cart Viewed", cart_id="C1")
        frozen.tick(timedelta(hours=5, minutes=1))
        _run(intake, engine)
    assert len(_sent(engine, "idle-custom")) == 1


@pytest.mark.usefixtures("customer")
def test_issue_3_custom_activity_event_restarts_the_idle_clock(
    engine: Engine, tmp_path: Path
) -> None:
    # Given an idle rule that also counts "Coupon Applied" as cart activity
    write_tree(
        tmp_path / "custom",
        {
            "idle.yaml": RULES["idle.yaml"].replace(
                "activity: [Product Added]", "activity: [Product Added, Coupon Applied]"
            )
        },
    )
    intake = Intake(engine=engine, rules=load_rules(tmp_path / "custom"))
    with freeze_time(T0) as frozen:
        _track(intake, "Product Added", cart_id="C1", product_id="P1")
        frozen.tick(timedelta(hours=5))
        _track(intake, "Coupon Applied", cart_id="C1", coupon="X")
        # When 10 hours have passed since the first event only, Then nothing is sent
        frozen.tick(timedelta(hours=5, minutes=1))
        _run(intake, engine)
        assert _sent(engine, "idle-custom") == []
        # When 10 hours have passed since the coupon, Then the reminder is decided
        frozen.tick(timedelta(hours=5))
        _run(intake, engine)
    assert len(_sent(engine, "idle-custom")) == 1
