"""Rate limits: per rule and across marketing, drop/defer/digest, exact under concurrency."""

from __future__ import annotations

import itertools
import threading
import time
from datetime import UTC, datetime, timedelta

import pytest
from freezegun import freeze_time
from sqlalchemy.engine import Engine
from sqlmodel import Session, func, select

from crm_notify.clock import now
from crm_notify.contacts.models import Contact
from crm_notify.db import session_scope
from crm_notify.guards.base import PlannedSend, SendAttempt, Verdict
from crm_notify.guards.rate_limit import RateLimitGuard
from crm_notify.outbox.models import DecisionOutcome, Notification, NotificationStatus
from crm_notify.rules.model import Limit, OverLimit, Rule, parse_limit
from crm_notify.rules.triggers import EventTrigger

MOMENT = datetime(2024, 5, 10, 12, 0, tzinfo=UTC)
WEEKLY = Limit(1, timedelta(days=7))
_keys = itertools.count()


def make_contact(engine: Engine, email: str = "alice@example.com") -> Contact:
    with session_scope(engine) as session:
        contact = Contact(email=email, timezone="Europe/Warsaw")
        session.add(contact)
        session.flush()
        session.refresh(contact)
        return contact


def add_notification(
    session: Session,
    contact: Contact,
    *,
    at: datetime,
    rule: str = "promo",
    purpose: str = "marketing",
    status: NotificationStatus = NotificationStatus.SENT,
) -> None:
    session.add(
        Notification(
            idempotency_key=f"key-{next(_keys)}-{time.monotonic_ns()}",
            rule=rule,
            template="t",
            purpose=purpose,
            contact_id=contact.id,
            to_address="alice@example.com",
            status=status,
            created_at=at,
            updated_at=at,
        )
    )
    session.flush()


def make_rule(
    *,
    limit: Limit | None = WEEKLY,
    over_limit: OverLimit = OverLimit.DROP,
    purpose: str = "marketing",
    name: str = "promo",
) -> Rule:
    return Rule(
        name=name,
        trigger=EventTrigger("X"),
        template="t",
        purpose=purpose,
        limit=limit,
        over_limit=over_limit,
        digest_template="digest" if over_limit is OverLimit.DIGEST else None,
    )


def attempt(
    contact: Contact,
    rule: Rule | None,
    *,
    moment: datetime = MOMENT,
    purpose: str | None = None,
    planned: tuple[PlannedSend, ...] = (),
) -> SendAttempt:
    return SendAttempt(
        rule_name=rule.name if rule else "promo",
        purpose=purpose or (rule.purpose if rule else "marketing"),
        contact=contact,
        moment=moment,
        rule=rule,
        planned=planned,
    )


def check(engine: Engine, guard: RateLimitGuard, send: SendAttempt) -> Verdict | None:
    with session_scope(engine) as session:
        return guard.check(session, send)


RULE_ONLY = RateLimitGuard(marketing_limit=None)


# -- per rule ---------------------------------------------------------------------------------


def test_first_send_passes(engine: Engine) -> None:
    contact = make_contact(engine)
    assert check(engine, RULE_ONLY, attempt(contact, make_rule())) is None


def test_rule_limit_drops_with_the_last_send(engine: Engine) -> None:
    # Given the rule sent to the contact 3 days ago, with a limit of 1 per 7 days
    contact = make_contact(engine)
    with session_scope(engine) as session:
        add_notification(session, contact, at=MOMENT - timedelta(days=3))

    # When the rule wants to send again
    verdict = check(engine, RULE_ONLY, attempt(contact, make_rule()))

    # Then it is skipped, saying which limit and when the last one went
    assert verdict is not None and verdict.outcome == DecisionOutcome.SKIP
    assert verdict.reason == "limit 1 per 7 days reached, last sent 2024-05-07 12:00 UTC"
    assert verdict.details == {
        "limit": "1/7d",
        "count": 1,
        "scope": "rule",
        "last_sent_at": "2024-05-07T12:00:00+00:00",
        "action": "drop",
    }


def test_rule_limit_counts_only_the_window_the_rule_and_the_contact(engine: Engine) -> None:
    # Given sends that must not count: too old, cancelled, failed, another rule, another contact
    contact = make_contact(engine)
    other = make_contact(engine, "bob@example.com")
    with session_scope(engine) as session:
        add_notification(session, contact, at=MOMENT - timedelta(days=7))  # exactly 7d: out
        add_notification(session, contact, at=MOMENT - timedelta(days=8))
        add_notification(
            session, contact, at=MOMENT - timedelta(hours=1), status=NotificationStatus.CANCELLED
        )
        add_notification(
            session, contact, at=MOMENT - timedelta(hours=1), status=NotificationStatus.FAILED
        )
        add_notification(session, contact, at=MOMENT - timedelta(hours=1), rule="other")
        add_notification(session, other, at=MOMENT - timedelta(hours=1))

    # Then the send passes
    assert check(engine, RULE_ONLY, attempt(contact, make_rule())) is None

    # And a pending (queued, not yet sent) one does count
    with session_scope(engine) as session:
        add_notification(
            session, contact, at=MOMENT - timedelta(days=6), status=NotificationStatus.PENDING
        )
    assert check(engine, RULE_ONLY, attempt(contact, make_rule())) is not None


def test_count_above_one(engine: Engine) -> None:
    # Given 2 per day and one send today
    contact = make_contact(engine)
    rule = make_rule(limit=Limit(2, timedelta(days=1)))
    with session_scope(engine) as session:
        add_notification(session, contact, at=MOMENT - timedelta(hours=5))
    # Then a second passes; after it, a third is dropped
    assert check(engine, RULE_ONLY, attempt(contact, rule)) is None
    with session_scope(engine) as session:
        add_notification(session, contact, at=MOMENT - timedelta(hours=1))
    verdict = check(engine, RULE_ONLY, attempt(contact, rule))
    assert verdict is not None
    assert verdict.reason.startswith("limit 2 per day reached, last sent 2024-05-10 11:00 UTC")
    assert verdict.details["count"] == 2


def test_defer_waits_until_the_oldest_send_leaves_the_window(engine: Engine) -> None:
    # Given 2 per day, sent 20 and 5 hours ago; the rule defers
    contact = make_contact(engine)
    rule = make_rule(limit=Limit(2, timedelta(days=1)), over_limit=OverLimit.DEFER)
    with session_scope(engine) as session:
        add_notification(session, contact, at=MOMENT - timedelta(hours=5))
        add_notification(session, contact, at=MOMENT - timedelta(hours=20))

    # When checked
    verdict = check(engine, RULE_ONLY, attempt(contact, rule))

    # Then it is deferred to when the 20-hours-old send is a day old
    assert verdict is not None and verdict.outcome == DecisionOutcome.DEFER
    assert verdict.until == MOMENT + timedelta(hours=4)
    assert verdict.reason == ("limit 2 per day reached; deferred until 2024-05-10 16:00 UTC")
    assert verdict.details["action"] == "defer"
    assert verdict.details["until"] == "2024-05-10T16:00:00+00:00"

    # And at that time the send passes
    later = attempt(contact, rule, moment=MOMENT + timedelta(hours=4))
    assert check(engine, RULE_ONLY, later) is None


def test_defer_over_the_count_waits_for_enough_sends_to_leave(engine: Engine) -> None:
    # Given 3 counted sends under a limit of 2 (a limit lowered since): two must leave
    contact = make_contact(engine)
    rule = make_rule(limit=Limit(2, timedelta(days=1)), over_limit=OverLimit.DEFER)
    with session_scope(engine) as session:
        for hours in (22, 10, 2):
            add_notification(session, contact, at=MOMENT - timedelta(hours=hours))
    verdict = check(engine, RULE_ONLY, attempt(contact, rule))
    assert verdict is not None and verdict.until == MOMENT + timedelta(hours=14)


def test_digest_defers_with_the_digest_action(engine: Engine) -> None:
    contact = make_contact(engine)
    rule = make_rule(over_limit=OverLimit.DIGEST)
    with session_scope(engine) as session:
        add_notification(session, contact, at=MOMENT - timedelta(days=2))
    verdict = check(engine, RULE_ONLY, attempt(contact, rule))
    assert verdict is not None and verdict.outcome == DecisionOutcome.DEFER
    assert verdict.until == MOMENT + timedelta(days=5)
    assert verdict.details["action"] == "digest"
    assert "collected into a digest sent at 2024-05-15 12:00 UTC" in verdict.reason


def test_planned_sends_of_the_same_transaction_count(engine: Engine) -> None:
    # Given nothing written yet, but a send of the rule planned earlier in this transaction
    contact = make_contact(engine)
    assert contact.id is not None
    planned = (PlannedSend(contact.id, "promo", "marketing", MOMENT - timedelta(minutes=1)),)
    verdict = check(engine, RULE_ONLY, attempt(contact, make_rule(), planned=planned))
    assert verdict is not None and verdict.details["count"] == 1

    # Planned sends of another contact or rule, or out of the window, do not
    others = (
        PlannedSend(contact.id + 1000, "promo", "marketing", MOMENT),
        PlannedSend(contact.id, "other", "marketing", MOMENT),
        PlannedSend(contact.id, "promo", "marketing", MOMENT - timedelta(days=8)),
    )
    assert check(engine, RULE_ONLY, attempt(contact, make_rule(), planned=others)) is None


def test_no_limit_no_check(engine: Engine) -> None:
    contact = make_contact(engine)
    with session_scope(engine) as session:
        add_notification(session, contact, at=MOMENT - timedelta(minutes=1))
    assert check(engine, RULE_ONLY, attempt(contact, make_rule(limit=None))) is None


# -- across marketing -------------------------------------------------------------------------


GLOBAL = RateLimitGuard(marketing_limit=parse_limit("3/24h"))


def test_marketing_limit_counts_every_non_transactional_rule(engine: Engine) -> None:
    # Given two marketing sends and one newsletter send today, of other rules, and transactional
    contact = make_contact(engine)
    with session_scope(engine) as session:
        add_notification(session, contact, at=MOMENT - timedelta(hours=1), rule="a")
        add_notification(session, contact, at=MOMENT - timedelta(hours=2), rule="b")
        add_notification(session, contact, at=MOMENT - timedelta(hours=3), rule="c")
        add_notification(
            session,
            contact,
            at=MOMENT - timedelta(hours=3),
            rule="order",
            purpose="transactional",
        )
    # Then a fourth marketing send (of a rule without its own limit) is dropped
    verdict = check(engine, GLOBAL, attempt(contact, make_rule(limit=None)))
    assert verdict is not None and verdict.outcome == DecisionOutcome.SKIP
    assert verdict.reason == "marketing limit 3 per day reached, last sent 2024-05-10 11:00 UTC"
    assert verdict.details["scope"] == "marketing"
    assert verdict.details["count"] == 3
    # A custom purpose counts as marketing too; a removed rule's send is dropped as well
    newsletter = make_rule(limit=None, purpose="newsletter")
    assert check(engine, GLOBAL, attempt(contact, newsletter)) is not None
    assert check(engine, GLOBAL, attempt(contact, None)) is not None
    # Transactional mail is never capped by it
    order = make_rule(limit=None, purpose="transactional", name="order")
    assert check(engine, GLOBAL, attempt(contact, order)) is None


def test_marketing_limit_uses_the_rules_over_limit(engine: Engine) -> None:
    contact = make_contact(engine)
    with session_scope(engine) as session:
        for hours in (1, 2, 23):
            add_notification(session, contact, at=MOMENT - timedelta(hours=hours), rule="a")
    rule = make_rule(limit=None, over_limit=OverLimit.DEFER)
    verdict = check(engine, GLOBAL, attempt(contact, rule))
    assert verdict is not None and verdict.until == MOMENT + timedelta(hours=1)
    assert verdict.details["scope"] == "marketing"


def test_transactional_sends_do_not_fill_the_marketing_cap(engine: Engine) -> None:
    contact = make_contact(engine)
    with session_scope(engine) as session:
        for hours in (1, 2, 3):
            add_notification(
                session, contact, at=MOMENT - timedelta(hours=hours), purpose="transactional"
            )
    assert check(engine, GLOBAL, attempt(contact, make_rule(limit=None))) is None


def test_rule_limit_is_checked_before_the_marketing_limit(engine: Engine) -> None:
    contact = make_contact(engine)
    with session_scope(engine) as session:
        for hours in (1, 2, 3):
            add_notification(session, contact, at=MOMENT - timedelta(hours=hours))
    verdict = check(engine, GLOBAL, attempt(contact, make_rule()))
    assert verdict is not None and verdict.details["scope"] == "rule"


def test_moment_from_the_frozen_clock(engine: Engine) -> None:
    # Given a send an hour before the frozen now
    contact = make_contact(engine)
    with freeze_time("2024-05-10 12:00:00"):
        with session_scope(engine) as session:
            add_notification(session, contact, at=now() - timedelta(hours=1))
        verdict = check(engine, RULE_ONLY, attempt(contact, make_rule(), moment=now()))
    assert verdict is not None
    assert verdict.reason.endswith("last sent 2024-05-10 11:00 UTC")


# -- concurrency ------------------------------------------------------------------------------


@pytest.mark.parametrize("count", [1, 3])
def test_concurrent_deciders_never_pass_the_cap_together(engine: Engine, count: int) -> None:
    # Given 8 threads, each deciding in its own transaction for the same contact and rule,
    # and taking a while between checking and writing (the race a read-then-write would lose)
    contact = make_contact(engine)
    rule = make_rule(limit=Limit(count, timedelta(days=7)))
    guard = RateLimitGuard(marketing_limit=None)
    start = threading.Barrier(8)
    passed: list[int] = []
    errors: list[BaseException] = []

    def decide(index: int) -> None:
        try:
            start.wait()
            with session_scope(engine) as session:
                verdict = guard.check(session, attempt(contact, rule, moment=now()))
                if verdict is None:
                    time.sleep(0.05)
                    add_notification(session, contact, at=now())
                    passed.append(index)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=decide, args=(index,)) for index in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)

    # Then exactly `count` of them passed and wrote a notification
    assert errors == []
    assert len(passed) == count
    with Session(engine) as session:
        rows = session.exec(
            select(func.count()).select_from(Notification).where(Notification.rule == "promo")
        ).one()
    assert rows == count
