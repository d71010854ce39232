"""Delivery: claim, render once, send through SMTP, retry transient failures, never twice."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path

import pytest
from freezegun import freeze_time
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select

from crm_notify.esp import adapter_from_url
from crm_notify.outbox import repository
from crm_notify.outbox.delivery import DeliveryService
from crm_notify.outbox.models import Notification, NotificationStatusChange
from crm_notify.outbox.relay import Relay
from crm_notify.render.templates import TemplateStore
from tests.support.servers import SmtpSink, write_tree

TEMPLATES = {
    "hello/subject.txt": "Hello {{ contact.first_name }}",
    "hello/body.txt": "Order {{ order.order_id }} is {{ order.status }}.",
    "hello/body.html": "<p>Order <b>{{ order.order_id }}</b></p>",
    "broken/subject.txt": "Hi {{ contact.nickname }}",
    "broken/body.txt": "x",
}


def _add_notification(engine: Engine, template: str = "hello", key: str = "k1") -> int:
    with Session(engine) as session:
        notification = Notification(
            idempotency_key=key,
            rule="r",
            template=template,
            purpose="transactional",
            to_address="alice@example.com",
            context={
                "contact": {"first_name": "Alice", "last_name": "Ng"},
                "order": {"order_id": "A1", "status": "shipped"},
            },
        )
        assert repository.create_notification(
            session=session, notification=notification, reason="test"
        )
        session.commit()
        assert notification.id is not None
        return notification.id


def _service(
    engine: Engine, tmp_path: Path, url: str, retries: list[tuple[int, timedelta]]
) -> DeliveryService:
    write_tree(tmp_path / "templates", TEMPLATES)
    return DeliveryService(
        engine=engine,
        templates=TemplateStore(tmp_path / "templates"),
        adapter=adapter_from_url(url),
        mail_from="Shop <shop@example.com>",
        max_attempts=3,
        schedule_retry=lambda nid, delay: retries.append((nid, delay)),
    )


def _statuses(engine: Engine, notification_id: int) -> list[str]:
    with Session(engine) as session:
        rows = session.exec(
            select(NotificationStatusChange)
            .where(NotificationStatusChange.notification_id == notification_id)
            .order_by(col(NotificationStatusChange.id))
        )
        return [row.status for row in rows]


def test_delivers_once_even_when_called_again(
    engine: Engine, tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    # Given a pending notification
    service = _service(engine, tmp_path, smtp_sink.url, [])
    nid = _add_notification(engine)
    # When delivery runs twice for it (a redelivered broker message)
    first = service.deliver(nid)
    second = service.deliver(nid)
    # Then exactly one message arrived, rendered, with our headers
    assert (first.status, second.status) == ("sent", "skipped")
    (message,) = smtp_sink.wait_for(1)
    assert message["Subject"] == "Hello Alice"
    assert message["To"] == "Alice Ng <alice@example.com>"
    assert message["X-CRM-Notify-Id"] == str(nid)
    assert message.get_content_type() == "multipart/alternative"
    assert _statuses(engine, nid) == ["pending", "sending", "sent"]
    with Session(engine) as session:
        row = session.get(Notification, nid)
        assert row is not None and row.message_id == message["Message-ID"]
        assert row.sent_at is not None and row.esp == "smtp"


def test_transient_failure_is_retried_with_the_same_message(
    engine: Engine, tmp_path: Path, smtp_sink: SmtpSink
) -> None:
    # Given a server that greylists
    retries: list[tuple[int, timedelta]] = []
    service = _service(engine, tmp_path, smtp_sink.url, retries)
    nid = _add_notification(engine)
    smtp_sink.reject_with = "451 4.7.1 try later"
    with freeze_time("2026-11-20 12:00:00") as frozen:
        # When the first attempt fails
        outcome = service.deliver(nid)
        # Then a retry is scheduled and an early attempt does nothing
        # (the first backoff step is 10 s; equal jitter waits between 5 and 10 s)
        assert outcome.status == "retrying" and [nid for nid, _ in retries] == [nid]
        assert timedelta(seconds=5) <= retries[0][1] <= timedelta(seconds=10)
        assert service.deliver(nid).status == "skipped"
        with Session(engine) as session:
            row = session.get(Notification, nid)
            assert row is not None
            first_message_id = row.message_id
        # When the server accepts again and the retry is due
        smtp_sink.reject_with = None
        frozen.tick(timedelta(seconds=11))
        assert service.deliver(nid).status == "sent"
    # Then the message that arrived has the Message-ID rendered on the first attempt
    (message,) = smtp_sink.wait_for(1)
    assert message["Message-ID"] == first_message_id
    assert _statuses(engine, nid) == ["pending", "sending", "retrying", "sending", "sent"]


def test_gives_up_after_max_attempts(engine: Engine, tmp_path: Path, smtp_sink: SmtpSink) -> None:
    service = _service(engine, tmp_path, smtp_sink.url, [])
    nid = _add_notification(engine)
    smtp_sink.reject_with = "451 try later"
    with freeze_time("2026-11-20 12:00:00") as frozen:
        outcomes = []
        for _ in range(3):
            outcomes.append(service.deliver(nid).status)
            frozen.tick(timedelta(hours=2))
    assert outcomes == ["retrying", "retrying", "failed"]
    with Session(engine) as session:
        row = session.get(Notification, nid)
        assert row is not None and row.status == "failed" and "3 attempts" in (row.last_error or "")


@pytest.mark.parametrize("template", ["broken"])
def test_permanent_failures_end_in_failed(
    engine: Engine, tmp_path: Path, smtp_sink: SmtpSink, template: str
) -> None:
    # Given a notification whose template uses an undefined variable, and one to a refused address
    service = _service(engine, tmp_path, smtp_sink.url, [])
    broken = _add_notification(engine, template=template, key="a")
    refused = _add_notification(engine, key="b")
    # When delivered
    assert service.deliver(broken).status == "failed"
    smtp_sink.reject_with = "550 5.1.1 no such user"
    assert service.deliver(refused).status == "failed"
    # Then nothing was sent and each row says why
    assert smtp_sink.messages == []
    with Session(engine) as session:
        broken_row, refused_row = (
            session.get(Notification, broken),
            session.get(Notification, refused),
        )
        assert broken_row is not None and "nickname" in (broken_row.last_error or "")
        assert refused_row is not None and "550" in (refused_row.last_error or "")


def test_relay_requeues_stranded_notifications(engine: Engine, tmp_path: Path) -> None:
    # Given a pending row (crash before enqueue) and a row stuck in sending (worker died)
    requeued: list[int] = []
    relay = Relay(engine=engine, enqueue=requeued.extend, interval_s=5, lease_s=600)
    with freeze_time("2026-11-20 12:00:00") as frozen:
        pending = _add_notification(engine, key="p")
        stuck = _add_notification(engine, key="s")
        with Session(engine) as session:
            assert repository.claim_for_delivery(session=session, notification_id=stuck)
            session.commit()
        # When the relay runs right away, Then it leaves both alone
        assert relay.run_once() == 0
        # When 11 s have passed, Then the pending row is requeued
        frozen.tick(timedelta(seconds=11))
        assert relay.run_once() == 1 and requeued == [pending]
        # When the lease has expired, Then the stuck row is requeued for a retry
        frozen.tick(timedelta(minutes=11))
        requeued.clear()
        relay.run_once()
        assert stuck in requeued
        with Session(engine) as session:
            row = session.get(Notification, stuck)
            assert row is not None and row.status == "retrying"
