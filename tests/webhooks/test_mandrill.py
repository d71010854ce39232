"""Mailchimp Transactional (Mandrill) webhooks: a form-encoded body holding a JSON array,
X-Mandrill-Signature over the registered URL and the sorted fields, the URL check when a
webhook is added (HEAD, then an empty POST signed with the generic key), every event type."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import urlencode

import httpx
import pytest
from fastapi import FastAPI
from sqlalchemy.engine import Engine

from crm_notify.config import Settings
from crm_notify.errors import ConfigurationError
from crm_notify.webhooks.mandrill import MandrillWebhook
from crm_notify.webhooks.probe import make_probe_router
from tests.support.servers import serve
from tests.webhooks._helpers import (
    WebhookContract,
    WebhookServer,
    add_notification,
    consent_records,
    history,
    stored_events,
    suppressions,
)

KEY = "mandrill-webhook-key-0123456789"
#: The URL as entered in Mandrill (behind a proxy, so not the URL the test server has).
URL = "https://crm.example.com/v1/webhooks/esp/mandrill"
TS = 1714557600  # 2024-05-01T10:00:00Z


def signature(key: str, url: str, fields: dict[str, str]) -> str:
    """Written from Mandrill's "Authenticating webhook requests", independently of the code."""
    signed = url + "".join(name + fields[name] for name in sorted(fields))
    return base64.b64encode(hmac.new(key.encode(), signed.encode(), hashlib.sha1).digest()).decode()


def call(
    events: list[Any], *, key: str = KEY, url: str = URL, extra: dict[str, str] | None = None
) -> tuple[bytes, dict[str, str]]:
    """Mandrill's POST: ``mandrill_events`` form-encoded, signed."""
    fields = {"mandrill_events": json.dumps(events), **(extra or {})}
    headers = {
        "Content-Type": "application/x-www-form-urlencoded",
        "X-Mandrill-Signature": signature(key, url, fields),
    }
    return urlencode(fields).encode(), headers


def mandrill_event(
    kind: str,
    *,
    message_id: str = "abcdef0123456789abcdef0123456789",
    email: str = "zoe@example.org",
    notification_id: int | None = None,
    ts: int = TS,
    **extra: Any,
) -> dict[str, Any]:
    """A message event as Mandrill posts it."""
    msg: dict[str, Any] = {
        "ts": TS - 60,
        "subject": "Your order shipped",
        "email": email,
        "sender": "shop@example.com",
        "tags": ["order_shipped"],
        "opens": [],
        "clicks": [],
        "state": "sent",
        "metadata": {"crm_notify_rule": "order_shipped"},
        "_id": message_id,
        "_version": "exampleaaaaaaaaaaaaaaa",
    }
    if notification_id is not None:
        msg["metadata"]["crm_notify_id"] = str(notification_id)
    msg.update(extra.pop("msg", {}))
    return {"event": kind, "msg": msg, "_id": message_id, "ts": ts, **extra}


def post(server: WebhookServer, events: list[Any], **options: Any) -> httpx.Response:
    body, headers = call(events, **options)
    return server.post("mandrill", body, headers)


class TestMandrillContract(WebhookContract):
    provider = "mandrill"

    def settings(self) -> dict[str, object]:
        return {"mandrill_webhook_key": KEY, "mandrill_webhook_url": URL}

    def event(
        self, kind: str, *, recipient: str, message_id: str, notification_id: int | None
    ) -> Any:
        if kind == "unknown":
            return mandrill_event("inbound", message_id=message_id, email=recipient)
        mandrill_kind = {
            "delivered": "delivered",
            "hard_bounce": "hard_bounce",
            "complaint": "spam",
            "unsubscribe": "unsub",
        }[kind]
        return mandrill_event(
            mandrill_kind,
            message_id=message_id,
            email=recipient,
            notification_id=notification_id,
        )

    def request(self, events: list[Any]) -> tuple[bytes, dict[str, str]]:
        return call(events)

    def unauthenticated(self, events: list[Any]) -> tuple[bytes, dict[str, str]]:
        body, headers = call(events)
        del headers["X-Mandrill-Signature"]
        return body, headers

    def forged(self, events: list[Any]) -> tuple[bytes, dict[str, str]]:
        return call(events, key="a-guessed-key")


def test_every_event_type_in_one_batch(
    webhook_server: Callable[..., WebhookServer], engine: Engine
) -> None:
    server = webhook_server(mandrill_webhook_key=KEY, mandrill_webhook_url=URL)
    bounce = {"bounce_description": "bad_mailbox", "diag": "smtp;550 5.1.1 unknown user"}
    deferral = {"smtp_events": [{"type": "deferred", "diag": "451 4.3.5 try again later"}]}
    batch = [
        mandrill_event("send", message_id="m1"),
        mandrill_event("delivered", message_id="m2"),
        mandrill_event("deferral", message_id="m3", msg=deferral),
        mandrill_event("soft_bounce", message_id="m4", msg={"bounce_description": "mailbox_full"}),
        mandrill_event("hard_bounce", message_id="m5", email="gone@example.org", msg=bounce),
        mandrill_event("open", message_id="m6", user_agent="Mozilla/5.0"),
        mandrill_event("click", message_id="m7", url="https://shop.example.com/o/7"),
        mandrill_event("spam", message_id="m8", email="angry@example.org"),
        mandrill_event("unsub", message_id="m9"),
        mandrill_event("reject", message_id="m10"),
        {
            "type": "blacklist",
            "action": "add",
            "reject": {"email": "zoe@example.org", "reason": "manual edit", "detail": "support"},
        },
        {"type": "whitelist", "action": "remove", "entry": {"email": "zoe@example.org"}},
    ]
    answer = post(server, batch)
    assert answer.status_code == 200, answer.text
    assert answer.json()["stored"] == 12
    rows = stored_events(engine)
    assert [(r.provider_event_type, r.event_type, r.bounce_kind) for r in rows] == [
        ("send", "sent", None),
        ("delivered", "delivered", None),
        ("deferral", "deferred", None),
        ("soft_bounce", "bounced", "soft"),
        ("hard_bounce", "bounced", "hard"),
        ("open", "opened", None),
        ("click", "clicked", None),
        ("spam", "complained", None),
        ("unsub", "unsubscribed", None),
        ("reject", "rejected", None),
        ("blacklist:add", "unknown", None),
        ("whitelist:remove", "unknown", None),
    ]
    assert rows[6].url == "https://shop.example.com/o/7"
    assert rows[2].description == "451 4.3.5 try again later"
    assert rows[4].description == "bad_mailbox: smtp;550 5.1.1 unknown user"
    assert rows[10].description == "support"
    assert rows[0].occurred_at == datetime(2024, 5, 1, 10, 0, tzinfo=UTC)
    assert rows[0].provider_message_id == "m1"
    assert sorted(s.reason for s in suppressions(engine)) == ["complaint", "hard_bounce"]


def test_replayed_events_inside_a_new_batch_are_duplicates(
    webhook_server: Callable[..., WebhookServer], engine: Engine
) -> None:
    # Given Mandrill delivered an open and a click
    server = webhook_server(mandrill_webhook_key=KEY, mandrill_webhook_url=URL)
    opened = mandrill_event("open", message_id="m1")
    clicked = mandrill_event("click", message_id="m1", url="https://a.example/1")
    assert post(server, [opened, clicked]).json()["stored"] == 2
    # When a later batch repeats them (its msg has grown), next to a new click on another link
    grown = {"opens": [{"ts": TS}], "clicks": [{"ts": TS, "url": "https://a.example/1"}]}
    again = [
        mandrill_event("open", message_id="m1", msg=grown),
        mandrill_event("click", message_id="m1", url="https://a.example/1", msg=grown),
        mandrill_event("click", message_id="m1", url="https://a.example/2", msg=grown),
    ]
    answer = post(server, again)
    # Then only the new click is stored
    assert answer.json() == {"received": 3, "stored": 1, "duplicates": 2, "unmatched": 1}


def test_signature_covers_the_default_url_and_query(
    webhook_server: Callable[..., WebhookServer], engine: Engine
) -> None:
    # Given no URL configured: the public URL and the path called (with its query) are signed
    server = webhook_server(mandrill_webhook_key=KEY, public_url="https://crm.example.com/")
    public = "https://crm.example.com/v1/webhooks/esp/mandrill?source=mandrill"
    body, headers = call([mandrill_event("send")], url=public)
    answer = httpx.post(
        f"{server.url}/v1/webhooks/esp/mandrill?source=mandrill", content=body, headers=headers
    )
    assert answer.status_code == 200, answer.text
    # The same call signed for the URL without the query is refused
    body, headers = call([mandrill_event("send", ts=TS + 1)], url=public.split("?")[0])
    refused = httpx.post(
        f"{server.url}/v1/webhooks/esp/mandrill?source=mandrill", content=body, headers=headers
    )
    assert refused.status_code == 403
    assert "CRM_NOTIFY_MANDRILL_WEBHOOK_URL" in refused.json()["message"]
    assert len(stored_events(engine)) == 1


def test_every_form_field_is_signed_sorted(
    webhook_server: Callable[..., WebhookServer], engine: Engine
) -> None:
    # Given a form with a second field (and values with characters form encoding changes)
    server = webhook_server(mandrill_webhook_key=KEY, mandrill_webhook_url=URL)
    event = mandrill_event("click", url="https://shop.example.com/a b?x=1&y=ü")
    extra = {"a_first": "value with spaces+plus"}
    assert post(server, [event], extra=extra).status_code == 200
    assert stored_events(engine)[0].url == "https://shop.example.com/a b?x=1&y=ü"
    # And the newer header name is accepted too
    body, headers = call([mandrill_event("open")])
    headers["X-Mailchimp-Signature"] = headers.pop("X-Mandrill-Signature")
    assert server.post("mandrill", body, headers).status_code == 200


def test_the_check_of_a_new_webhook_is_answered(
    webhook_server: Callable[..., WebhookServer], engine: Engine
) -> None:
    # Given Mandrill's fallback check: mandrill_events=[] signed with the key "test-webhook"
    server = webhook_server(mandrill_webhook_key=KEY, mandrill_webhook_url=URL)
    body, headers = call([], key="test-webhook")
    answer = server.post("mandrill", body, headers)
    assert answer.status_code == 200, answer.text
    assert answer.json()["received"] == 0
    # But the generic key never authenticates events
    body, headers = call([mandrill_event("hard_bounce")], key="test-webhook")
    assert server.post("mandrill", body, headers).status_code == 403
    assert stored_events(engine) == [] and suppressions(engine) == []


def test_head_probe_answers_before_the_key_is_configured() -> None:
    # Given the probe router (Mandrill shows the key only after its HEAD check passed)
    app = FastAPI()
    app.include_router(make_probe_router(names=["primary"]))
    with serve(app) as url:
        # Then provider names and configured ESP names answer 200, others 404, no body
        for name, status in (("mandrill", 200), ("primary", 200), ("nobody", 404)):
            answer = httpx.head(f"{url}/v1/webhooks/esp/{name}")
            assert (name, answer.status_code, answer.content) == (name, status, b"")


def test_bad_bodies_are_400(webhook_server: Callable[..., WebhookServer], engine: Engine) -> None:
    server = webhook_server(mandrill_webhook_key=KEY, mandrill_webhook_url=URL)

    def signed(fields: dict[str, str]) -> httpx.Response:
        headers = {"X-Mandrill-Signature": signature(KEY, URL, fields)}
        return server.post("mandrill", urlencode(fields).encode(), headers)

    missing = signed({"events": "[]"})
    assert (missing.status_code, missing.json()["message"]) == (
        400,
        "mandrill webhook: the form field mandrill_events is missing",
    )
    assert signed({"mandrill_events": "GARBAGE"}).status_code == 400
    assert signed({"mandrill_events": '{"event": "send"}'}).status_code == 400
    assert signed({"mandrill_events": "[" * 100_000}).status_code == 400
    # A body that is not form-encoded is refused without quoting it
    not_a_form = server.post(
        "mandrill", b"bob@example.com", {"X-Mandrill-Signature": "c2lnbmF0dXJl"}
    )
    assert (not_a_form.status_code, not_a_form.json()["message"]) == (
        400,
        "mandrill webhook: the body is not form-encoded",
    )
    assert "bob@example.com" not in not_a_form.text
    assert stored_events(engine) == []


def test_a_malformed_item_does_not_lose_the_batch(
    webhook_server: Callable[..., WebhookServer], engine: Engine
) -> None:
    # Given a batch with a hard bounce and items that are no event objects
    server = webhook_server(mandrill_webhook_key=KEY, mandrill_webhook_url=URL)
    sent = add_notification(
        engine, to_address="zoe@example.org", esp="mandrill", esp_message_id="md-abc123"
    )
    no_type = {"msg": {"email": "x@example.org"}, "ts": TS}
    batch: list[Any] = [
        mandrill_event("hard_bounce", message_id="md-abc123"),
        "send",
        no_type,
        None,
    ]
    # When Mandrill posts it
    answer = post(server, batch)
    # Then the bounce takes effect and each malformed item is stored as unknown
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"received": 4, "stored": 4, "duplicates": 0, "unmatched": 3}
    rows = stored_events(engine)
    assert [(r.event_type, r.provider_event_type) for r in rows] == [
        ("bounced", "hard_bounce"),
        ("unknown", "malformed"),
        ("unknown", "malformed"),
        ("unknown", "malformed"),
    ]
    assert rows[0].notification_id == sent.id
    assert [r.payload for r in rows[1:]] == [{"item": "send"}, no_type, {"item": None}]
    assert [entry.reason for entry in suppressions(engine)] == ["hard_bounce"]


def test_unsub_links_by_metadata_and_withdraws_consent(
    webhook_server: Callable[..., WebhookServer], engine: Engine
) -> None:
    server = webhook_server(mandrill_webhook_key=KEY, mandrill_webhook_url=URL)
    sent = add_notification(
        engine, to_address="zoe@example.org", esp="mandrill", esp_message_id="md-abc123"
    )
    event = mandrill_event("unsub", message_id="other-id", notification_id=sent.id)
    assert post(server, [event]).json()["unmatched"] == 0
    assert [(c.purpose, c.granted) for c in consent_records(engine)] == [("marketing", False)]
    assert [c.status for c in history(engine, sent.id)] == ["unsubscribed"]


def test_configuration(make_settings: Callable[..., Settings]) -> None:
    assert MandrillWebhook.from_settings(make_settings()) is None
    with pytest.raises(ConfigurationError, match="CRM_NOTIFY_MANDRILL_WEBHOOK_URL"):
        MandrillWebhook.from_settings(
            make_settings(mandrill_webhook_key=KEY, mandrill_webhook_url="crm.example.com/hook")
        )
    webhook = MandrillWebhook.from_settings(make_settings(mandrill_webhook_key=KEY))
    assert webhook is not None and webhook.url is None
