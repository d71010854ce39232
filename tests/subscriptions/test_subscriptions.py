"""Webhook subscriptions (issue 8): lifecycle events reach subscribers as signed requests
(verified with the `standardwebhooks` library), filtered by event and source, retried with
backoff, disabled after their failure period, counted; on SQLite and PostgreSQL, against real
HTTP receivers on loopback."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
from freezegun import freeze_time
from sqlalchemy.engine import Engine
from sqlmodel import Session, select
from standardwebhooks import Webhook

from crm_notify._net import OutboundPolicy
from crm_notify.actions.signing import new_secret
from crm_notify.contacts.models import Contact
from crm_notify.db import session_scope
from crm_notify.events.schemas import parse_call
from crm_notify.gdpr.erase import erase_contact
from crm_notify.guards.consent import record_consent
from crm_notify.guards.models import ConsentSource
from crm_notify.lifecycle.emit import emit
from crm_notify.lifecycle.models import LifecycleName, LifecycleSource
from crm_notify.migrations import upgrade
from crm_notify.runtime import Runtime
from crm_notify.subscriptions import repository
from crm_notify.subscriptions.dispatcher import RETRY_SCHEDULE, SubscriptionDispatcher
from crm_notify.subscriptions.models import SubscriptionDelivery, WebhookSubscription
from crm_notify.subscriptions.sender import SubscriptionSender
from tests.esp._api_server import Answer, ApiServer, RecordedRequest

START = datetime(2026, 12, 1, 9, 0, tzinfo=UTC)


@pytest.fixture
def runtime(make_settings: Any) -> Iterator[Runtime]:
    built = Runtime.from_settings(make_settings())
    upgrade(built.engine)
    yield built
    built.close()


@pytest.fixture
def receiver() -> Iterator[ApiServer]:
    with ApiServer() as server:
        yield server


def _subscribe(engine: Engine, url: str, **options: Any) -> tuple[str, str]:
    """Subscribe ``url``; return its name and signing secret."""
    with session_scope(engine) as session:
        subscription = repository.create(session=session, url=url, **options)
        assert subscription.secret is not None
        return subscription.name, subscription.secret


def _identify(runtime: Runtime, **traits: Any) -> int:
    moment = datetime.now(UTC)
    body = {"type": "identify", "userId": "u1", "traits": {"email": "ada@example.com", **traits}}
    runtime.intake.ingest(
        [parse_call({"timestamp": moment.isoformat(), **body}, type_hint=None, received_at=moment)]
    )
    with Session(runtime.engine) as session:
        contact = session.exec(select(Contact).where(Contact.user_id == "u1")).one()
        assert contact.id is not None
        return contact.id


def _pass(runtime: Runtime) -> None:
    """One lifecycle relay pass (queues the deliveries) and one dispatcher pass (sends them)."""
    runtime.lifecycle.run_once()
    runtime.subscriptions.run_once()


def _verified(request: RecordedRequest, secret: str) -> Any:
    """The payload of a request whose Standard Webhooks signature the official library accepts."""
    return Webhook(secret).verify(request.body, request.headers)


def _subscription(engine: Engine, name: str) -> WebhookSubscription:
    with Session(engine) as session:
        row = repository.by_name(session=session, name=name)
        assert row is not None
        return row


def _deliveries(engine: Engine) -> list[SubscriptionDelivery]:
    with Session(engine) as session:
        return list(session.exec(select(SubscriptionDelivery)))


def test_each_lifecycle_event_reaches_the_subscriber_signed(
    runtime: Runtime, receiver: ApiServer
) -> None:
    # Given a subscription to every event and a contact
    _name, secret = _subscribe(runtime.engine, f"{receiver.url}/hooks")
    contact_id = _identify(runtime, first_name="Ada")
    _pass(runtime)
    receiver.clear()
    # When each kind of lifecycle event is emitted
    with session_scope(runtime.engine) as session:
        for name in LifecycleName:
            emit(session, name, contact_id=contact_id, source=LifecycleSource.SYSTEM, n=name.value)
    _pass(runtime)
    # Then each reaches the receiver once, signed, with the contact and its fields
    payloads = [_verified(request, secret) for request in receiver.requests]
    assert sorted(p["type"] for p in payloads) == sorted(name.value for name in LifecycleName)
    for payload in payloads:
        data = payload["data"]
        assert data["n"] == payload["type"] and data["source"] == "system"
        assert data["contact"] == {"id": contact_id, "user_id": "u1", "email": "ada@example.com"}
        assert data["event_id"].startswith("lc_")
    assert len({request.headers["webhook-id"] for request in receiver.requests}) == len(payloads)
    assert _deliveries(runtime.engine) == []


def test_real_changes_reach_the_subscriber_with_their_source(
    runtime: Runtime, receiver: ApiServer
) -> None:
    # Given a subscription to profile and consent changes made by the contact or the API
    _name, secret = _subscribe(
        runtime.engine,
        f"{receiver.url}/hooks",
        events=["contact.profile_updated", "contact.unsubscribed", "contact.subscribed"],
        sources=["contact", "api"],
    )
    contact_id = _identify(runtime, first_name="Ada")
    # When the shop updates the profile, an admin grants consent and the contact unsubscribes
    _identify(runtime, first_name="Ada", last_name="Lovelace")
    with session_scope(runtime.engine) as session:
        for granted, source in (
            (True, ConsentSource.ADMIN),
            (False, ConsentSource.UNSUBSCRIBE_LINK),
        ):
            record_consent(
                session=session,
                contact_id=contact_id,
                purpose="marketing",
                granted=granted,
                source=source,
                actor="test",
            )
    _pass(runtime)
    # Then the profile change (api) and the unsubscription (contact) arrive; the admin's grant
    # does not (its source is not subscribed)
    payloads = [_verified(request, secret) for request in receiver.requests]
    assert [(p["type"], p["data"]["source"]) for p in payloads] == [
        ("contact.profile_updated", "api"),
        ("contact.unsubscribed", "contact"),
    ]
    assert payloads[0]["data"]["changed"] == ["last_name"]
    assert payloads[1]["data"]["purpose"] == "marketing"
    assert _subscription(runtime.engine, _name).sent_count == 2


def test_a_form_subscription_gets_bracketed_fields(runtime: Runtime, receiver: ApiServer) -> None:
    _name, secret = _subscribe(
        runtime.engine, f"{receiver.url}/mc", content_type="form", events=["contact.cleaned"]
    )
    contact_id = _identify(runtime)
    with session_scope(runtime.engine) as session:
        emit(
            session,
            LifecycleName.CLEANED,
            contact_id=contact_id,
            source=LifecycleSource.SYSTEM,
            reason="hard_bounce",
        )
    _pass(runtime)
    (request,) = receiver.requests
    # The signature covers the form body as sent (verify() would also parse it as JSON)
    sent_at = datetime.fromtimestamp(int(request.headers["webhook-timestamp"]), UTC)
    expected = Webhook(secret).sign(request.headers["webhook-id"], sent_at, request.text)
    assert request.headers["webhook-signature"] == expected
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    fields = parse_qs(request.text)
    assert fields["type"] == ["contact.cleaned"]
    assert fields["data[reason]"] == ["hard_bounce"]
    assert fields["data[contact][email]"] == ["ada@example.com"]


def test_failures_are_retried_with_backoff_under_the_same_id(
    runtime: Runtime, receiver: ApiServer
) -> None:
    name, secret = _subscribe(
        runtime.engine, f"{receiver.url}/hooks", events=["contact.subscribed"]
    )
    with freeze_time(START) as clock:
        contact_id = _identify(runtime)
        runtime.lifecycle.run_once()
        receiver.clear()
        with session_scope(runtime.engine) as session:
            emit(
                session, LifecycleName.SUBSCRIBED, contact_id=contact_id, source=LifecycleSource.API
            )
        # Given a receiver that fails twice (the second time asking for 60 s), then answers
        receiver.respond(503, body="down")
        receiver.respond(429, headers={"Retry-After": "60"})
        _pass(runtime)
        first = _subscription(runtime.engine, name)
        assert (first.failed_count, first.last_status) == (1, 503), first.last_error
        assert first.last_error == "answered 503: down"
        # When the dispatcher runs before the first backoff step is over, nothing is sent
        clock.tick(RETRY_SCHEDULE[0].total_seconds() - 1)
        runtime.subscriptions.run_once()
        assert len(receiver.requests) == 1
        # Then after it, the second attempt; after Retry-After (longer than 5 min), the third
        clock.tick(2)
        runtime.subscriptions.run_once()
        assert len(receiver.requests) == 2
        clock.tick(RETRY_SCHEDULE[1].total_seconds() + 1)
        runtime.subscriptions.run_once()
        assert len(receiver.requests) == 3
        assert _verified(receiver.last, secret)["type"] == "contact.subscribed"
    ids = {request.headers["webhook-id"] for request in receiver.requests}
    assert len(ids) == 1
    assert len({request.headers["webhook-timestamp"] for request in receiver.requests}) == 3
    done = _subscription(runtime.engine, name)
    assert (done.sent_count, done.failed_count, done.last_status) == (1, 2, 200)
    assert done.failing_since is None and done.last_error is None
    assert _deliveries(runtime.engine) == []


def test_a_failing_subscription_is_disabled_with_its_reason_and_resumes_when_enabled(
    runtime: Runtime, receiver: ApiServer
) -> None:
    name, secret = _subscribe(
        runtime.engine,
        f"{receiver.url}/hooks",
        events=["contact.subscribed", "contact.cleaned"],
        disable_after="10m",
    )
    with freeze_time(START) as clock:
        contact_id = _identify(runtime)
        runtime.lifecycle.run_once()
        receiver.clear()
        receiver.default = Answer(500, body="boom")
        with session_scope(runtime.engine) as session:
            emit(
                session, LifecycleName.SUBSCRIBED, contact_id=contact_id, source=LifecycleSource.API
            )
        # Given every attempt fails for longer than the subscription's failure period
        _pass(runtime)
        for step in RETRY_SCHEDULE[:3]:  # 5 s, 5 min, 30 min: past the 10 minutes
            clock.tick(step.total_seconds() + 1)
            runtime.subscriptions.run_once()
        state = _subscription(runtime.engine, name)
        # Then it is disabled, saying why, and its delivery waits
        assert not state.enabled
        assert state.disabled_reason is not None
        assert state.disabled_reason.startswith("disabled automatically: every attempt failed for")
        assert state.disabled_reason.endswith("last: answered 500: boom")
        assert state.failed_count == 4
        # And new events are not queued for it, nor is the waiting one sent
        with session_scope(runtime.engine) as session:
            emit(
                session, LifecycleName.CLEANED, contact_id=contact_id, source=LifecycleSource.SYSTEM
            )
        clock.tick(timedelta(hours=3).total_seconds())
        _pass(runtime)
        assert len(receiver.requests) == 4
        assert [d.event_name for d in _deliveries(runtime.engine)] == ["contact.subscribed"]
        # When the receiver is fixed and an admin enables the subscription again
        receiver.default = Answer(204)
        with session_scope(runtime.engine) as session:
            row = repository.by_name(session=session, name=name)
            assert row is not None
            repository.set_enabled(session=session, subscription=row, enabled=True, reason=None)
        runtime.subscriptions.run_once()
        # Then the waiting delivery goes out
        assert _verified(receiver.last, secret)["type"] == "contact.subscribed"
    assert _subscription(runtime.engine, name).enabled
    assert _deliveries(runtime.engine) == []


def test_a_dead_subscriber_does_not_hold_up_another(runtime: Runtime, receiver: ApiServer) -> None:
    # Given a subscriber that never answers in time and a healthy one, each with 4 events
    dispatcher = SubscriptionDispatcher(
        engine=runtime.engine,
        sender=SubscriptionSender(environ={}, policy=OutboundPolicy.allow_loopback(), timeout_s=1),
        interval_s=1,
    )
    with ApiServer() as slow:
        slow.default = Answer(200, delay_s=30)
        dead_name, _ = _subscribe(runtime.engine, f"{slow.url}/slow", name="slow")
        _subscribe(runtime.engine, f"{receiver.url}/hooks", name="healthy")
        contact_id = _identify(runtime)
        with session_scope(runtime.engine) as session:
            for _ in range(3):
                emit(
                    session,
                    LifecycleName.SUBSCRIBED,
                    contact_id=contact_id,
                    source=LifecycleSource.API,
                )
        runtime.lifecycle.run_once()
        # When one pass runs
        started = time.monotonic()
        dispatcher.run_once()
        elapsed = time.monotonic() - started
        dispatcher.stop()
    # Then the healthy subscriber got everything; the dead one cost one timeout, its other
    # deliveries wait uncounted
    assert len(receiver.requests) == 4
    assert elapsed < 5
    dead = _subscription(runtime.engine, dead_name)
    assert (dead.failed_count, dead.last_error) == (1, "timeout after 1s")
    waiting = [d for d in _deliveries(runtime.engine) if d.subscription_id == dead.id]
    assert sorted(d.attempts for d in waiting) == [0, 0, 0, 1]


def test_a_refused_address_is_a_failure_without_a_request(
    make_settings: Any, receiver: ApiServer
) -> None:
    # Given a service whose outbound policy allows public addresses only
    built = Runtime.from_settings(make_settings(outbound_allow_networks=""))
    upgrade(built.engine)
    try:
        name, _ = _subscribe(built.engine, f"{receiver.url}/hooks")
        _identify(built)
        _pass(built)
        state = _subscription(built.engine, name)
    finally:
        built.close()
    assert receiver.requests == []
    assert state.last_error is not None and state.last_error.startswith(
        "refused address 127.0.0.1 (loopback)"
    )


def test_erasing_a_contact_removes_their_waiting_deliveries(
    runtime: Runtime, receiver: ApiServer
) -> None:
    receiver.default = Answer(500)
    _subscribe(runtime.engine, f"{receiver.url}/hooks")
    contact_id = _identify(runtime)
    _pass(runtime)
    assert _deliveries(runtime.engine)
    with session_scope(runtime.engine) as session:
        contact = session.get(Contact, contact_id)
        assert contact is not None
        erase_contact(session=session, contact=contact, actor="test")
    assert _deliveries(runtime.engine) == []


def test_invalid_subscriptions_name_the_field(engine: Engine) -> None:
    with session_scope(engine) as session:
        cases: list[tuple[dict[str, Any], str]] = [
            ({"url": "ftp://x.example/h"}, "url: unsupported URL scheme 'ftp'"),
            ({"url": "http://crm.example/h"}, "url: plain http:// is allowed only to loopback"),
            ({"url": "https://u:p@crm.example/h"}, "url: credentials in the URL are not allowed"),
            ({"url": "https://crm.example/h", "events": ["contact.deleted"]}, "events: unknown"),
            ({"url": "https://crm.example/h", "sources": ["shop"]}, "sources: unknown 'shop'"),
            ({"url": "https://crm.example/h", "disable_after": "10s"}, "disable_after: at least"),
            (
                {"url": "https://crm.example/h", "headers": {"webhook-id": "x"}},
                "headers: webhook-id",
            ),
            ({"url": "https://crm.example/h", "name": "Bad Name"}, "name: 1 to 64"),
            ({"url": "https://⒈.example/h"}, "url: invalid URL: Invalid IDNA hostname"),
            (
                {"url": "https://crm.example/h", "headers": {"X-Key": "café"}},
                "headers: X-Key: ASCII",
            ),
        ]
        for options, message in cases:
            with pytest.raises(repository.SubscriptionError) as caught:
                repository.create(session=session, **options)
            assert str(caught.value).startswith(message), (options, str(caught.value))
        repository.create(session=session, url="https://crm.example/h", name="crm")
        with pytest.raises(repository.SubscriptionError, match="name: a subscription named 'crm'"):
            repository.create(session=session, url="https://crm.example/h", name="crm")


def test_a_payload_json_is_compact_utf8(runtime: Runtime, receiver: ApiServer) -> None:
    _name, secret = _subscribe(
        runtime.engine, f"{receiver.url}/hooks", events=["contact.subscribed"]
    )
    contact_id = _identify(runtime, first_name="Zoë")
    with session_scope(runtime.engine) as session:
        emit(
            session,
            LifecycleName.SUBSCRIBED,
            contact_id=contact_id,
            source=LifecycleSource.API,
            note="Zoë",
        )
    _pass(runtime)
    (request,) = receiver.requests
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.body)["data"]["note"] == "Zoë"
    assert "Zoë".encode() in request.body
    _verified(request, secret)


def test_the_file_subscriptions_sync(runtime: Runtime, tmp_path: Path, monkeypatch: Any) -> None:
    from crm_notify.errors import RuleFileError
    from crm_notify.subscriptions.file import load_file, sync_file

    secret = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
    environ = {"CRM_SECRET": secret, "CRM_KEY": "k-1"}
    path = tmp_path / "webhooks.yaml"
    path.write_text(
        "subscriptions:\n"
        "  - name: crm\n"
        "    url: https://crm.example/hooks\n"
        "    events: [contact.unsubscribed]\n"
        "    headers: {X-Api-Key: '${CRM_KEY}'}\n"
        "    secret: ${CRM_SECRET}\n"
    )
    with session_scope(runtime.engine) as session:
        assert sync_file(session, load_file(path, environ=environ)) == {
            "added": 1,
            "updated": 0,
            "disabled": 0,
        }
    row = _subscription(runtime.engine, "crm")
    assert (row.origin, row.events, row.secret, row.secret_variable) == (
        "file",
        ["contact.unsubscribed"],
        None,
        "CRM_SECRET",
    )
    good = path.read_text()
    # A mistake names the file and line
    path.write_text(
        "subscriptions:\n  - name: crm\n    url: https://crm.example/hooks\n    secret: whsec_abc\n"
    )
    with pytest.raises(RuleFileError) as caught:
        load_file(path, environ=environ)
    assert str(caught.value).startswith(f"{path}:4: subscriptions[0].secret: name the environment")
    # An entry no longer in the file is disabled, saying so, and enabled again when it is back
    path.write_text("subscriptions: []\n")
    with session_scope(runtime.engine) as session:
        assert sync_file(session, load_file(path, environ=environ))["disabled"] == 1
    gone = _subscription(runtime.engine, "crm")
    assert (gone.enabled, gone.disabled_reason) == (False, "no longer in the subscriptions file")
    path.write_text(good)
    with session_scope(runtime.engine) as session:
        assert sync_file(session, load_file(path, environ=environ))["updated"] == 1
    assert _subscription(runtime.engine, "crm").enabled


def test_metrics_show_each_subscriptions_counters(runtime: Runtime, receiver: ApiServer) -> None:
    from prometheus_client import CollectorRegistry, generate_latest

    from crm_notify.metrics import DatabaseMetrics

    # Given a subscription that got one event, then failed one
    _subscribe(runtime.engine, f"{receiver.url}/hooks", name="crm")
    contact_id = _identify(runtime)
    _pass(runtime)
    receiver.respond(503)
    with session_scope(runtime.engine) as session:
        emit(session, LifecycleName.CLEANED, contact_id=contact_id, source=LifecycleSource.SYSTEM)
    _pass(runtime)
    # When Prometheus scrapes
    registry = CollectorRegistry()
    registry.register(DatabaseMetrics(engine=runtime.engine))
    text = generate_latest(registry).decode()
    # Then the subscription's counters and state are there
    for line in (
        'crm_notify_webhook_subscription_requests_total{result="sent",subscription="crm"} 1.0',
        'crm_notify_webhook_subscription_requests_total{result="failed",subscription="crm"} 1.0',
        'crm_notify_webhook_subscription_enabled{subscription="crm"} 1.0',
        'crm_notify_webhook_subscription_last_status{subscription="crm"} 503.0',
        'crm_notify_webhook_subscription_deliveries_waiting{subscription="crm"} 1.0',
    ):
        assert line in text, text


def test_a_subscriber_gets_its_events_in_order_through_failures(
    runtime: Runtime, receiver: ApiServer
) -> None:
    # Given a subscriber that fails twice, then recovers, while a contact subscribes and then
    # unsubscribes (its CRM must end with the contact unsubscribed)
    _name, secret = _subscribe(
        runtime.engine,
        f"{receiver.url}/hooks",
        events=["contact.subscribed", "contact.unsubscribed"],
    )
    with freeze_time(START) as clock:
        contact_id = _identify(runtime)
        with session_scope(runtime.engine) as session:
            for name in (LifecycleName.SUBSCRIBED, LifecycleName.UNSUBSCRIBED):
                emit(session, name, contact_id=contact_id, source=LifecycleSource.CONTACT)
        receiver.respond(503)
        receiver.respond(503)
        _pass(runtime)
        # When the dispatcher runs through the retries
        for _ in range(100):  # every 10 s: later events are due long before the retry is
            if not _deliveries(runtime.engine):
                break
            clock.tick(10)
            runtime.subscriptions.run_once()
        assert _verified(receiver.last, secret)["type"] == "contact.unsubscribed"
    # Then every attempt kept the order: the subscription twice (failed), then both
    sent = [json.loads(request.body)["type"] for request in receiver.requests]
    assert sent == ["contact.subscribed"] * 3 + ["contact.unsubscribed"]
    assert _deliveries(runtime.engine) == []


def test_a_url_the_client_refuses_is_recorded_as_a_failure(
    runtime: Runtime, receiver: ApiServer
) -> None:
    # Given a subscription whose URL the HTTP client refuses (written before the check existed)
    with session_scope(runtime.engine) as session:
        session.add(
            WebhookSubscription(
                name="odd", url="https://⒈.example/h", secret=new_secret(), disable_after_s=3600
            )
        )
    _identify(runtime)
    _pass(runtime)
    # Then the attempt is a failure with the reason, retried later, never stuck
    state = _subscription(runtime.engine, "odd")
    assert state.failed_count == 1
    assert (state.last_error or "").startswith("invalid URL: ")
    (delivery,) = _deliveries(runtime.engine)
    assert (delivery.status, delivery.attempts) == ("pending", 1)


def test_export_and_retention_cover_waiting_deliveries(
    runtime: Runtime, receiver: ApiServer
) -> None:
    from crm_notify.gdpr.export import export_contact
    from crm_notify.gdpr.retention import purge

    receiver.default = Answer(500)
    _subscribe(runtime.engine, f"{receiver.url}/hooks")
    with freeze_time(START):
        contact_id = _identify(runtime)
        _pass(runtime)
    with Session(runtime.engine) as session:
        contact = session.get(Contact, contact_id)
        assert contact is not None
        exported = export_contact(session=session, contact=contact)
    (delivery,) = exported["webhook_deliveries"]
    assert "ada@example.com" in delivery["body"]
    with freeze_time(START + timedelta(days=400)), session_scope(runtime.engine) as session:
        purge(session=session, older_than=timedelta(days=365))
    assert _deliveries(runtime.engine) == []
