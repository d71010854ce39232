"""The consent ledger, Segment consent mapping, and the consent guard."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest
from freezegun import freeze_time
from sqlalchemy.engine import Engine
from sqlmodel import Session, func, select

from crm_notify.contacts.models import Contact
from crm_notify.contacts.repository import find_contact_by_ref
from crm_notify.events.schemas import parse_call
from crm_notify.guards.base import SendAttempt
from crm_notify.guards.consent import (
    ConsentChange,
    ConsentGuard,
    consent_from_call,
    consent_history,
    current_consent,
    latest_consent,
    record_changes,
    record_consent,
)
from crm_notify.guards.models import ConsentRecord
from crm_notify.outbox.models import DecisionOutcome

NOW = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)


def _contact(engine: Engine, **values: Any) -> int:
    with Session(engine) as session:
        contact = Contact(**({"email": "alice@example.com", "user_id": "u1"} | values))
        session.add(contact)
        session.commit()
        assert contact.id is not None
        return contact.id


def _count(engine: Engine) -> int:
    with Session(engine) as session:
        return session.exec(select(func.count()).select_from(ConsentRecord)).one()


def _call(obj: dict[str, Any]) -> Any:
    return parse_call(obj, type_hint=None, received_at=NOW)


def test_ledger_is_append_only_and_latest_record_wins(engine: Engine) -> None:
    # Given a contact who granted, then withdrew, marketing consent
    contact_id = _contact(engine)
    with Session(engine) as session:
        record_consent(
            session=session,
            contact_id=contact_id,
            purpose="marketing",
            granted=True,
            source="api",
            text_version="newsletter-v3",
            ip="203.0.113.9",
        )
        record_consent(
            session=session,
            contact_id=contact_id,
            purpose="marketing",
            granted=False,
            source="unsubscribe_link",
        )
        record_consent(
            session=session, contact_id=contact_id, purpose="surveys", granted=True, source="admin"
        )
        session.commit()
    # Then both marketing records are kept and the withdrawal is the current state
    with Session(engine) as session:
        history = consent_history(session=session, contact_id=contact_id)
        assert [(r.purpose, r.granted) for r in history] == [
            ("marketing", True),
            ("marketing", False),
            ("surveys", True),
        ]
        assert history[0].text_version == "newsletter-v3"
        assert history[0].ip == "203.0.113.9"
        current = current_consent(session=session, contact_id=contact_id)
        assert {p: r.granted for p, r in current.items()} == {"marketing": False, "surveys": True}
        latest = latest_consent(session=session, contact_id=contact_id, purpose="marketing")
        assert latest is not None and latest.source == "unsubscribe_link"
        assert latest_consent(session=session, contact_id=contact_id, purpose="other") is None


def test_only_if_changed_writes_nothing_when_the_state_is_the_same(engine: Engine) -> None:
    contact_id = _contact(engine)
    with Session(engine) as session:
        first = record_consent(
            session=session,
            contact_id=contact_id,
            purpose="marketing",
            granted=False,
            source="unsubscribe_link",
            only_if_changed=True,
        )
        again = record_consent(
            session=session,
            contact_id=contact_id,
            purpose="marketing",
            granted=False,
            source="unsubscribe_link",
            only_if_changed=True,
        )
        session.commit()
    assert first is not None
    assert again is None
    assert _count(engine) == 1


def test_segment_sdk_identify_with_category_preferences_grants_marketing(engine: Engine) -> None:
    # Given an identify as Segment's SDKs send it, with the consent object in context
    call = _call(
        {
            "type": "identify",
            "messageId": "m1",
            "userId": "u1",
            "traits": {"email": "alice@example.com"},
            "context": {
                "ip": "198.51.100.7",
                "userAgent": "Mozilla/5.0",
                "library": {"name": "analytics-python", "version": "2.3.3"},
                "consent": {
                    "categoryPreferences": {"Marketing": True, "Analytics": False},
                    "version": "cmp-2026-01",
                },
            },
            "timestamp": "2026-11-20T10:00:00Z",
        }
    )
    # When its consent is read and recorded, twice (Segment repeats it on every call)
    changes = consent_from_call(call, categories={"marketing": "marketing"}, traits={})
    assert changes == [
        ConsentChange("marketing", True, "segment", "198.51.100.7", "Mozilla/5.0", "cmp-2026-01")
    ]
    contact_id = _contact(engine)
    with Session(engine) as session:
        written = record_changes(session=session, contact_id=contact_id, changes=changes)
        repeated = record_changes(session=session, contact_id=contact_id, changes=changes)
        session.commit()
    # Then one grant is recorded, with its proof
    assert len(written) == 1 and repeated == []
    with Session(engine) as session:
        (record,) = consent_history(session=session, contact_id=contact_id)
        assert (record.granted, record.source, record.ip) == (True, "segment", "198.51.100.7")
        assert record.text_version == "cmp-2026-01"


def test_track_category_false_withdraws_and_non_bools_are_ignored() -> None:
    call = _call(
        {
            "type": "track",
            "event": "Consent Updated",
            "messageId": "m2",
            "userId": "u1",
            "context": {
                "consent": {"categoryPreferences": {"MARKETING": False, "ads": True}},
            },
        }
    )
    assert [(c.purpose, c.granted, c.source) for c in consent_from_call(call)] == [
        ("marketing", False, "segment")
    ]
    ignored = _call(
        {
            "type": "identify",
            "messageId": "m3",
            "userId": "u1",
            "traits": {"marketing_consent": "yes"},
            "context": {"consent": {"categoryPreferences": {"marketing": "true"}}},
        }
    )
    assert consent_from_call(ignored) == []


def test_identify_trait_records_grant_or_withdrawal() -> None:
    call = _call(
        {
            "type": "identify",
            "messageId": "m4",
            "userId": "u1",
            "traits": {"marketing_consent": False, "sms_ok": True},
        }
    )
    changes = consent_from_call(call, traits={"marketing_consent": "marketing", "sms_ok": "sms"})
    assert [(c.purpose, c.granted, c.source) for c in changes] == [
        ("marketing", False, "identify_trait"),
        ("sms", True, "identify_trait"),
    ]
    # A trait on a track call's context is not a consent statement
    track = _call(
        {
            "type": "track",
            "event": "x",
            "messageId": "m5",
            "userId": "u1",
            "properties": {"marketing_consent": True},
        }
    )
    assert consent_from_call(track) == []


def _attempt(engine: Engine, contact_id: int, purpose: str) -> SendAttempt:
    with Session(engine) as session:
        contact = session.get(Contact, contact_id)
        assert contact is not None
    return SendAttempt(rule_name="r", purpose=purpose, contact=contact, moment=NOW)


def test_guard_skips_without_consent_and_lets_transactional_through(engine: Engine) -> None:
    contact_id = _contact(engine)
    guard = ConsentGuard()
    with Session(engine) as session:
        assert guard.check(session, _attempt(engine, contact_id, "transactional")) is None
        verdict = guard.check(session, _attempt(engine, contact_id, "marketing"))
    assert verdict is not None
    assert verdict.outcome == DecisionOutcome.SKIP
    assert verdict.reason == "no marketing consent recorded"
    assert verdict.details["purpose"] == "marketing"


def test_guard_passes_a_grant_and_names_the_withdrawal(engine: Engine) -> None:
    contact_id = _contact(engine)
    guard = ConsentGuard()
    with Session(engine) as session:
        record_consent(
            session=session, contact_id=contact_id, purpose="marketing", granted=True, source="api"
        )
        session.commit()
        assert guard.check(session, _attempt(engine, contact_id, "marketing")) is None
        with freeze_time(NOW):
            withdrawal = record_consent(
                session=session,
                contact_id=contact_id,
                purpose="marketing",
                granted=False,
                source="unsubscribe_link",
            )
        session.commit()
        assert withdrawal is not None
        verdict = guard.check(session, _attempt(engine, contact_id, "marketing"))
    assert verdict is not None and not verdict.allows
    assert verdict.reason == "marketing consent withdrawn 2026-11-20 10:00 UTC (unsubscribe_link)"
    assert verdict.details["consent_record_id"] == withdrawal.id


@pytest.mark.parametrize(
    ("ref", "found"),
    [
        ("alice@example.com", True),
        ("  Alice@EXAMPLE.com ", True),
        ("user:u1", True),
        ("user:u2", False),
        ("bob@example.com", False),
    ],
)
def test_find_contact_by_ref(engine: Engine, ref: str, found: bool) -> None:
    contact_id = _contact(engine)
    with Session(engine) as session:
        contact = find_contact_by_ref(session, ref)
        assert (contact.id if contact else None) == (contact_id if found else None)
        by_id = find_contact_by_ref(session, f"id:{contact_id}")
        assert by_id is not None and by_id.id == contact_id


@pytest.mark.parametrize("ref", ["alice", "id:x", "user:", "not an@address@"])
def test_find_contact_by_ref_refuses_malformed_refs(engine: Engine, ref: str) -> None:
    with Session(engine) as session, pytest.raises(ValueError, match="contact reference"):
        find_contact_by_ref(session, ref)
