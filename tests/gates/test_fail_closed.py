"""A gate fails closed: a gate whose integration was never reached releases nothing at its
deadline, and rejecting a contact rejects every row of that firing (its email and its rule's
webhook actions)."""

from __future__ import annotations

from sqlalchemy.engine import Engine
from sqlmodel import Session

from crm_notify.actions.rows import ACTION_KEY_SEPARATOR
from crm_notify.db import session_scope
from crm_notify.gates.model import Gate, GateDelivery, OnTimeout
from crm_notify.gates.release import cancel_item, time_out
from crm_notify.outbox.models import Notification
from tests.gates._support import decisions, gate_config, open_gate, statuses

URL = "https://gate.example/crm"


def _set_delivery(engine: Engine, gate_id: int, delivery: GateDelivery) -> None:
    with session_scope(engine) as session:
        gate = session.get(Gate, gate_id)
        assert gate is not None
        gate.delivery = delivery
        session.add(gate)


def test_an_unreached_gate_drops_its_items_even_with_on_timeout_release(engine: Engine) -> None:
    for delivery in (GateDelivery.PENDING, GateDelivery.FAILED):
        opened = open_gate(engine, gate_config(URL, on_timeout=OnTimeout.RELEASE), items=2)
        _set_delivery(engine, opened.id, delivery)
        with session_scope(engine) as session:
            gate = session.get(Gate, opened.id)
            assert gate is not None
            assert time_out(session, gate) == []
        assert statuses(engine, opened.items) == ["cancelled", "cancelled"]
        reason = decisions(engine, opened.items[0])[0].reason
        assert reason == "gate timed out: the integration was never reached, so nothing is released"


def test_a_reached_gate_releases_at_its_deadline(engine: Engine) -> None:
    opened = open_gate(engine, gate_config(URL, on_timeout=OnTimeout.RELEASE), items=2)
    _set_delivery(engine, opened.id, GateDelivery.NOTIFIED)
    with session_scope(engine) as session:
        gate = session.get(Gate, opened.id)
        assert gate is not None
        assert sorted(time_out(session, gate)) == opened.items
    assert statuses(engine, opened.items) == ["pending", "pending"]


def test_rejecting_a_contact_rejects_the_webhook_actions_of_the_same_firing(
    engine: Engine,
) -> None:
    # Given a gate holding one firing's email and its SMS action, and another contact's email
    opened = open_gate(engine, gate_config(URL), items=2)
    email_id, other_id = opened.items
    with session_scope(engine) as session:
        email = session.get(Notification, email_id)
        assert email is not None
        sms = Notification(
            idempotency_key=f"{email.idempotency_key}{ACTION_KEY_SEPARATOR}sms",
            rule=email.rule,
            template="sms",
            purpose=email.purpose,
            channel="webhook",
            contact_id=email.contact_id,
            to_address="https://sms.example/v1/messages",
            status=email.status,
            gate_id=email.gate_id,
            context=email.context,
        )
        session.add(sms)
        session.flush()
        sms_id = sms.id
    assert sms_id is not None
    # When the integration rejects the contact's email item
    with session_scope(engine) as session:
        gate = session.get(Gate, opened.id)
        assert gate is not None
        result = cancel_item(session, gate, email_id, reason="no consent on file")
    # Then the SMS of that firing is rejected with it, the other contact's item is not
    assert result.changed
    assert statuses(engine, [email_id, sms_id, other_id]) == ["cancelled", "cancelled", "gated"]
    with Session(engine) as session:
        assert decisions(engine, sms_id)[0].reason == "rejected by the gate: no consent on file"
