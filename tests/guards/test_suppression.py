"""The suppression list and its guard: hard and per-purpose entries, idempotent and race-safe."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime

import pytest
from freezegun import freeze_time
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from crm_notify.contacts.models import Contact
from crm_notify.db import session_scope
from crm_notify.errors import EventValidationError
from crm_notify.guards.base import SendAttempt
from crm_notify.guards.models import Suppression, SuppressionReason
from crm_notify.guards.suppression import (
    SuppressionGuard,
    address_hash,
    list_suppressions,
    suppress,
    suppressed_for,
    unsuppress,
)
from crm_notify.outbox.models import DecisionOutcome, Notification

NOW = datetime(2026, 11, 20, 12, 0, tzinfo=UTC)


def _contact(session: Session, email: str | None = "alice@example.com") -> Contact:
    contact = Contact(email=email, user_id="u1")
    session.add(contact)
    session.flush()
    return contact


def _attempt(contact: Contact, purpose: str, **extra: object) -> SendAttempt:
    return SendAttempt(
        rule_name="promo",
        purpose=purpose,
        contact=contact,
        moment=NOW,
        **extra,  # type: ignore[arg-type]
    )


def test_address_hash_ignores_case_and_spaces() -> None:
    assert address_hash(" Alice@Example.COM ") == address_hash("alice@example.com")
    assert address_hash("alice@example.com") != address_hash("bob@example.com")
    assert len(address_hash("alice@example.com")) == 64
    with pytest.raises(EventValidationError):
        address_hash("not an address")


def test_suppress_twice_updates_the_one_entry(engine: Engine) -> None:
    # Given an address suppressed by hand
    with session_scope(engine) as session:
        first = suppress(
            session=session, email="Alice@Example.com", reason="manual", created_by="ops"
        )
    # When a hard bounce for the same address (other case) arrives
    with session_scope(engine) as session:
        second = suppress(
            session=session,
            email="alice@example.com",
            reason=SuppressionReason.HARD_BOUNCE,
            created_by="esp-webhook",
            detail="550 user unknown",
        )
    # Then there is still one entry, now a hard bounce
    with Session(engine) as session:
        rows = session.exec(select(Suppression)).all()
    assert [r.id for r in rows] == [first.id] == [second.id]
    assert rows[0].reason == "hard_bounce"
    assert rows[0].created_by == "esp-webhook"
    assert rows[0].detail == "550 user unknown"
    assert rows[0].email == "alice@example.com"  # as last given, normalised


def test_concurrent_adds_make_one_entry(engine: Engine) -> None:
    # When 8 threads suppress the same address at once
    def add(n: int) -> int | None:
        with session_scope(engine) as session:
            return suppress(
                session=session, email="alice@example.com", reason="complaint", created_by=f"t{n}"
            ).id

    with ThreadPoolExecutor(8) as pool:
        ids = set(pool.map(add, range(16)))
    # Then all got the same entry, and there is only one
    with Session(engine) as session:
        rows = session.exec(select(Suppression)).all()
    assert len(rows) == 1
    assert ids == {rows[0].id}


def test_hard_entry_stops_every_purpose_a_purpose_entry_only_its_own(engine: Engine) -> None:
    with session_scope(engine) as session:
        suppress(
            session=session,
            email="bob@example.com",
            reason="complaint",
            purpose="marketing",
            created_by="ops",
        )
        suppress(session=session, email="carol@example.com", reason="hard_bounce", created_by="x")
    with Session(engine) as session:
        assert suppressed_for(session=session, email="bob@example.com", purpose="marketing")
        assert not suppressed_for(session=session, email="bob@example.com", purpose="transactional")
        for purpose in ("marketing", "transactional", "newsletter"):
            found = suppressed_for(session=session, email="CAROL@example.com", purpose=purpose)
            assert found is not None and found.purpose == "*"
        assert (
            suppressed_for(session=session, email="dave@example.com", purpose="marketing") is None
        )
        assert suppressed_for(session=session, email="not an address", purpose="marketing") is None


def test_unsuppress_removes_only_the_named_purpose(engine: Engine) -> None:
    with session_scope(engine) as session:
        for purpose in ("*", "marketing"):
            suppress(
                session=session,
                email="alice@example.com",
                reason="manual",
                purpose=purpose,
                created_by="ops",
            )
    with session_scope(engine) as session:
        assert unsuppress(session=session, email="ALICE@example.com", purpose="marketing") == 1
        assert unsuppress(session=session, email="alice@example.com", purpose="marketing") == 0
    with Session(engine) as session:
        assert [r.purpose for r in session.exec(select(Suppression))] == ["*"]


def test_list_filters_by_reason_newest_first(engine: Engine) -> None:
    for day, (email, reason) in enumerate(
        [("a@example.com", "manual"), ("b@example.com", "complaint"), ("c@example.com", "manual")],
        start=1,
    ):
        with freeze_time(f"2026-11-0{day}T10:00:00Z"), session_scope(engine) as session:
            suppress(session=session, email=email, reason=reason, created_by="ops")
    with Session(engine) as session:
        manual = list_suppressions(session=session, reason="manual")
        assert [r.email for r in manual] == ["c@example.com", "a@example.com"]
        page = list_suppressions(session=session, limit=1, offset=1)
        assert [r.email for r in page] == ["b@example.com"]


@freeze_time("2026-11-20T12:00:00Z")
def test_guard_skips_a_suppressed_address_with_its_reason(engine: Engine) -> None:
    guard = SuppressionGuard()
    assert guard.name == "suppression" and guard.at_delivery
    with session_scope(engine) as session:
        contact = _contact(session)
        # Given no entry: the guard lets mail through
        assert guard.check(session, _attempt(contact, "transactional")) is None
        # Given a marketing complaint: marketing is skipped, transactional is not
        entry = suppress(
            session=session,
            email="alice@example.com",
            reason="complaint",
            purpose="marketing",
            created_by="ops",
        )
        verdict = guard.check(session, _attempt(contact, "marketing"))
        assert verdict is not None and verdict.outcome == DecisionOutcome.SKIP
        assert verdict.reason == "address suppressed for marketing (complaint, 2026-11-20)"
        assert verdict.details == {
            "suppression_id": entry.id,
            "reason": "complaint",
            "purpose": "marketing",
        }
        assert guard.check(session, _attempt(contact, "transactional")) is None
        # Given a hard bounce: transactional mail is skipped too
        hard = suppress(
            session=session, email="alice@example.com", reason="hard_bounce", created_by="esp"
        )
        verdict = guard.check(session, _attempt(contact, "transactional"))
        assert verdict is not None
        assert verdict.reason == "address suppressed (hard_bounce, 2026-11-20)"
        assert verdict.details["suppression_id"] == hard.id
        # A contact without an address has nothing to suppress
        nobody = Contact(user_id="u2")
        session.add(nobody)
        session.flush()
        assert guard.check(session, _attempt(nobody, "transactional")) is None


def test_guard_at_delivery_checks_the_queued_recipient_too(engine: Engine) -> None:
    # Given a notification queued to an old address, which is then suppressed, while the
    # contact has moved to a new address
    with session_scope(engine) as session:
        contact = _contact(session, "new@example.com")
        notification = Notification(
            idempotency_key="k",
            rule="promo",
            template="t",
            purpose="marketing",
            contact_id=contact.id,
            to_address="old@example.com",
        )
        session.add(notification)
        session.flush()
        suppress(session=session, email="old@example.com", reason="hard_bounce", created_by="esp")
        # Then the delivery-time check skips it
        attempt = _attempt(contact, "marketing", at_delivery=True, notification_id=notification.id)
        verdict = SuppressionGuard().check(session, attempt)
        assert verdict is not None and verdict.details["reason"] == "hard_bounce"
        # Also when given the recipient the claim has just read (no query for it then)
        attempt = _attempt(
            contact,
            "marketing",
            at_delivery=True,
            notification_id=notification.id,
            to_address="old@example.com",
        )
        verdict = SuppressionGuard().check(session, attempt)
        assert verdict is not None and verdict.details["reason"] == "hard_bounce"
        # And a decision-time check (no notification yet) looks at the contact's address only
        assert SuppressionGuard().check(session, _attempt(contact, "marketing")) is None


def test_erased_entries_keep_only_the_hash(engine: Engine) -> None:
    with session_scope(engine) as session:
        entry = suppress(
            session=session,
            email="alice@example.com",
            reason="erased",
            created_by="dpo",
            keep_address=False,
        )
        assert entry.email is None
        assert entry.address_hash == address_hash("alice@example.com")
    with Session(engine) as session:
        assert suppressed_for(session=session, email="Alice@example.com", purpose="transactional")


def test_an_invalid_address_can_be_suppressed_as_invalid(engine: Engine) -> None:
    # Given an address that failed validation at delivery
    with session_scope(engine) as session:
        entry = suppress(
            session=session, email=" Bad..Address@Example ", reason="invalid", created_by="delivery"
        )
        assert entry.email == "Bad..Address@Example"
        # a manual entry still needs a valid address
        with pytest.raises(EventValidationError):
            suppress(session=session, email="bad..address@example", reason="manual", created_by="x")
    # Then sends to it (in any case) are skipped
    with Session(engine) as session:
        found = suppressed_for(
            session=session, email="bad..address@EXAMPLE", purpose="transactional"
        )
        assert found is not None and found.reason == "invalid"
