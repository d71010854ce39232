"""Per-rule KPIs from sent notifications and stored tracking events: the report function,
``crm-notify kpis`` and ``GET /v1/kpis``; and the effects of tracking events that only the
ingest decides (transactional unsubscribes, mismatched recipients)."""

from __future__ import annotations

import json
from collections.abc import Callable
from datetime import UTC, datetime

import httpx
import pytest
from fastapi import FastAPI
from freezegun import freeze_time
from sqlalchemy.engine import Engine
from sqlmodel import Session, select

from crm_notify.admin.kpis import make_router
from crm_notify.auth import ApiKeyAuthenticator, create_api_key
from crm_notify.commands.kpis import kpis
from crm_notify.config import Settings
from crm_notify.contacts.models import Contact
from crm_notify.db import session_scope
from crm_notify.guards.models import ConsentRecord
from crm_notify.kpis import daily_rule_kpis, rule_kpis
from crm_notify.outbox.models import Notification, NotificationStatus
from crm_notify.webhooks.events import BounceKind, EventType, TrackingEvent
from crm_notify.webhooks.ingest import record_tracking_events
from crm_notify.webhooks.models import TrackingEventRecord
from tests.commands.test_suppression_cli import invoke
from tests.support.servers import serve

SENT_AT = datetime(2026, 11, 20, 10, 0, tzinfo=UTC)


def _notification(
    session: Session,
    n: int,
    *,
    rule: str,
    status: NotificationStatus = NotificationStatus.SENT,
    channel: str = "email",
    contact_id: int | None = None,
    purpose: str = "marketing",
) -> Notification:
    row = Notification(
        idempotency_key=f"{rule}-{n}",
        rule=rule,
        template="t",
        purpose=purpose,
        channel=channel,
        to_address=f"customer{n}@example.com",
        contact_id=contact_id,
        status=status,
        esp="sendgrid",
        esp_message_id=f"sg-{rule}-{n}",
        sent_at=SENT_AT if status == NotificationStatus.SENT else None,
        updated_at=SENT_AT,
    )
    session.add(row)
    session.flush()
    return row


def _event(
    row: Notification, event_type: EventType, suffix: str = "", **extra: object
) -> TrackingEvent:
    return TrackingEvent(
        event_type=event_type,
        provider_event_type=event_type.value,
        provider_message_id=row.esp_message_id,
        recipient=row.to_address,
        event_id=f"{row.id}-{event_type.value}{suffix}",
        **extra,  # type: ignore[arg-type]
    )


@pytest.fixture
def seeded(engine: Engine) -> Engine:
    """Rule promo: 10 sent (8 delivered, 4 opened (one twice), 2 clicked, 2 bounced, 1
    complaint) and 1 failed; rule sms-hook: 3 webhook actions sent."""
    with session_scope(engine) as session:
        promo = [_notification(session, n, rule="promo") for n in range(10)]
        _notification(session, 99, rule="promo", status=NotificationStatus.FAILED)
        for n in range(3):
            _notification(session, 100 + n, rule="sms-hook", channel="webhook")
        events = [_event(row, EventType.DELIVERED) for row in promo[:8]]
        events += [_event(row, EventType.OPENED) for row in promo[:4]]
        events.append(_event(promo[0], EventType.OPENED, suffix="-again"))
        events += [
            _event(row, EventType.CLICKED, url="https://shop.example/sale") for row in promo[:2]
        ]
        events += [_event(row, EventType.BOUNCED, bounce_kind=BounceKind.SOFT) for row in promo[8:]]
        events.append(_event(promo[1], EventType.COMPLAINED))
        summary = record_tracking_events(session=session, provider="sendgrid", events=events)
        assert (summary.stored, summary.unmatched) == (len(events), 0)
    return engine


def test_counts_each_notification_once_and_computes_rates(seeded: Engine) -> None:
    with Session(seeded) as session:
        rows = {(row.rule, row.channel): row for row in rule_kpis(session=session)}
    promo = rows[("promo", "email")]
    assert (promo.sent, promo.failed, promo.delivered, promo.opened, promo.clicked) == (
        10,
        1,
        8,
        4,
        2,
    )
    assert (promo.bounced, promo.complained) == (2, 1)
    assert promo.rates() == {
        "delivery_rate": 0.8,
        "open_rate": 0.5,
        "click_rate": 0.25,
        "bounce_rate": 0.2,
        "complaint_rate": 0.125,
    }
    hook = rows[("sms-hook", "webhook")]
    assert (hook.sent, hook.delivered) == (3, 0)
    assert hook.rates()["open_rate"] == 0.0  # over sent: nothing reports deliveries


def test_window_and_rule_filter(seeded: Engine) -> None:
    with Session(seeded) as session:
        later = rule_kpis(session=session, since=datetime(2026, 11, 21, tzinfo=UTC))
        only = rule_kpis(session=session, rule="sms-hook")
    assert later == []
    assert [(row.rule, row.sent) for row in only] == [("sms-hook", 3)]


def test_cli_table_and_json(seeded: Engine, make_settings: Callable[..., Settings]) -> None:
    settings = make_settings()
    with freeze_time("2026-11-22 12:00:00"):
        table = invoke(kpis, settings)
        as_json = invoke(kpis, settings, "--rule", "promo", "--json")
        old = invoke(kpis, settings, "--since", "1d")
        bad = invoke(kpis, settings, "--since", "yesterday-ish")
    assert table.exit_code == 0, table.output
    header, *lines = table.stdout.splitlines()
    assert header.split() == [
        "RULE",
        "CHANNEL",
        "SENT",
        "FAILED",
        "DELIVERED",
        "OPEN",
        "CLICK",
        "BOUNCE",
        "COMPLAINT",
    ]
    assert lines[0].split() == [
        "promo",
        "email",
        "10",
        "1",
        "80.0%",
        "50.0%",
        "25.0%",
        "20.0%",
        "12.5%",
    ]
    payload = json.loads(as_json.stdout)
    assert payload["since"].startswith("2026-10-23")
    assert [row["rule"] for row in payload["rules"]] == ["promo"]
    assert payload["rules"][0]["complaint_rate"] == 0.125
    assert old.stdout.strip() == "no notifications sent in this period"
    assert bad.exit_code == 2 and "--since" in bad.output


def test_api(seeded: Engine) -> None:
    key = create_api_key("dashboard", engine=seeded)
    app = FastAPI()
    app.include_router(make_router(engine=seeded, authenticate=ApiKeyAuthenticator(engine=seeded)))
    with (
        serve(app) as url,
        httpx.Client(base_url=url) as http,
        freeze_time("2026-11-22 12:00:00", real_asyncio=True),
    ):
        assert http.get("/v1/kpis").status_code == 401
        answer = http.get("/v1/kpis", params={"since": "2026-11-01"}, auth=(key, ""))
        bad = http.get("/v1/kpis", params={"until": "soon"}, auth=(key, ""))
    assert answer.status_code == 200
    rules = {row["rule"]: row for row in answer.json()["rules"]}
    assert rules["promo"]["open_rate"] == 0.5 and rules["sms-hook"]["channel"] == "webhook"
    assert bad.status_code == 422 and bad.json()["field"] == "until"


def test_unsubscribe_from_transactional_mail_withdraws_every_other_purpose(engine: Engine) -> None:
    with session_scope(engine) as session:
        contact = Contact(email="customer1@example.com", user_id="u1")
        session.add(contact)
        session.flush()
        row = _notification(
            session, 1, rule="receipt", contact_id=contact.id, purpose="transactional"
        )
        record_tracking_events(
            session=session,
            provider="sendgrid",
            events=[_event(row, EventType.UNSUBSCRIBED)],
            purposes=["transactional", "marketing", "newsletter"],
        )
    with Session(engine) as session:
        records = session.exec(select(ConsentRecord)).all()
    assert sorted((r.purpose, r.granted, r.source) for r in records) == [
        ("marketing", False, "esp_webhook"),
        ("newsletter", False, "esp_webhook"),
    ]


def test_an_echoed_id_of_another_recipient_is_not_linked(engine: Engine) -> None:
    with session_scope(engine) as session:
        row = _notification(session, 1, rule="promo")
        event = TrackingEvent(
            event_type=EventType.OPENED,
            provider_event_type="open",
            notification_id=row.id,
            recipient="someone.else@example.com",
            event_id="e1",
        )
        summary = record_tracking_events(session=session, provider="sendgrid", events=[event])
    assert summary.unmatched == 1
    with Session(engine) as session:
        (stored,) = session.exec(select(TrackingEventRecord)).all()
    assert stored.notification_id is None


def test_daily_kpis_match_the_totals_day_by_day(seeded: Engine) -> None:
    # Given the seeded notifications, and three more of promo sent late the next day (UTC)
    next_day = datetime(2026, 11, 21, 23, 30, tzinfo=UTC)
    with session_scope(seeded) as session:
        for n in range(3):
            row = _notification(session, 200 + n, rule="promo")
            row.sent_at = next_day
            session.add(row)
    # When the KPIs are taken per day, in one set of grouped queries
    with Session(seeded) as session:
        daily = daily_rule_kpis(
            session=session,
            since=datetime(2026, 11, 19, tzinfo=UTC),
            until=datetime(2026, 11, 23, tzinfo=UTC),
        )
        first_day = rule_kpis(
            session=session,
            since=datetime(2026, 11, 20, tzinfo=UTC),
            until=datetime(2026, 11, 21, tzinfo=UTC),
        )
    # Then each day holds what rule_kpis finds for that day alone
    assert sorted(daily) == ["2026-11-20", "2026-11-21"]
    assert daily["2026-11-20"] == first_day
    [late] = daily["2026-11-21"]
    assert (late.rule, late.sent, late.delivered) == ("promo", 3, 0)
