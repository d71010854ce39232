"""Timed rules end to end in-process: idle carts, delays, sequences, windows, cancellation.

Time comes from freezegun; the scheduler runs passes on demand, as it would every few seconds.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from freezegun import freeze_time
from freezegun.api import FrozenDateTimeFactory
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from crm_notify.events.schemas import parse_call
from crm_notify.intake import Intake
from crm_notify.outbox.models import Decision, Notification
from crm_notify.rules.loader import load_rules
from crm_notify.timers.firing import TimerFiring
from crm_notify.timers.models import Timer
from crm_notify.timers.scheduler import Scheduler
from tests.support.servers import write_tree

RULES = {
    "cart.yaml": """
name: cart-reminder
trigger:
  idle_for: {entity: cart, after: 48h}
when: cart.status == "open" and cart.products
cancel_on: [Order Completed]
exit_when: cart.status != "open"
purpose: transactional
steps:
  - delay: 0h
    template: abandoned_cart
    not_after: 24h
  - delay: 72h
    template: abandoned_cart_reminder
""",
    "thanks.yaml": """
name: review-request
trigger: {event: Order Completed}
delay: 7d
not_after: 8d
template: order_shipped
purpose: transactional
""",
    "shipped.yaml": """
name: shipped
trigger:
  order_status: {to: shipped}
dedupe_window: 7d
template: order_shipped
purpose: transactional
""",
}

T0 = datetime(2026, 3, 20, 9, 0, tzinfo=UTC)


@pytest.fixture
def frozen() -> Iterator[FrozenDateTimeFactory]:
    with freeze_time(T0) as factory:
        yield factory


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    write_tree(tmp_path / "rules", RULES)
    return tmp_path / "rules"


@pytest.fixture
def intake(engine: Engine, rules_dir: Path) -> Intake:
    return Intake(engine=engine, rules=load_rules(rules_dir))


@pytest.fixture
def scheduler(engine: Engine, intake: Intake) -> Scheduler:
    return Scheduler(
        engine=engine, fire=TimerFiring(rules=intake.rules), enqueue=None, interval_s=1
    )


def _send(intake: Intake, obj: dict[str, Any], at: datetime | None = None) -> None:
    obj = dict(obj)
    obj.setdefault("userId", "u1")
    obj.setdefault("type", "track")
    obj["timestamp"] = (at or datetime.now(UTC)).isoformat()
    intake.ingest([parse_call(obj, type_hint=None, received_at=datetime.now(UTC))])


def _customer(intake: Intake) -> None:
    _send(intake, {"type": "identify", "traits": {"email": "u1@example.com"}})


def _add_to_cart(intake: Intake, at: datetime | None = None, cart: str = "C1") -> None:
    _send(
        intake,
        {
            "event": "Product Added",
            "properties": {"cart_id": cart, "product_id": "p1", "name": "Mug"},
        },
        at,
    )


def _sent(engine: Engine, rule: str) -> list[Notification]:
    with Session(engine) as session:
        return list(
            session.exec(
                select(Notification).where(Notification.rule == rule).order_by(col(Notification.id))
            )
        )


def _reasons(engine: Engine, rule: str) -> list[str]:
    with Session(engine) as session:
        return [
            d.reason
            for d in session.exec(
                select(Decision).where(Decision.rule == rule).order_by(col(Decision.id))
            )
        ]


def test_idle_cart_fires_at_48h_not_before(
    intake: Intake, scheduler: Scheduler, engine: Engine, frozen: FrozenDateTimeFactory
) -> None:
    # Given a customer who put something in their cart
    _customer(intake)
    _add_to_cart(intake)
    # When 47h59m have passed, Then nothing is sent
    frozen.tick(timedelta(hours=47, minutes=59))
    scheduler.run_once()
    assert _sent(engine, "cart-reminder") == []
    # When 48h01m have passed, Then the first reminder is decided, once
    frozen.tick(timedelta(minutes=2))
    scheduler.run_once()
    scheduler.run_once()
    (first,) = _sent(engine, "cart-reminder")
    assert (first.step, first.template) == (0, "abandoned_cart")
    assert first.context["cart"]["products"][0]["name"] == "Mug"


def test_new_activity_resets_the_clock(
    intake: Intake, scheduler: Scheduler, engine: Engine, frozen: FrozenDateTimeFactory
) -> None:
    _customer(intake)
    _add_to_cart(intake)
    # Given more activity 24 hours later
    frozen.tick(timedelta(hours=24))
    _send(intake, {"event": "Cart Viewed", "properties": {"cart_id": "C1"}})
    # When 48h have passed since the first event, Then nothing is sent
    frozen.tick(timedelta(hours=24, minutes=1))
    scheduler.run_once()
    assert _sent(engine, "cart-reminder") == []
    # When 48h have passed since the last activity, Then the reminder goes out
    frozen.tick(timedelta(hours=24))
    scheduler.run_once()
    assert len(_sent(engine, "cart-reminder")) == 1


def test_order_cancels_pending_reminders_even_when_it_arrives_late(
    intake: Intake, scheduler: Scheduler, engine: Engine, frozen: FrozenDateTimeFactory
) -> None:
    _customer(intake)
    _add_to_cart(intake)
    frozen.tick(timedelta(hours=47))
    # Given the order was placed at hour 40 but its event only arrives at hour 47
    _send(
        intake,
        {"event": "Order Completed", "properties": {"order_id": "O1", "cart_id": "C1", "total": 9}},
        at=T0 + timedelta(hours=40),
    )
    # When the reminder would be due, Then nothing is sent and the timer says why
    frozen.tick(timedelta(hours=2))
    scheduler.run_once()
    assert _sent(engine, "cart-reminder") == []
    with Session(engine) as session:
        timers = list(session.exec(select(Timer).where(Timer.rule == "cart-reminder")))
    assert [t.status for t in timers] == ["cancelled"]


def test_backfilled_event_older_than_48h_fires_on_the_next_pass(
    intake: Intake, scheduler: Scheduler, engine: Engine
) -> None:
    with freeze_time(T0):
        _customer(intake)
        # Given a cart event dated 49 hours ago, arriving now
        _add_to_cart(intake, at=T0 - timedelta(hours=49))
        # When the scheduler passes, Then the reminder is decided at once
        scheduler.run_once()
    assert len(_sent(engine, "cart-reminder")) == 1


def test_sequence_second_step_and_exit(
    intake: Intake, scheduler: Scheduler, engine: Engine, frozen: FrozenDateTimeFactory
) -> None:
    _customer(intake)
    _add_to_cart(intake)
    _add_to_cart(intake, cart="C2")
    frozen.tick(timedelta(hours=48, minutes=1))
    scheduler.run_once()
    assert len(_sent(engine, "cart-reminder")) == 2
    # Given cart C2 is bought before the second step
    _send(intake, {"event": "Order Completed", "properties": {"order_id": "O9", "cart_id": "C2"}})
    # When the second step is due (72h after the trigger)
    frozen.tick(timedelta(hours=72))
    scheduler.run_once()
    # Then only the open cart C1 gets the second reminder
    second = [n for n in _sent(engine, "cart-reminder") if n.step == 1]
    assert [n.context["cart"]["cart_id"] for n in second] == ["C1"]


def test_reminder_delayed_past_its_window_is_dropped_not_sent_late(
    intake: Intake, scheduler: Scheduler, engine: Engine, frozen: FrozenDateTimeFactory
) -> None:
    _customer(intake)
    _add_to_cart(intake)
    # Given the scheduler was down from hour 47 to hour 48 + 25
    frozen.tick(timedelta(hours=73))
    # When it runs again
    scheduler.run_once()
    # Then the first reminder is dropped with its reason, and the second is still scheduled
    assert _sent(engine, "cart-reminder") == []
    assert any("send window closed" in r for r in _reasons(engine, "cart-reminder"))
    frozen.tick(timedelta(hours=48))
    scheduler.run_once()
    assert [n.step for n in _sent(engine, "cart-reminder")] == [1]


def test_delayed_rule_survives_a_restart(
    engine: Engine, rules_dir: Path, frozen: FrozenDateTimeFactory
) -> None:
    # Given an order, processed by one process that then stops
    first = Intake(engine=engine, rules=load_rules(rules_dir))
    _customer(first)
    _send(first, {"event": "Order Completed", "properties": {"order_id": "O1"}})
    assert _sent(engine, "review-request") == []
    # When a new process (fresh rules, fresh scheduler) runs after 7 days
    frozen.tick(timedelta(days=7, seconds=1))
    rules = load_rules(rules_dir)
    Scheduler(engine=engine, fire=TimerFiring(rules=rules), enqueue=None, interval_s=1).run_once()
    # Then the delayed email is decided once
    assert len(_sent(engine, "review-request")) == 1


def test_flapping_status_does_not_resend_within_the_dedupe_window(
    intake: Intake, engine: Engine, frozen: FrozenDateTimeFactory
) -> None:
    _customer(intake)
    for status in ("shipped", "processing", "shipped"):
        frozen.tick(timedelta(hours=1))
        _send(
            intake, {"event": "Order Updated", "properties": {"order_id": "O1", "status": status}}
        )
    assert len(_sent(engine, "shipped")) == 1
    assert any("already sent for order:O1:shipped" in r for r in _reasons(engine, "shipped"))
    # After the window it may be sent again
    frozen.tick(timedelta(days=8))
    _send(intake, {"event": "Order Updated", "properties": {"order_id": "O1", "status": "lost"}})
    _send(intake, {"event": "Order Updated", "properties": {"order_id": "O1", "status": "shipped"}})
    assert len(_sent(engine, "shipped")) == 2


@pytest.mark.parametrize("zone", ["Europe/Warsaw", "America/New_York"])
def test_idle_period_is_elapsed_time_across_dst(
    intake: Intake, scheduler: Scheduler, engine: Engine, zone: str
) -> None:
    from zoneinfo import ZoneInfo

    # Given a cart touched at 01:30 local time the night before clocks spring forward
    spring = {
        "Europe/Warsaw": datetime(2026, 3, 28, 1, 30),
        "America/New_York": datetime(2026, 3, 7, 1, 30),
    }[zone]
    touched = spring.replace(tzinfo=ZoneInfo(zone)).astimezone(UTC)
    with freeze_time(touched) as frozen:
        _send(intake, {"type": "identify", "traits": {"email": "u1@example.com", "timezone": zone}})
        _add_to_cart(intake)
        # When 48 wall-clock hours have passed locally (47 elapsed, as an hour was skipped)
        frozen.move_to(touched + timedelta(hours=47, minutes=30))
        scheduler.run_once()
        # Then nothing is sent yet; it is sent 48 elapsed hours after the activity
        assert _sent(engine, "cart-reminder") == []
        frozen.move_to(touched + timedelta(hours=48))
        scheduler.run_once()
    assert len(_sent(engine, "cart-reminder")) == 1


def test_two_schedulers_racing_fire_each_timer_once(
    intake: Intake, engine: Engine, frozen: FrozenDateTimeFactory
) -> None:
    # Given 40 carts whose reminders are all due
    _customer(intake)
    for n in range(40):
        _add_to_cart(intake, cart=f"C{n}")
    frozen.tick(timedelta(hours=49))
    # When two schedulers pass at the same moment, in small batches
    schedulers = [
        Scheduler(
            engine=engine,
            fire=TimerFiring(rules=intake.rules),
            enqueue=None,
            interval_s=1,
            batch_size=5,
        )
        for _ in range(2)
    ]
    barrier = threading.Barrier(2)
    errors: list[BaseException] = []

    def run(s: Scheduler) -> None:
        barrier.wait()
        try:
            s.run_once()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in schedulers]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    # Then every cart got exactly one first reminder
    assert errors == []
    carts = [n.context["cart"]["cart_id"] for n in _sent(engine, "cart-reminder")]
    assert sorted(carts) == sorted(f"C{n}" for n in range(40))


def test_two_events_with_the_same_timestamp_keep_one_pending_timer(
    intake: Intake, scheduler: Scheduler, engine: Engine, frozen: FrozenDateTimeFactory
) -> None:
    # Given two cart events stamped with the same moment (a client sending twice)
    _customer(intake)
    _add_to_cart(intake, at=T0)
    _send(intake, {"event": "Cart Viewed", "properties": {"cart_id": "C1"}}, at=T0)
    # When the idle period ends, Then the reminder is still decided, once
    frozen.tick(timedelta(hours=48, minutes=1))
    scheduler.run_once()
    assert len(_sent(engine, "cart-reminder")) == 1


def test_a_timer_that_cannot_fire_does_not_block_the_others(
    intake: Intake, engine: Engine, frozen: FrozenDateTimeFactory
) -> None:
    # Given three due reminders, one of which raises while firing
    _customer(intake)
    for n in range(3):
        _add_to_cart(intake, cart=f"C{n}")
    frozen.tick(timedelta(hours=49))
    real = TimerFiring(rules=intake.rules)

    def fire(session: Session, timer: Timer) -> list[int]:
        if timer.entity_id == "C1":
            raise RuntimeError("boom")
        return real(session, timer)

    # When the scheduler passes
    Scheduler(engine=engine, fire=fire, enqueue=None, interval_s=1).run_once()
    # Then the other two fired and the broken one is closed with the error class as its reason
    carts = sorted(n.context["cart"]["cart_id"] for n in _sent(engine, "cart-reminder"))
    assert carts == ["C0", "C2"]
    with Session(engine) as session:
        broken = session.exec(select(Timer).where(Timer.entity_id == "C1")).one()
    assert (broken.status, broken.reason) == ("skipped", "error while firing: RuntimeError")
