"""The guards wired into intake and the scheduler: consent, suppression, quiet hours, limits,
dedupe keys, deferrals and digests, each recorded in the decision log with its reason."""

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
from crm_notify.guards import SendPolicy
from crm_notify.guards.consent import ConsentGuard
from crm_notify.guards.quiet_hours import QuietHoursGuard
from crm_notify.guards.rate_limit import RateLimitGuard
from crm_notify.guards.suppression import SuppressionGuard, suppress
from crm_notify.intake import Intake
from crm_notify.outbox.models import Decision, Notification
from crm_notify.rules.loader import load_rules
from crm_notify.rules.model import parse_limit, parse_quiet_hours
from crm_notify.timers.firing import TimerFiring
from crm_notify.timers.models import Timer
from crm_notify.timers.scheduler import Scheduler
from tests.support.servers import write_tree

RULES = {
    "promo.yaml": """
name: promo
trigger: {event: Promo Viewed}
template: order_shipped
purpose: marketing
quiet_hours: false
""",
    "receipt.yaml": """
name: receipt
trigger: {event: Order Completed}
template: order_shipped
purpose: transactional
dedupe_key: "{{ event.properties.order_id }}"
""",
    "night.yaml": """
name: night
trigger: {event: Cart Tip}
template: order_shipped
purpose: marketing
""",
    "capped-drop.yaml": """
name: capped-drop
trigger: {event: Drop Me}
template: order_shipped
purpose: marketing
quiet_hours: false
limit: 1/7d
""",
    "capped-defer.yaml": """
name: capped-defer
trigger: {event: Defer Me}
template: order_shipped
purpose: marketing
quiet_hours: false
limit: {count: 1, per: 1d}
over_limit: defer
""",
    "capped-digest.yaml": """
name: capped-digest
trigger: {event: Digest Me}
template: order_shipped
purpose: marketing
quiet_hours: false
limit: 1/1d
over_limit: digest
digest_template: abandoned_cart
""",
}

#: A Monday, 12:00 UTC (13:00 in Warsaw).
T0 = datetime(2026, 11, 16, 12, 0, tzinfo=UTC)


def _policy(marketing_limit: str | None = None) -> SendPolicy:
    return SendPolicy(
        guards=(
            SuppressionGuard(),
            ConsentGuard(),
            QuietHoursGuard(window=parse_quiet_hours("21:00-08:00"), default_timezone="UTC"),
            RateLimitGuard(
                marketing_limit=parse_limit(marketing_limit) if marketing_limit else None
            ),
        )
    )


@pytest.fixture
def frozen() -> Iterator[FrozenDateTimeFactory]:
    with freeze_time(T0) as factory:
        yield factory


@pytest.fixture
def rules_dir(tmp_path: Path) -> Path:
    write_tree(tmp_path / "rules", RULES)
    return tmp_path / "rules"


def _pipeline(engine: Engine, rules_dir: Path, **policy: Any) -> tuple[Intake, Scheduler]:
    rules = load_rules(rules_dir)
    guards = _policy(**policy)
    intake = Intake(engine=engine, rules=rules, policy=guards)
    scheduler = Scheduler(
        engine=engine, fire=TimerFiring(rules=rules, policy=guards), enqueue=None, interval_s=1
    )
    return intake, scheduler


def _send(intake: Intake, obj: dict[str, Any]) -> None:
    obj = {"userId": "u1", "type": "track", **obj}
    obj.setdefault("timestamp", datetime.now(UTC).isoformat())
    intake.ingest([parse_call(obj, type_hint=None, received_at=datetime.now(UTC))])


def _identify(intake: Intake, **extra: Any) -> None:
    traits = {"email": "alice@example.com", **extra.pop("traits", {})}
    _send(intake, {"type": "identify", "traits": traits, **extra})


def _consent(intake: Intake, granted: bool) -> None:
    _identify(
        intake,
        messageId=f"consent-{granted}-{datetime.now(UTC).isoformat()}",
        context={"consent": {"categoryPreferences": {"Marketing": granted}}},
    )


def _decisions(engine: Engine, rule: str) -> list[Decision]:
    with Session(engine) as session:
        query = select(Decision).where(Decision.rule == rule).order_by(col(Decision.id))
        return list(session.exec(query))


def _notifications(engine: Engine, rule: str | None = None) -> list[Notification]:
    with Session(engine) as session:
        query = select(Notification).order_by(col(Notification.id))
        if rule is not None:
            query = query.where(Notification.rule == rule)
        return list(session.exec(query))


def test_marketing_needs_consent_recorded_from_segment_and_stops_on_withdrawal(
    engine: Engine, rules_dir: Path, frozen: FrozenDateTimeFactory
) -> None:
    intake, _ = _pipeline(engine, rules_dir)
    _identify(intake)
    # No consent recorded: skipped, and the order email still goes out.
    _send(intake, {"event": "Promo Viewed", "messageId": "p1"})
    _send(intake, {"event": "Order Completed", "messageId": "o1", "properties": {"order_id": "A1"}})
    (skipped,) = _decisions(engine, "promo")
    assert (skipped.outcome, skipped.reason) == ("skip", "no marketing consent recorded")
    assert [n.rule for n in _notifications(engine)] == ["receipt"]
    # Consent granted through Segment's consent preferences (category in another case).
    frozen.tick(60)
    _consent(intake, True)
    _send(intake, {"event": "Promo Viewed", "messageId": "p2"})
    assert [n.rule for n in _notifications(engine)] == ["receipt", "promo"]
    # Withdrawn: the next one is skipped, with the withdrawal named.
    frozen.tick(60)
    _consent(intake, False)
    _send(intake, {"event": "Promo Viewed", "messageId": "p3"})
    last = _decisions(engine, "promo")[-1]
    assert last.outcome == "skip"
    assert "marketing consent withdrawn" in last.reason
    assert len(_notifications(engine, "promo")) == 1


def test_hard_suppression_stops_transactional_mail_too(
    engine: Engine, rules_dir: Path, frozen: FrozenDateTimeFactory
) -> None:
    intake, _ = _pipeline(engine, rules_dir)
    _identify(intake)
    with Session(engine) as session:
        suppress(session=session, email="ALICE@example.com", reason="hard_bounce", created_by="t")
        session.commit()
    _send(intake, {"event": "Order Completed", "messageId": "o1", "properties": {"order_id": "A1"}})
    (decision,) = _decisions(engine, "receipt")
    assert decision.outcome == "skip"
    assert "suppressed" in decision.reason
    assert decision.details is not None and decision.details["reason"] == "hard_bounce"
    assert _notifications(engine) == []


def test_dedupe_key_allows_one_notification_per_rule_contact_and_key(
    engine: Engine, rules_dir: Path, frozen: FrozenDateTimeFactory
) -> None:
    intake, _ = _pipeline(engine, rules_dir)
    _identify(intake)
    for index, order in enumerate(["A1", "A1", "B2"]):
        _send(
            intake,
            {
                "event": "Order Completed",
                "messageId": f"o{index}",
                "properties": {"order_id": order},
            },
        )
    assert [n.unique_key for n in _notifications(engine, "receipt")] == ["A1", "B2"]
    repeated = _decisions(engine, "receipt")[1]
    assert repeated.outcome == "skip"
    assert "already sent for dedupe key 'A1'" in repeated.reason


def test_quiet_hours_defer_to_the_window_end_in_the_contacts_zone_then_send_once(
    engine: Engine, rules_dir: Path, frozen: FrozenDateTimeFactory
) -> None:
    intake, scheduler = _pipeline(engine, rules_dir)
    frozen.move_to(datetime(2026, 11, 16, 22, 30, tzinfo=UTC))  # 23:30 in Warsaw
    _identify(intake, traits={"timezone": "Europe/Warsaw"})
    _consent(intake, True)
    _send(intake, {"event": "Cart Tip", "messageId": "n1"})
    (deferred,) = _decisions(engine, "night")
    assert deferred.outcome == "defer"
    assert deferred.reason == "quiet hours until 08:00 Europe/Warsaw"
    assert _notifications(engine) == []
    # Nothing goes out before 08:00 Warsaw (07:00 UTC) ...
    frozen.move_to(datetime(2026, 11, 17, 6, 59, tzinfo=UTC))
    scheduler.run_once()
    assert _notifications(engine) == []
    # ... and exactly one message at the window's end, however often the scheduler runs.
    frozen.move_to(datetime(2026, 11, 17, 7, 0, 1, tzinfo=UTC))
    scheduler.run_once()
    scheduler.run_once()
    (sent,) = _notifications(engine, "night")
    assert sent.idempotency_key == "night:n1"
    assert _decisions(engine, "night")[-1].outcome == "send"


def test_limit_drop_skips_with_the_count_and_last_send(
    engine: Engine, rules_dir: Path, frozen: FrozenDateTimeFactory
) -> None:
    intake, _ = _pipeline(engine, rules_dir)
    _identify(intake)
    _consent(intake, True)
    _send(intake, {"event": "Drop Me", "messageId": "d1"})
    frozen.tick(3600)
    _send(intake, {"event": "Drop Me", "messageId": "d2"})
    first, second = _decisions(engine, "capped-drop")
    assert first.outcome == "send"
    assert second.outcome == "skip"
    assert second.reason == "limit 1 per 7 days reached, last sent 2026-11-16 12:00 UTC"
    assert second.details is not None and second.details["count"] == 1
    assert len(_notifications(engine, "capped-drop")) == 1


def test_limit_within_one_batch_counts_the_batchs_own_sends(
    engine: Engine, rules_dir: Path, frozen: FrozenDateTimeFactory
) -> None:
    intake, _ = _pipeline(engine, rules_dir)
    _identify(intake)
    _consent(intake, True)
    calls = [
        parse_call(
            {"type": "track", "userId": "u1", "event": "Drop Me", "messageId": f"b{i}"},
            type_hint=None,
            received_at=datetime.now(UTC),
        )
        for i in range(3)
    ]
    intake.ingest(calls)
    assert len(_notifications(engine, "capped-drop")) == 1


def test_limit_defer_sends_when_the_window_allows(
    engine: Engine, rules_dir: Path, frozen: FrozenDateTimeFactory
) -> None:
    intake, scheduler = _pipeline(engine, rules_dir)
    _identify(intake)
    _consent(intake, True)
    _send(intake, {"event": "Defer Me", "messageId": "f1"})
    frozen.tick(3600)
    _send(intake, {"event": "Defer Me", "messageId": "f2"})
    assert _decisions(engine, "capped-defer")[-1].outcome == "defer"
    frozen.move_to(T0 + timedelta(hours=23))
    scheduler.run_once()
    assert len(_notifications(engine, "capped-defer")) == 1
    frozen.move_to(T0 + timedelta(days=1, seconds=1))
    scheduler.run_once()
    _first, second = _notifications(engine, "capped-defer")
    assert second.idempotency_key == "capped-defer:f2"


def test_limit_digest_merges_the_sends_over_the_cap_into_one_message(
    engine: Engine, rules_dir: Path, frozen: FrozenDateTimeFactory
) -> None:
    intake, scheduler = _pipeline(engine, rules_dir)
    _identify(intake)
    _consent(intake, True)
    for index in range(3):
        _send(
            intake,
            {"event": "Digest Me", "messageId": f"g{index}", "properties": {"n": index}},
        )
        frozen.tick(60)
    assert len(_notifications(engine, "capped-digest")) == 1
    with Session(engine) as session:
        (digest,) = session.exec(select(Timer).where(Timer.kind == "digest")).all()
    assert digest.payload is not None and len(digest.payload["items"]) == 2
    frozen.move_to(T0 + timedelta(days=1, minutes=1))
    scheduler.run_once()
    _first, merged = _notifications(engine, "capped-digest")
    assert merged.template == "abandoned_cart"
    assert merged.context["digest"]["count"] == 2
    assert [item["event"]["properties"]["n"] for item in merged.context["digest"]["items"]] == [
        1,
        2,
    ]


def test_global_marketing_limit_spans_rules_and_spares_transactional(
    engine: Engine, rules_dir: Path, frozen: FrozenDateTimeFactory
) -> None:
    intake, _ = _pipeline(engine, rules_dir, marketing_limit="1/24h")
    _identify(intake)
    _consent(intake, True)
    _send(intake, {"event": "Promo Viewed", "messageId": "p1"})
    _send(intake, {"event": "Drop Me", "messageId": "d1"})
    _send(intake, {"event": "Order Completed", "messageId": "o1", "properties": {"order_id": "A"}})
    assert sorted(n.rule for n in _notifications(engine)) == ["promo", "receipt"]
    (capped,) = _decisions(engine, "capped-drop")
    assert capped.outcome == "skip"
    assert capped.details is not None and capped.details["scope"] == "marketing"


def test_concurrent_requests_for_one_contact_pass_a_cap_exactly_once(
    engine: Engine, rules_dir: Path
) -> None:
    # Real threads and transactions (no frozen clock): eight requests at once, cap 1.
    intake, _ = _pipeline(engine, rules_dir)
    _identify(intake)
    _consent(intake, True)
    barrier = threading.Barrier(8)
    errors: list[BaseException] = []

    def request(index: int) -> None:
        try:
            barrier.wait()
            _send(intake, {"event": "Drop Me", "messageId": f"race-{index}"})
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=request, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert len(_notifications(engine, "capped-drop")) == 1
    outcomes = sorted(d.outcome for d in _decisions(engine, "capped-drop"))
    assert outcomes == ["send"] + ["skip"] * 7
