"""What happens around a hold (issue 6): a ``cancel_on`` event withdraws held sends, quiet hours
are checked when a held send is released into the night, a scheduler pass holds all its sends
under one gate per rule and step, and a rejected or timed-out send can be retried later.

These run the real runtime (intake, scheduler, delivery to a file outbox) on SQLite and
PostgreSQL, with the clock frozen."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from freezegun import freeze_time
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from crm_notify.db import session_scope
from crm_notify.events.schemas import parse_call
from crm_notify.gates.follow_up import RETRY_MARK
from crm_notify.gates.hold import PASS_LEASE, GateHold
from crm_notify.gates.model import Gate
from crm_notify.gates.release import cancel_item, release, time_out
from crm_notify.outbox.models import Decision, Notification, NotificationStatus
from crm_notify.runtime import Runtime
from crm_notify.timers.firing import TimerFiring
from crm_notify.timers.models import Timer, TimerKind
from crm_notify.timers.scheduler import Scheduler
from tests.gates._support import history

#: Never contacted here: these tests decide the gates themselves.
GATE_URL = "https://gate.example/crm"

CART_RULE = f"""\
name: cart-gated
trigger: {{idle_for: {{entity: cart, after: 1h}}}}
template: welcome
purpose: transactional
quiet_hours: true
cancel_on: [Order Completed]
gate:
  url: {GATE_URL}
  on_timeout: drop
  on_rejected: {{retry_after: 1d}}
  on_timed_out: {{retry_after: 2h, retries: 2}}
"""
ORDER_RULE = f"""\
name: order-gated
trigger: {{event: Order Completed}}
template: welcome
purpose: transactional
quiet_hours: false
gate:
  url: {GATE_URL}
"""
SMS_RULE = f"""\
name: order-sms
trigger: {{event: Order Completed}}
purpose: transactional
dedupe_key: "{{{{ event.properties.order_id }}}}"
actions:
  - {{type: webhook, name: sms, url: "https://sms.example/v1/messages"}}
gate:
  url: {GATE_URL}
  on_rejected: {{retry_after: 1h}}
"""
START = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


@pytest.fixture
def runtime(tmp_path: Path, make_settings: Any, engine: Engine) -> Iterator[Runtime]:
    rules_dir = tmp_path / "rules"
    rules_dir.mkdir()
    (rules_dir / "cart.yaml").write_text(CART_RULE, "utf-8")
    (rules_dir / "order.yaml").write_text(ORDER_RULE, "utf-8")
    (rules_dir / "sms.yaml").write_text(SMS_RULE, "utf-8")
    built = Runtime.from_settings(make_settings(rules_dir=rules_dir), engine=engine)
    yield built
    built.close()


def _call(obj: dict[str, Any], user_id: str = "u1") -> Any:
    obj = {"userId": user_id, "timestamp": datetime.now(UTC).isoformat(), **obj}
    return parse_call(obj, type_hint=None, received_at=datetime.now(UTC))


def _identify(runtime: Runtime, user_id: str = "u1", **traits: Any) -> None:
    traits = {"email": f"{user_id}@example.com", **traits}
    runtime.intake.ingest([_call({"type": "identify", "traits": traits}, user_id)])


def _track(runtime: Runtime, event: str, user_id: str = "u1", **properties: Any) -> None:
    call = {"type": "track", "event": event, "properties": properties}
    runtime.intake.ingest([_call(call, user_id)])


def _rows(engine: Engine, rule: str = "cart-gated") -> list[Notification]:
    with Session(engine) as session:
        rows = session.exec(
            select(Notification).where(Notification.rule == rule).order_by(col(Notification.id))
        ).all()
        for row in rows:
            session.expunge(row)
        return list(rows)


def _held_cart_reminder(
    runtime: Runtime, clock: Any, held_at: datetime, **traits: Any
) -> Notification:
    """A contact's cart left at the frozen clock's time, and its reminder, held by the gate at
    ``held_at`` (the scheduler's pass then)."""
    _identify(runtime, **traits)
    _track(runtime, "Product Added", cart_id="C1", product_id="P1")
    clock.move_to(held_at)
    runtime.scheduler.run_once()
    [row] = _rows(runtime.engine)
    return row


def _reasons(engine: Engine, notification_id: int) -> list[str]:
    with Session(engine) as session:
        return list(
            session.exec(
                select(Decision.reason)
                .where(Decision.notification_id == notification_id)
                .order_by(col(Decision.id))
            ).all()
        )


def _gate_of(session: Session, row: Notification) -> Gate:
    gate = session.get(Gate, row.gate_id)
    assert gate is not None
    return gate


def test_a_cancel_on_event_withdraws_the_carts_held_send(runtime: Runtime, engine: Engine) -> None:
    with freeze_time(START) as clock:
        # Given two carts left for an hour, whose reminders the gate holds
        _identify(runtime)
        _track(runtime, "Product Added", cart_id="C1", product_id="P1")
        _track(runtime, "Product Added", cart_id="C2", product_id="P2")
        clock.move_to(START + timedelta(hours=1, minutes=1))
        runtime.scheduler.run_once()
        first, second = _rows(engine)
        assert (first.status, second.status) == ("gated", "gated")
        # When the first cart becomes an order
        _track(runtime, "Order Completed", cart_id="C1", order_id="O1")
    # Then its held reminder is withdrawn, recorded with the reason; the other cart's stays held
    first, second = _rows(engine)
    assert (first.status, second.status) == ("cancelled", "gated")
    reason = _reasons(engine, first.id or 0)[-1]
    assert reason.startswith("withdrawn from its gate: cancelled by Order Completed (")
    assert history(engine, first.id or 0)[-1][0] == "cancelled"
    # And finishing the gate later releases only what is left
    with session_scope(engine) as session:
        assert release(session, _gate_of(session, second)) == [second.id]


def test_a_send_released_into_the_night_waits_for_the_morning(
    runtime: Runtime, engine: Engine
) -> None:
    # Given a contact in Warsaw (UTC+1 in March) and a cart reminder held at 20:00 local time
    evening = datetime(2026, 3, 2, 18, 0, tzinfo=UTC)
    with freeze_time(evening) as clock:
        row = _held_cart_reminder(
            runtime, clock, evening + timedelta(hours=1, minutes=1), timezone="Europe/Warsaw"
        )
        assert row.status == "gated"
        # When the integration releases it at 22:30 local time
        clock.move_to(datetime(2026, 3, 2, 21, 30, tzinfo=UTC))
        with session_scope(engine) as session:
            assert release(session, _gate_of(session, row)) == [row.id]
        outcome = runtime.delivery.deliver(row.id or 0)
        # Then it is not sent at night: it waits for 08:00 local time, and the log says why
        assert outcome.status == "retrying"
        assert _rows(engine)[0].next_attempt_at == datetime(2026, 3, 3, 7, 0, tzinfo=UTC)
        assert _reasons(engine, row.id or 0)[-1] == (
            "deferred at delivery: quiet hours until 08:00 Europe/Warsaw"
        )
        # And at 08:00 it goes out
        clock.move_to(datetime(2026, 3, 3, 7, 0, 1, tzinfo=UTC))
        assert runtime.delivery.deliver(row.id or 0).status == "sent"


def test_a_rule_without_quiet_hours_is_sent_at_night(runtime: Runtime, engine: Engine) -> None:
    # Given an order confirmation held by its gate, released at 23:30 UTC
    night = datetime(2026, 3, 2, 23, 30, tzinfo=UTC)
    with freeze_time(night):
        _identify(runtime)
        _track(runtime, "Order Completed", order_id="O1")
        [row] = _rows(engine, "order-gated")
        with session_scope(engine) as session:
            assert release(session, _gate_of(session, row)) == [row.id]
        # Then its rule's quiet_hours: false holds: it is sent at once
        assert runtime.delivery.deliver(row.id or 0).status == "sent"


def test_one_scheduler_pass_holds_all_its_sends_under_one_gate(
    runtime: Runtime, engine: Engine
) -> None:
    # Given five carts left for an hour, and a scheduler firing two timers per transaction
    firing = TimerFiring(rules=runtime.rules, policy=runtime.policy)
    seen_mid_pass: list[datetime | None] = []

    def fire(session: Session, timer: Timer) -> list[int]:
        seen_mid_pass.extend(gate.next_delivery_at for gate in session.exec(select(Gate)))
        return firing(session, timer)

    scheduler = Scheduler(
        engine=engine,
        fire=fire,
        enqueue=None,
        interval_s=1,
        batch_size=2,
        hold=GateHold(runtime.rules),
    )
    with freeze_time(START) as clock:
        for number in range(5):
            _identify(runtime, f"u{number}")
            _track(runtime, "Product Added", f"u{number}", cart_id=f"C{number}", product_id="P")
        clock.move_to(START + timedelta(hours=1, minutes=1))
        # When one pass fires them in three transactions
        assert scheduler.run_once() == 5
        # Then while the pass ran, its gate was not yet due for the runner
        moment = START + timedelta(hours=1, minutes=1)
        assert seen_mid_pass and all(due == moment + PASS_LEASE for due in seen_mid_pass)
        # Then one gate holds all five, ready for the runner now that the pass has ended
        with Session(engine) as session:
            gates = session.exec(select(Gate)).all()
            assert len(gates) == 1
            assert gates[0].next_delivery_at is not None
            assert gates[0].next_delivery_at <= START + timedelta(hours=1, minutes=1)
        assert {row.gate_id for row in _rows(engine)} == {gates[0].id}
        assert len(_rows(engine)) == 5


def test_a_rejected_send_is_retried_once_a_day_later(runtime: Runtime, engine: Engine) -> None:
    with freeze_time(START) as clock:
        # Given a held cart reminder
        original = _held_cart_reminder(runtime, clock, START + timedelta(hours=1, minutes=1))
        # When the integration rejects it
        with session_scope(engine) as session:
            result = cancel_item(session, _gate_of(session, original), original.id or 0, reason="")
        # Then nothing is sent now; a retry is due a day later, and the log says so
        assert result.notification_ids == []
        rejected_at = START + timedelta(hours=1, minutes=1)
        assert _reasons(engine, original.id or 0)[-2:] == [
            "rejected by the gate: no reason given",
            f"rejected by gate {_gate_public_id(engine, original)}: tried again at "
            f"{rejected_at + timedelta(days=1):%Y-%m-%d %H:%M} UTC (retry 1 of 1)",
        ]
        with Session(engine) as session:
            [timer] = session.exec(select(Timer).where(Timer.kind == TimerKind.GATE_RETRY)).all()
        assert timer.due_at == rejected_at + timedelta(days=1)
        # When the day has passed
        clock.move_to(rejected_at + timedelta(days=1, seconds=1))
        runtime.scheduler.run_once()
        # Then the same send is decided again and held by a new gate
        original, retry = _rows(engine)
        assert retry.idempotency_key == original.idempotency_key + f"{RETRY_MARK}1"
        assert retry.status == "gated" and retry.gate_id not in (None, original.gate_id)
        # And when that one is rejected too, it is final: no retry is left
        with session_scope(engine) as session:
            cancel_item(session, _gate_of(session, retry), retry.id or 0, reason="still no")
        assert _reasons(engine, retry.id or 0)[-1].endswith("no retry left (retries: 1)")
        with Session(engine) as session:
            assert len(session.exec(select(Timer).where(Timer.kind == "gate_retry")).all()) == 1


def test_timed_out_sends_are_retried_and_a_cancel_on_event_stops_the_retry(
    runtime: Runtime, engine: Engine
) -> None:
    with freeze_time(START) as clock:
        # Given a held cart reminder whose gate times out (on_timeout: drop, retried in 2h)
        original = _held_cart_reminder(runtime, clock, START + timedelta(hours=1, minutes=1))
        with session_scope(engine) as session:
            assert time_out(session, _gate_of(session, original)) == []
        assert original.id is not None
        assert "(retry 1 of 2)" in _reasons(engine, original.id)[-1]
        # When the cart becomes an order before the retry is due
        _track(runtime, "Order Completed", cart_id="C1", order_id="O1")
        clock.move_to(START + timedelta(hours=3, minutes=2))
        runtime.scheduler.run_once()
    # Then the retry is cancelled with the rule's other steps: nothing more is sent
    assert len(_rows(engine)) == 1
    with Session(engine) as session:
        [timer] = session.exec(select(Timer).where(Timer.kind == TimerKind.GATE_RETRY)).all()
    assert timer.status == "cancelled"


def _gate_public_id(engine: Engine, row: Notification) -> str:
    with Session(engine) as session:
        return _gate_of(session, row).public_id


def test_a_retry_of_a_webhook_only_rule_takes_over_its_dedupe_key(
    runtime: Runtime, engine: Engine
) -> None:
    # Given a rule that only calls an SMS gateway, once per order (dedupe_key), held by a gate
    with freeze_time(START) as clock:
        _identify(runtime)
        _track(runtime, "Order Completed", order_id="O1")
        [original] = _rows(engine, "order-sms")
        assert (original.channel, original.unique_key) == ("webhook", "O1")
        # When the integration rejects it, and the retry is due
        with session_scope(engine) as session:
            cancel_item(session, _gate_of(session, original), original.id or 0, reason="later")
        clock.move_to(START + timedelta(hours=1, seconds=1))
        runtime.scheduler.run_once()
    # Then the retry is decided (not refused as a repeat of the order) and held again
    original, retry = _rows(engine, "order-sms")
    assert (original.unique_key, retry.unique_key) == (None, "O1")
    assert retry.status == "gated" and retry.idempotency_key.endswith(f"{RETRY_MARK}1#webhook:sms")


def test_a_pass_gate_gets_its_whole_timeout_from_the_end_of_the_pass(
    runtime: Runtime, engine: Engine
) -> None:
    # Given a cart reminder held by a scheduler pass that took ten minutes
    with freeze_time(START) as clock:
        _identify(runtime)
        _track(runtime, "Product Added", cart_id="C1", product_id="P1")
        clock.move_to(START + timedelta(hours=1))
        hold = GateHold(runtime.rules)
        pass_gates: dict[tuple[str, int], int] = {}
        scheduler_moment = START + timedelta(hours=1)
        with session_scope(engine) as session:
            [timer] = session.exec(select(Timer)).all()
            ids = TimerFiring(rules=runtime.rules, policy=runtime.policy)(session, timer)
            hold.hold(session, ids, batch=True, pass_gates=pass_gates)
        with Session(engine) as session:
            [gate] = session.exec(select(Gate)).all()
        # Then while the pass runs the runner may not take it, and its deadline allows for that
        assert gate.next_delivery_at == scheduler_moment + PASS_LEASE
        assert gate.deadline == scheduler_moment + PASS_LEASE + timedelta(hours=1)
        # When the pass ends ten minutes later
        ended = scheduler_moment + timedelta(minutes=10)
        clock.move_to(ended)
        with session_scope(engine) as session:
            hold.ready(session, list(pass_gates.values()))
        # Then the runner may notify it now, and the integration has the whole hour from now
        with Session(engine) as session:
            [gate] = session.exec(select(Gate)).all()
        assert (gate.next_delivery_at, gate.deadline) == (ended, ended + timedelta(hours=1))


def test_a_released_send_retried_at_night_waits_for_the_morning_too(
    runtime: Runtime, engine: Engine
) -> None:
    # Given a cart reminder released at 20:30 in Warsaw whose first attempt did not finish (its
    # worker died; the relay made it retrying)
    evening = datetime(2026, 3, 2, 18, 0, tzinfo=UTC)
    with freeze_time(evening) as clock:
        row = _held_cart_reminder(
            runtime, clock, evening + timedelta(hours=1, minutes=30), timezone="Europe/Warsaw"
        )
        with session_scope(engine) as session:
            assert release(session, _gate_of(session, row)) == [row.id]
            held = session.get(Notification, row.id)
            assert held is not None
            held.status, held.attempts = NotificationStatus.RETRYING, 1
            session.add(held)
        # When it is tried again at 23:00 local time
        clock.move_to(datetime(2026, 3, 2, 22, 0, tzinfo=UTC))
        # Then the retry waits for 08:00 too
        assert runtime.delivery.deliver(row.id or 0).status == "retrying"
        assert _rows(engine)[0].next_attempt_at == datetime(2026, 3, 3, 7, 0, tzinfo=UTC)
