"""Webhook actions end to end: events in, decisions and notifications written, real HTTP
requests to a server on 127.0.0.1, signatures checked with the ``standardwebhooks`` package."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from freezegun import freeze_time
from sqlalchemy.engine import Engine
from sqlmodel import Session, col, select
from standardwebhooks import Webhook

from crm_notify._net import OutboundPolicy
from crm_notify.actions.sender import WebhookActionSender
from crm_notify.actions.signing import SigningSecret, new_secret
from crm_notify.actions.stats import webhook_counts_by_rule
from crm_notify.esp.factory import adapter_from_url
from crm_notify.events.schemas import parse_call
from crm_notify.guards import SendPolicy
from crm_notify.guards.rate_limit import counted_sends
from crm_notify.intake import Intake
from crm_notify.outbox.delivery import DeliveryService
from crm_notify.outbox.models import Decision, Notification, NotificationStatusChange
from crm_notify.render.templates import TemplateStore
from crm_notify.rules.loader import load_rules
from tests.conftest import ROOT
from tests.esp._api_server import ApiServer, RecordedRequest
from tests.support.servers import write_tree

#: The default signing secret (CRM_NOTIFY_WEBHOOK_SECRET) and one rule's own.
SECRET = new_secret()
CRM_SECRET = new_secret()
#: The environment the actions' ${NAME} references read.
ENVIRON = {"SMS_TOKEN": "tok-123", "SMS_KEY": "k-9", "CRM_SECRET": CRM_SECRET}

RULES = {
    "shipped.yaml": """
name: shipped-sms
trigger: {event: Order Completed}
template: order_shipped
purpose: transactional
actions:
  - type: webhook
    name: sms
    url: {URL}/v1/messages?key=${SMS_KEY}
    headers: {Authorization: "Bearer ${SMS_TOKEN}", X-Shop: acme}
    body:
      to: "{{ contact.traits.phone }}"
      text: "Hi {{ contact.first_name }}, order {{ event.properties.order_id }} has shipped"
      total: "{{ event.properties.total | default(none) }}"
      id: "{{ webhook.id }}"
""",
    "lead.yaml": """
name: lead-to-crm
trigger: {event: Lead Created}
purpose: transactional
actions:
  - type: webhook
    name: crm
    url: {URL}/crm/leads
    method: PUT
    content_type: form
    body: {phone: "{{ contact.traits.phone }}", source: "{{ event.properties.source }}", vip: true}
    secret: ${CRM_SECRET}
""",
    "promo.yaml": """
name: promo-sms
trigger: {event: Promo Viewed}
purpose: marketing
quiet_hours: false
actions:
  - {type: webhook, name: sms, url: "{URL}/promo", body: {to: "{{ contact.traits.phone }}"}}
""",
    "capped.yaml": """
name: capped
trigger: {event: Cap Me}
template: order_shipped
purpose: marketing
quiet_hours: false
limit: 1/7d
actions:
  - {type: webhook, name: sms, url: "{URL}/capped", body: {n: 1}}
""",
}


def _call(obj: dict[str, Any]) -> Any:
    obj = {"userId": "u1", "type": "track", **obj}
    obj.setdefault("timestamp", datetime.now(UTC).isoformat())
    return parse_call(obj, type_hint=None, received_at=datetime.now(UTC))


@dataclass
class Pipeline:
    """Intake and delivery wired as the runtime wires them, with the queue in the test's hands."""

    engine: Engine
    intake: Intake
    delivery: DeliveryService
    queued: list[int] = field(default_factory=list)
    retries: list[tuple[int, timedelta]] = field(default_factory=list)

    def send(self, obj: dict[str, Any]) -> None:
        self.intake.ingest([_call(obj)])

    def identify(self, **traits: Any) -> None:
        consent = traits.pop("consent", None)
        extra: dict[str, Any] = {"messageId": f"identify-{uuid.uuid4().hex}"}
        if consent is not None:
            extra["context"] = {"consent": {"categoryPreferences": {"Marketing": consent}}}
        self.send({"type": "identify", "traits": traits, **extra})

    def deliver_queued(self) -> list[str]:
        ids, self.queued[:] = list(self.queued), []
        return [self.delivery.deliver(nid).status for nid in ids]

    def webhook_rows(self, rule: str | None = None) -> list[Notification]:
        with Session(self.engine) as session:
            query = select(Notification).where(Notification.channel == "webhook")
            if rule is not None:
                query = query.where(Notification.rule == rule)
            return list(session.exec(query.order_by(col(Notification.id))))


@pytest.fixture
def api() -> Iterator[ApiServer]:
    with ApiServer() as server:
        yield server


@pytest.fixture
def rules_dir(tmp_path: Path, api: ApiServer) -> Path:
    write_tree(
        tmp_path / "rules", {name: text.replace("{URL}", api.url) for name, text in RULES.items()}
    )
    return tmp_path / "rules"


@pytest.fixture
def pipeline(engine: Engine, rules_dir: Path, tmp_path: Path) -> Iterator[Pipeline]:
    rules = load_rules(rules_dir, environ=ENVIRON)
    policy = SendPolicy.standard()
    sender = WebhookActionSender(
        policy=OutboundPolicy.allow_loopback(),
        rules=rules,
        environ=ENVIRON,
        default_secret=SigningSecret.parse(SECRET),
    )
    queued: list[int] = []
    retries: list[tuple[int, timedelta]] = []
    delivery = DeliveryService(
        engine=engine,
        templates=TemplateStore(ROOT / "templates"),
        adapter=adapter_from_url(f"file://{tmp_path / 'outbox'}"),
        mail_from="Shop <shop@example.com>",
        max_attempts=5,
        schedule_retry=lambda nid, delay: retries.append((nid, delay)),
        policy=policy,
        webhooks=sender,
    )
    intake = Intake(engine=engine, rules=rules, policy=policy, enqueue=queued.extend)
    yield Pipeline(engine, intake, delivery, queued, retries)
    sender.close()


def _verified(request: RecordedRequest, secret: str = SECRET) -> None:
    """The request carries a valid Standard Webhooks signature (raises otherwise)."""
    Webhook(secret).verify(request.body, request.headers, json_parse=False)


def _history(engine: Engine, notification_id: int) -> list[str]:
    with Session(engine) as session:
        query = (
            select(NotificationStatusChange.status)
            .where(NotificationStatusChange.notification_id == notification_id)
            .order_by(col(NotificationStatusChange.id))
        )
        return list(session.exec(query))


def _decisions(engine: Engine, rule: str) -> list[tuple[str, str]]:
    with Session(engine) as session:
        query = select(Decision).where(Decision.rule == rule).order_by(col(Decision.id))
        return [(d.outcome, d.reason) for d in session.exec(query)]


def test_runtime_sends_a_signed_json_request_with_headers_from_the_environment(
    make_settings: Any,
    engine: Engine,
    rules_dir: Path,
    api: ApiServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from crm_notify.runtime import Runtime

    # Given the service's environment holding the gateway's credentials and the signing secret
    for name, value in ENVIRON.items():
        monkeypatch.setenv(name, value)
    runtime = Runtime.from_settings(
        make_settings(rules_dir=rules_dir, webhook_secret=SECRET), engine=engine
    )
    try:
        # When a customer with a phone number completes an order
        runtime.intake.ingest(
            [
                _call(
                    {
                        "type": "identify",
                        "traits": {
                            "email": "ala@example.com",
                            "first_name": "Ala",
                            "phone": "+48 600",
                        },
                    }
                ),
                _call(
                    {"event": "Order Completed", "properties": {"order_id": "A1", "total": 30.5}}
                ),
            ]
        )
    finally:
        runtime.close()
    # Then the gateway got one JSON POST with the configured headers and a valid signature
    (request,) = api.requests
    assert (request.method, request.path, request.query) == (
        "POST",
        "/v1/messages",
        {"key": ["k-9"]},
    )
    assert request.headers["authorization"] == "Bearer tok-123"
    assert request.headers["x-shop"] == "acme"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["user-agent"] == "crm-notify"
    _verified(request)
    (row,) = [n for n in _all(engine) if n.channel == "webhook"]
    assert request.json == {
        "to": "+48 600",
        "text": "Hi Ala, order A1 has shipped",
        "total": 30.5,
        "id": row.message_id,
    }
    assert request.headers["webhook-id"] == row.message_id
    # And it is recorded like an email: sent, with the receiver's status, next to the email
    assert (row.status, row.response_status, row.template, row.esp) == (
        "sent",
        200,
        "sms",
        "webhook",
    )
    assert row.to_address == f"{api.url}/v1/messages"  # no query: it holds the key
    assert row.message == request.text
    assert sorted((n.channel, n.status) for n in _all(engine)) == [
        ("email", "sent"),
        ("webhook", "sent"),
    ]
    assert _decisions(engine, "shipped-sms") == [
        ("send", "rule matched"),
        ("send", "rule matched (webhook sms)"),
    ]


def _all(engine: Engine) -> list[Notification]:
    with Session(engine) as session:
        return list(session.exec(select(Notification).order_by(col(Notification.id))))


def test_a_rule_with_only_actions_sends_a_form_to_a_contact_without_email(
    pipeline: Pipeline, api: ApiServer
) -> None:
    # Given a contact known by phone only
    pipeline.identify(phone="+48 601")
    # When a lead is created
    pipeline.send({"event": "Lead Created", "properties": {"source": "fair & expo"}})
    assert pipeline.deliver_queued() == ["sent"]
    # Then the CRM got a form PUT, signed with the rule's own secret
    (request,) = api.requests
    assert (request.method, request.path) == ("PUT", "/crm/leads")
    assert request.headers["content-type"] == "application/x-www-form-urlencoded"
    assert request.form == {"phone": ["+48 601"], "source": ["fair & expo"], "vip": ["true"]}
    _verified(request, CRM_SECRET)
    with pytest.raises(Exception, match="signature"):
        _verified(request, SECRET)
    # And no email was written
    assert [(n.channel, n.template) for n in _all(pipeline.engine)] == [("webhook", "crm")]


def test_transient_failures_are_retried_until_one_delivery(
    pipeline: Pipeline, api: ApiServer
) -> None:
    # Given a gateway that fails with 500, then asks to wait 2 minutes, then accepts
    api.respond(500, body="upstream down").respond(429, headers={"Retry-After": "120"})
    pipeline.identify(email="ala@example.com", phone="+48 600")
    with freeze_time("2026-11-20 12:00:00", tick=True) as frozen:
        pipeline.send({"event": "Order Completed", "properties": {"order_id": "A1"}})
        email_status, webhook_status = pipeline.deliver_queued()
        (row,) = pipeline.webhook_rows()
        assert row.id is not None
        # When the first attempt gets the 500
        assert (email_status, webhook_status) == ("sent", "retrying")
        assert pipeline.delivery.deliver(row.id).status == "skipped"  # not due yet
        # When it is retried after the backoff and gets the 429 with Retry-After
        frozen.tick(timedelta(seconds=11))
        assert pipeline.delivery.deliver(row.id).status == "retrying"
        assert pipeline.retries[-1][1] >= timedelta(seconds=120)
        frozen.tick(timedelta(seconds=60))
        assert pipeline.delivery.deliver(row.id).status == "skipped"
        # When the Retry-After has passed
        frozen.tick(timedelta(seconds=61))
        assert pipeline.delivery.deliver(row.id).status == "sent"
        assert pipeline.delivery.deliver(row.id).status == "skipped"  # never sent twice
        # Then three attempts arrived: one id, one body, each signed for its own timestamp
        requests = api.requests
        for request in requests:
            _verified(request)
    assert [r.path for r in requests] == ["/v1/messages"] * 3
    assert len({r.headers["webhook-id"] for r in requests}) == 1
    assert len({r.body for r in requests}) == 1
    assert len({r.headers["webhook-timestamp"] for r in requests}) == 3
    # And one delivery is recorded, with the history of the attempts
    (row,) = pipeline.webhook_rows()
    assert (row.status, row.attempts, row.response_status) == ("sent", 3, 200)
    assert row.id is not None
    assert _history(pipeline.engine, row.id) == [
        "pending",
        "sending",
        "retrying",
        "sending",
        "retrying",
        "sending",
        "sent",
    ]


def test_a_client_error_fails_at_once_with_the_answer(pipeline: Pipeline, api: ApiServer) -> None:
    # Given a gateway refusing the number
    api.respond(400, json={"error": "invalid phone number", "field": "to"})
    pipeline.identify(email="ala@example.com", phone="nope")
    pipeline.send({"event": "Order Completed", "properties": {"order_id": "A1"}})
    # When delivered
    assert pipeline.deliver_queued() == ["sent", "failed"]
    # Then it failed for good with the status and the start of the answer, and no retry
    (row,) = pipeline.webhook_rows()
    assert (row.status, row.response_status) == ("failed", 400)
    assert "400" in (row.last_error or "") and "invalid phone number" in (row.last_error or "")
    assert pipeline.retries == [] and len(api.requests) == 1


def test_the_request_time_out_is_transient(engine: Engine, rules_dir: Path, api: ApiServer) -> None:
    # Given a sender with a short timeout and a gateway that answers late
    rules = load_rules(rules_dir, environ=ENVIRON)
    sender = WebhookActionSender(
        policy=OutboundPolicy.allow_loopback(), rules=rules, environ=ENVIRON, timeout_s=0.2
    )
    (action,) = [a for a in rules.by_name("promo-sms").actions]  # type: ignore[union-attr]
    api.respond(200, delay_s=2)
    from crm_notify.actions.sender import WebhookRequest
    from crm_notify.errors import EspTransientError

    request = WebhookRequest(
        notification_id=1,
        action=action.name,
        method="POST",
        url=action.resolved_url(ENVIRON),
        headers={},
        content_type="application/json",
        body=b"{}",
        message_id="msg_1",
        secret=None,
    )
    try:
        with pytest.raises(EspTransientError, match="timeout"):
            sender.send(request)
        # And an unsigned request still carries the id and timestamp
        api.clear()
        assert sender.send(request) == 200
        assert "webhook-signature" not in api.last.headers
        assert api.last.headers["webhook-id"] == "msg_1"
    finally:
        sender.close()


def test_a_marketing_webhook_needs_consent_at_decision_and_at_delivery(
    pipeline: Pipeline, api: ApiServer
) -> None:
    # Given a contact without marketing consent
    pipeline.identify(email="ala@example.com", phone="+48 600")
    # When the promo event comes, Then the action is skipped with the reason
    pipeline.send({"event": "Promo Viewed", "messageId": "p1"})
    assert pipeline.webhook_rows() == [] and pipeline.queued == []
    assert _decisions(pipeline.engine, "promo-sms") == [("skip", "no marketing consent recorded")]
    # When consent is granted, Then the next one is decided
    pipeline.identify(email="ala@example.com", consent=True)
    pipeline.send({"event": "Promo Viewed", "messageId": "p2"})
    assert len(pipeline.webhook_rows("promo-sms")) == 1
    # When it is withdrawn before delivery, Then the request is never made
    pipeline.identify(email="ala@example.com", consent=False)
    assert pipeline.deliver_queued() == ["cancelled"]
    assert api.requests == []
    (row,) = pipeline.webhook_rows("promo-sms")
    assert row.status == "cancelled"
    assert _decisions(pipeline.engine, "promo-sms")[-1][1].startswith(
        "cancelled at delivery: marketing consent withdrawn"
    )


def test_a_duplicate_event_makes_one_request(pipeline: Pipeline, api: ApiServer) -> None:
    pipeline.identify(email="ala@example.com", phone="+48 600")
    event = {"event": "Order Completed", "messageId": "order-1", "properties": {"order_id": "A1"}}
    pipeline.send(event)
    pipeline.send(event)  # the shop retried the call
    assert pipeline.deliver_queued() == ["sent", "sent"]  # the email and the request
    (row,) = pipeline.webhook_rows()
    assert row.idempotency_key == "shipped-sms:order-1#webhook:sms"
    assert row.id is not None
    assert pipeline.delivery.deliver(row.id).status == "skipped"  # a redelivered broker message
    assert len(api.requests) == 1


def test_a_rate_limit_counts_a_firing_once_whatever_its_channels(
    pipeline: Pipeline, api: ApiServer
) -> None:
    # Given a marketing rule that emails and calls a webhook, at most once a week
    pipeline.identify(email="ala@example.com", consent=True)
    # When it fires twice
    pipeline.send({"event": "Cap Me", "messageId": "c1"})
    pipeline.send({"event": "Cap Me", "messageId": "c2"})
    # Then the first firing wrote both its email and its request, and the second was capped
    with Session(pipeline.engine) as session:
        rows = session.exec(select(Notification).where(Notification.rule == "capped")).all()
        assert sorted(n.channel for n in rows) == ["email", "webhook"]
        contact_id = rows[0].contact_id
        assert contact_id is not None
        since = datetime.now(UTC) - timedelta(days=7)
        assert len(counted_sends(session, contact_id=contact_id, since=since, rule="capped")) == 1
    assert _decisions(pipeline.engine, "capped")[-1][0] == "skip"
    assert "limit 1 per 7 days reached" in _decisions(pipeline.engine, "capped")[-1][1]


def test_counts_per_rule(pipeline: Pipeline, api: ApiServer) -> None:
    # Given one accepted request, one refused, one waiting for a retry and one cancelled
    api.respond(200).respond(400).respond(503)
    pipeline.identify(email="ala@example.com", phone="+48 600")
    for n in range(3):
        properties = {"order_id": f"A{n}"}
        pipeline.send({"event": "Order Completed", "messageId": f"o{n}", "properties": properties})
    pipeline.send({"event": "Lead Created", "messageId": "lead", "properties": {"source": "x"}})
    pipeline.deliver_queued()
    # Then each rule's webhook actions are counted by status
    with Session(pipeline.engine) as session:
        counts = webhook_counts_by_rule(session)
        assert counts == {
            "lead-to-crm": {"sent": 1, "failed": 0, "retrying": 0, "cancelled": 0, "pending": 0},
            "shipped-sms": {"sent": 1, "failed": 1, "retrying": 1, "cancelled": 0, "pending": 0},
        }
        later = datetime.now(UTC) + timedelta(hours=1)
        assert webhook_counts_by_rule(session, since=later) == {}
