"""The gate's building blocks on their own: tokens, the release functions in a caller's session,
the retry schedule and the recording of attempts, on SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import timedelta

import pytest
import sqlalchemy as sa
from sqlalchemy.engine import Engine
from sqlmodel import Session, col

from crm_notify.clock import now
from crm_notify.db import session_scope
from crm_notify.errors import GateClosedError
from crm_notify.gates.follow_up import REJECTED_SUFFIX
from crm_notify.gates.model import Gate, GateDelivery, OnTimeout
from crm_notify.gates.notify import (
    FIRST_RETRY_DELAY,
    MAX_RETRY_DELAY,
    AttemptOutcome,
    GateAttempt,
    record_attempt,
    retry_delay,
)
from crm_notify.gates.release import cancel_item, clean_reason, release, time_out
from crm_notify.gates.tokens import GateAction, check_gate_token, gate_token
from crm_notify.outbox.models import Notification
from tests.gates._support import (
    KEY,
    decisions,
    follow_ups,
    gate_config,
    gate_row,
    open_gate,
    statuses,
)

#: An endpoint nobody calls in these tests.
URL = "https://gate.example/crm"


def test_tokens_bind_gate_action_and_item() -> None:
    made = gate_token(KEY, public_id="gt_a", action=GateAction.CANCEL, item_id=7)
    assert len(made) == 64 and int(made, 16) >= 0
    assert check_gate_token(KEY, made, public_id="gt_a", action="cancel", item_id=7)
    others = {
        gate_token(KEY, public_id="gt_b", action=GateAction.CANCEL, item_id=7),
        gate_token(KEY, public_id="gt_a", action=GateAction.REJECT, item_id=7),
        gate_token(KEY, public_id="gt_a", action=GateAction.CANCEL, item_id=8),
        gate_token(KEY, public_id="gt_a", action=GateAction.CANCEL),
        gate_token(b"other key", public_id="gt_a", action=GateAction.CANCEL, item_id=7),
    }
    assert made not in others and len(others) == 5
    for wrong in (None, "", made[:-1], made.upper(), "é" * 64, *others):
        assert not check_gate_token(KEY, wrong, public_id="gt_a", action="cancel", item_id=7)
    with pytest.raises(ValueError):
        gate_token(KEY, public_id="gt_a", action="delete")


def test_release_and_time_out_refuse_a_closed_gate(engine: Engine) -> None:
    opened = open_gate(engine, gate_config(URL))
    with session_scope(engine) as session:
        gate = session.get(Gate, opened.id)
        assert gate is not None
        assert release(session, gate) == opened.items
    # A second release, a timeout or a cancel of a finished gate change nothing
    for act in (
        lambda session, gate: release(session, gate),
        time_out,
        lambda session, gate: cancel_item(session, gate, opened.items[0], reason="x"),
    ):
        with session_scope(engine) as session:
            gate = session.get(Gate, opened.id)
            assert gate is not None
            with pytest.raises(GateClosedError) as caught:
                act(session, gate)
            assert caught.value.status == "finished"
    assert statuses(engine, opened.items) == ["pending"] * 3


def test_a_stale_gate_object_cannot_close_twice(engine: Engine) -> None:
    # Given two sessions holding the same open gate (as two unlocked SQLite readers could)
    opened = open_gate(engine, gate_config(URL, on_timeout=OnTimeout.DROP))
    with Session(engine, expire_on_commit=False) as reader:
        stale = reader.get(Gate, opened.id)
        assert stale is not None
        reader.expunge(stale)
    with session_scope(engine) as session:
        gate = session.get(Gate, opened.id)
        assert gate is not None
        release(session, gate)
    # When the stale copy is timed out, the conditional update refuses it
    with session_scope(engine) as session:
        merged = session.merge(stale, load=False)
        with pytest.raises(GateClosedError):
            time_out(session, merged)
    assert statuses(engine, opened.items) == ["pending"] * 3
    assert gate_row(engine, opened.public_id).status == "finished"


def test_cancel_item_reports_unknown_items_and_skips_follow_ups_off_email(engine: Engine) -> None:
    config = gate_config(URL, on_rejected="cart_rejected_alt")
    opened = open_gate(engine, config, channel="webhook", items=2)
    other = open_gate(engine, config, items=1)
    with session_scope(engine) as session:
        gate = session.get(Gate, opened.id)
        assert gate is not None
        # An item of another gate is not one of this gate's
        unknown = cancel_item(session, gate, other.items[0], reason="x")
        assert (unknown.changed, unknown.status) == (False, None)
        # A webhook-action item is cancelled without a follow-up (templates are e-mail)
        done = cancel_item(session, gate, opened.items[0], reason="  spaced\tout  ")
        assert (done.changed, done.status, done.notification_ids) == (True, "cancelled", [])
    assert statuses(engine, opened.items + other.items) == ["cancelled", "gated", "gated"]
    assert decisions(engine, opened.items[0])[0].reason == "rejected by the gate: spaced out"
    assert follow_ups(engine, REJECTED_SUFFIX) == []


def test_follow_up_keys_stay_within_the_column(engine: Engine) -> None:
    opened = open_gate(engine, gate_config(URL, on_rejected="cart_rejected_alt"), items=1)
    with session_scope(engine) as session:
        session.execute(
            sa.update(Notification)
            .where(col(Notification.id) == opened.items[0])
            .values(idempotency_key="k" * 512)
        )
    with session_scope(engine) as session:
        gate = session.get(Gate, opened.id)
        assert gate is not None
        first = cancel_item(session, gate, opened.items[0], reason="no")
    [made] = follow_ups(engine, REJECTED_SUFFIX)
    assert first.notification_ids == [made.id]
    assert len(made.idempotency_key) == 512 and made.idempotency_key.endswith(REJECTED_SUFFIX)


def test_clean_reason() -> None:
    assert clean_reason(None) == "no reason given"
    assert clean_reason(" \n ") == "no reason given"
    assert clean_reason("out\x00of\r\nstock") == "out of stock"
    assert len(clean_reason("x" * 5000)) == 1000


def test_retry_delay_doubles_up_to_the_cap() -> None:
    assert [retry_delay(n) for n in (1, 2, 3)] == [
        FIRST_RETRY_DELAY,
        FIRST_RETRY_DELAY * 2,
        FIRST_RETRY_DELAY * 4,
    ]
    assert retry_delay(50) == MAX_RETRY_DELAY
    assert retry_delay(1, asked_s=120) == timedelta(seconds=120)
    assert retry_delay(1, asked_s=10**6) == MAX_RETRY_DELAY


def test_record_attempt_writes_once(engine: Engine) -> None:
    opened = open_gate(engine, gate_config(URL))
    notified = GateAttempt(AttemptOutcome.NOTIFIED, status=204)
    with session_scope(engine) as session:
        assert record_attempt(session=session, gate_id=opened.id, attempt=notified) == (
            GateDelivery.NOTIFIED
        )
    # A second runner's late outcome does not overwrite it
    late = GateAttempt(AttemptOutcome.FAILED, status=400, error="refused")
    with session_scope(engine) as session:
        assert record_attempt(session=session, gate_id=opened.id, attempt=late) is None
    gate = gate_row(engine, opened.public_id)
    assert (gate.delivery, gate.response_status, gate.last_error) == ("notified", 204, None)
    # A retry that would fall after the deadline is a failure
    near = open_gate(engine, gate_config(URL, timeout=timedelta(seconds=5)))
    retry = GateAttempt(AttemptOutcome.RETRY, status=503, error="endpoint answered 503: busy")
    with session_scope(engine) as session:
        outcome = record_attempt(session=session, gate_id=near.id, attempt=retry, moment=now())
    assert outcome is GateDelivery.FAILED
    assert gate_row(engine, near.public_id).last_error == (
        "endpoint answered 503: busy; no attempt left before the deadline"
    )
