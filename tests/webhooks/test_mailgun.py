"""Mailgun's webhooks through the real app: one JSON event per call signed with an HMAC of
timestamp and token in the body, every documented event type, the timestamp tolerance,
subaccount parent signatures, effects and replays (the signature token is the event id: the
signature does not cover event-data)."""

from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from freezegun import freeze_time
from sqlalchemy.engine import Engine

from crm_notify.esp import adapter_from_url
from tests.esp._api_server import Answer, ApiServer
from tests.webhooks._helpers import (
    WebhookContract,
    WebhookServer,
    add_notification,
    consent_records,
    outgoing_message,
    store_message_id,
    stored_events,
    suppressions,
)

#: The HTTP webhook signing key of the tests' Mailgun account.
SIGNING_KEY = "key-3ax6xnjp29jd6fds4gc373sgvjxteol0"
T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
MESSAGE_ID = "20260302120000.1.DF5966851B4BAA99@mg.example.com"


def signature_block(
    *, key: str = SIGNING_KEY, timestamp: int | None = None, token: str | None = None
) -> dict[str, str]:
    """Mailgun's ``signature`` object: hex HMAC-SHA256 of timestamp + token."""
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    token = token or secrets.token_hex(25)
    digest = hmac.new(key.encode(), f"{stamp}{token}".encode(), hashlib.sha256).hexdigest()
    return {"timestamp": stamp, "token": token, "signature": digest}


def call(data: dict[str, Any], **signing: Any) -> tuple[bytes, dict[str, str]]:
    """The call as Mailgun makes it."""
    body = {"signature": signature_block(**signing), "event-data": data}
    return json.dumps(body).encode(), {"Content-Type": "application/json"}


def event_data(
    name: str,
    *,
    recipient: str = "alice@example.com",
    message_id: str = MESSAGE_ID,
    notification_id: int | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """One ``event-data`` in Mailgun's documented shape."""
    data: dict[str, Any] = {
        "id": secrets.token_urlsafe(16),
        "event": name,
        "timestamp": T0.timestamp() + 0.153125,
        "log-level": "info",
        "recipient": recipient,
        "recipient-domain": recipient.partition("@")[2],
        "tags": ["order_shipped"],
        "campaigns": [],
        "envelope": {"sender": "shop@mg.example.com", "transport": "smtp", "targets": recipient},
        "flags": {"is-authenticated": True, "is-test-mode": False},
        "message": {
            "headers": {
                "to": recipient,
                "message-id": message_id,
                "from": "The Shop <shop@mg.example.com>",
                "subject": "Shipped",
            },
            "attachments": [],
            "size": 809,
        },
        "user-variables": (
            {"crm_notify_id": str(notification_id), "crm_notify_rule": "order_shipped"}
            if notification_id is not None
            else []
        ),
        **fields,
    }
    return data


def failed(severity: str, reason: str, code: int, message: str, **more: Any) -> dict[str, Any]:
    """The extra fields of a ``failed`` event."""
    status = {"attempt-no": 1, "code": code, "message": message, "description": ""}
    return {"severity": severity, "reason": reason, "delivery-status": status, **more}


class TestMailgunContract(WebhookContract):
    provider = "mailgun"

    def settings(self) -> dict[str, object]:
        return {"mailgun_webhook_signing_key": SIGNING_KEY}

    def stored_message_id(self, n: int) -> str:
        return f"20260302120000.{n}.{secrets.token_hex(8).upper()}@mg.example.com"

    def event(
        self, kind: str, *, recipient: str, message_id: str, notification_id: int | None
    ) -> Any:
        fields: dict[str, dict[str, Any]] = {
            "delivered": {"event": "delivered", "delivery-status": {"code": 250, "message": "OK"}},
            "hard_bounce": {
                "event": "failed",
                **failed("permanent", "bounce", 550, "5.1.1 The email account does not exist"),
            },
            "complaint": {"event": "complained"},
            "unsubscribe": {"event": "unsubscribed"},
            "unknown": {"event": "list_member_uploaded"},
        }
        extra: dict[str, Any] = dict(fields[kind])
        return event_data(
            extra.pop("event"),
            recipient=recipient,
            message_id=message_id,
            notification_id=notification_id,
            **extra,
        )

    def request(self, events: list[Any]) -> tuple[bytes, dict[str, str]]:
        [data] = events
        return call(data)

    def unauthenticated(self, events: list[Any]) -> tuple[bytes, dict[str, str]]:
        [data] = events
        return json.dumps({"event-data": data}).encode(), {"Content-Type": "application/json"}

    def forged(self, events: list[Any]) -> tuple[bytes, dict[str, str]]:
        [data] = events
        return call(data, key="key-not-the-right-one")


@pytest.fixture
def server(webhook_server: Callable[..., WebhookServer]) -> WebhookServer:
    return webhook_server(mailgun_webhook_signing_key=SIGNING_KEY)


def test_every_documented_event_is_mapped(server: WebhookServer, engine: Engine) -> None:
    # Given a sent notification
    sent = add_notification(
        engine, to_address="alice@example.com", esp="mailgun", esp_message_id=MESSAGE_ID
    )
    delivered: dict[str, Any] = {"delivery-status": {"code": 250, "message": "OK"}}
    opened: dict[str, Any] = {"client-info": {"client-type": "browser"}}
    events = [
        event_data("accepted", method="HTTP"),
        event_data("delivered", **delivered),
        event_data("failed", **failed("temporary", "generic", 498, "No MX for example.com")),
        event_data("failed", **failed("permanent", "old", 498, "Too old")),
        event_data("failed", **failed("permanent", "suppress-unsubscribe", 605, "Not sent")),
        event_data("opened", **opened),
        event_data("clicked", url="https://shop.example.com/o/1"),
        event_data("rejected", reject={"reason": "Sandbox subdomains are for test purposes"}),
        event_data("failed", **failed("permanent", "suppress-bounce", 605, "Not delivering")),
        event_data("complained"),
        event_data("unsubscribed"),
        event_data("stored"),
    ]
    # When Mailgun posts each (one event per call)
    for data in events:
        answer = server.post("mailgun", *call(data))
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"received": 1, "stored": 1, "duplicates": 0, "unmatched": 0}
    # Then each is mapped and linked to the notification
    rows = stored_events(engine)
    assert [(r.provider_event_type, r.event_type, r.bounce_kind) for r in rows] == [
        ("accepted", "queued", None),
        ("delivered", "delivered", None),
        ("failed/generic", "deferred", None),
        ("failed/old", "bounced", "soft"),
        ("failed/suppress-unsubscribe", "rejected", "hard"),
        ("opened", "opened", None),
        ("clicked", "clicked", None),
        ("rejected", "rejected", None),
        ("failed/suppress-bounce", "bounced", "hard"),
        ("complained", "complained", None),
        ("unsubscribed", "unsubscribed", None),
        ("stored", "unknown", None),
    ]
    assert {r.notification_id for r in rows} == {sent.id}
    assert rows[2].description == "generic: No MX for example.com"
    assert rows[6].url == "https://shop.example.com/o/1"
    assert rows[7].description == "Sandbox subdomains are for test purposes"
    assert rows[1].occurred_at == T0 + timedelta(microseconds=153125)
    # and only the hard bounce and the complaint suppress; the unsubscribe withdraws consent
    assert [entry.email for entry in suppressions(engine)] == ["alice@example.com"]
    assert [r.granted for r in consent_records(engine)] == [False]


def test_a_soft_permanent_failure_does_not_suppress(server: WebhookServer, engine: Engine) -> None:
    add_notification(engine, to_address="bob@example.com", esp="mailgun", esp_message_id="m1@mg")
    data = event_data(
        "failed",
        recipient="bob@example.com",
        message_id="m1@mg",
        **failed("permanent", "esp-block", 554, "5.7.1 Message refused"),
    )
    assert server.post("mailgun", *call(data)).status_code == 200
    assert stored_events(engine)[0].bounce_kind == "soft"
    assert suppressions(engine) == []


def test_what_the_adapter_sends_links_the_events(server: WebhookServer, engine: Engine) -> None:
    # Given a notification sent through the Mailgun adapter
    sent = add_notification(
        engine, to_address="zoe@example.org", esp="mailgun", esp_message_id=None
    )
    answer = Answer(200, json={"id": f"<{MESSAGE_ID}>", "message": "Queued. Thank you."})
    with ApiServer(default=answer) as api:
        result = adapter_from_url(f"mailgun://api:KEY@{api.netloc}/mg.example.com?insecure=1").send(
            outgoing_message(sent)
        )
        form = api.last.form
    store_message_id(engine, sent, result.provider_message_id)
    variables = {name[2:]: values[0] for name, values in form.items() if name.startswith("v:")}
    # When Mailgun reports on it: the id with and without angle brackets, our variables echoed
    by_message = event_data("delivered", recipient="zoe@example.org", message_id=f"<{MESSAGE_ID}>")
    by_id = event_data("opened", recipient="zoe@example.org", message_id="unknown@mg")
    by_id["user-variables"] = variables
    for data in (by_message, by_id):
        assert server.post("mailgun", *call(data)).json()["unmatched"] == 0
    # Then both find the notification
    assert [r.provider_message_id for r in stored_events(engine)] == [MESSAGE_ID, "unknown@mg"]
    assert [r.notification_id for r in stored_events(engine)] == [sent.id, sent.id]


@pytest.mark.parametrize("tolerance_s", [300, 0])
def test_a_captured_token_cannot_carry_forged_event_data(
    webhook_server: Callable[..., WebhookServer], engine: Engine, tolerance_s: int
) -> None:
    # Given a genuine "delivered" call, received once
    server = webhook_server(
        mailgun_webhook_signing_key=SIGNING_KEY, webhook_tolerance_s=tolerance_s
    )
    block = signature_block()
    genuine = {"signature": block, "event-data": event_data("delivered")}
    headers = {"Content-Type": "application/json"}
    assert server.post("mailgun", json.dumps(genuine).encode(), headers).json()["stored"] == 1
    # When someone who captured it reuses its signature block with forged event-data (hard
    # bounces and an unsubscribe of other people)
    for n, (name, extra) in enumerate(
        [
            ("failed", failed("permanent", "bounce", 550, "5.1.1 no such user")),
            ("failed", failed("permanent", "bounce", 550, "5.1.1 no such user")),
            ("unsubscribed", {}),
        ]
    ):
        victim = add_notification(
            engine, to_address=f"victim{n}@example.com", esp="mailgun", esp_message_id=f"v{n}@mg"
        )
        forged = {
            "signature": block,
            "event-data": event_data(
                name, recipient=victim.to_address, message_id=f"v{n}@mg", id=f"forged{n}", **extra
            ),
        }
        answer = server.post("mailgun", json.dumps(forged).encode(), headers)
        # Then each is a duplicate of the genuine call: nothing stored, nobody suppressed
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"received": 1, "stored": 0, "duplicates": 1, "unmatched": 0}
    assert [r.event_type for r in stored_events(engine)] == ["delivered"]
    assert suppressions(engine) == [] and consent_records(engine) == []


def test_the_event_id_is_the_signature_token(server: WebhookServer, engine: Engine) -> None:
    # Given two calls about the same event, each signed with its own token
    data = event_data("complained")
    first = call(data, token="a" * 50)
    second = call(data, token="b" * 50)
    # When both come, then each is a call of its own (its token identifies it)
    assert server.post("mailgun", *first).json()["stored"] == 1
    assert server.post("mailgun", *second).json()["stored"] == 1
    assert [r.event_key for r in stored_events(engine)] == [
        f"mailgun:token:{'a' * 50}",
        f"mailgun:token:{'b' * 50}",
    ]
    # And the complaint's effect is the same: one suppression entry
    assert len(suppressions(engine)) == 1
    # And a call repeated as it was is a duplicate
    assert server.post("mailgun", *first).json()["duplicates"] == 1


def test_a_subaccount_event_verifies_by_its_parent_signature(
    server: WebhookServer, engine: Engine
) -> None:
    # Given a subaccount's event: signature by the subaccount's key, parent-signature by ours
    block = signature_block(key="key-of-the-subaccount")
    block["parent-signature"] = signature_block(
        timestamp=int(block["timestamp"]), token=block["token"]
    )["signature"]
    body = json.dumps({"signature": block, "event-data": event_data("delivered")}).encode()
    # Then it is accepted
    answer = server.post("mailgun", body, {"Content-Type": "application/json"})
    assert answer.status_code == 200, answer.text


def test_a_changed_token_breaks_the_signature(server: WebhookServer, engine: Engine) -> None:
    block = signature_block()
    block["token"] = block["token"][:-1] + ("0" if block["token"][-1] != "0" else "1")
    body = json.dumps({"signature": block, "event-data": event_data("delivered")}).encode()
    assert server.post("mailgun", body, {"Content-Type": "application/json"}).status_code == 403
    assert stored_events(engine) == []


def test_the_signed_timestamp_must_be_recent(
    webhook_server: Callable[..., WebhookServer], engine: Engine
) -> None:
    server = webhook_server(mailgun_webhook_signing_key=SIGNING_KEY, webhook_tolerance_s=60)
    with freeze_time(T0, real_asyncio=True):
        stale = call(event_data("delivered"), timestamp=int(T0.timestamp()) - 61)
        fresh = call(event_data("delivered"), timestamp=int(T0.timestamp()) - 59)
        refused = server.post("mailgun", *stale)
        assert refused.status_code == 403
        assert "tolerance 60 s" in refused.json()["message"]
        assert server.post("mailgun", *fresh).status_code == 200
    assert len(stored_events(engine)) == 1


def test_tolerance_0_accepts_captured_events(
    webhook_server: Callable[..., WebhookServer], engine: Engine
) -> None:
    server = webhook_server(mailgun_webhook_signing_key=SIGNING_KEY, webhook_tolerance_s=0)
    old = int((T0 - timedelta(days=30)).timestamp())
    with freeze_time(T0, real_asyncio=True):
        answer = server.post("mailgun", *call(event_data("delivered"), timestamp=old))
    assert answer.status_code == 200
    assert len(stored_events(engine)) == 1


def test_a_legacy_form_webhook_is_406_so_mailgun_does_not_retry(
    server: WebhookServer, engine: Engine
) -> None:
    # Given a call of a legacy (form-encoded) webhook
    block = signature_block()
    fields = {**block, "event": "delivered", "recipient": "bob@example.com"}
    body = "&".join(f"{k}={v}" for k, v in fields.items()).encode()
    answer = server.post("mailgun", body, {"Content-Type": "application/x-www-form-urlencoded"})
    # Then it is answered 406 (Mailgun's "rejected, do not retry"), saying why, without
    # quoting the body
    assert answer.status_code == 406
    assert "legacy" in answer.json()["message"]
    assert "bob@example.com" not in answer.text
    assert stored_events(engine) == []


@pytest.mark.parametrize(
    ("event", "message"),
    [(None, "event-data"), ({"id": "x"}, "event-data"), ([1, 2], "event-data")],
)
def test_event_data_not_in_mailguns_format_is_400(
    server: WebhookServer, engine: Engine, event: Any, message: str
) -> None:
    body = {"signature": signature_block()}
    if event is not None:
        body["event-data"] = event
    answer = server.post("mailgun", json.dumps(body).encode(), {"Content-Type": "application/json"})
    assert answer.status_code == 400
    assert message in answer.json()["message"]
    assert stored_events(engine) == []


def test_not_configured_is_404_naming_the_variable(
    webhook_server: Callable[..., WebhookServer],
) -> None:
    answer = webhook_server().post("mailgun", *call(event_data("delivered")))
    assert answer.status_code == 404
    assert "CRM_NOTIFY_MAILGUN_WEBHOOK_SIGNING_KEY" in answer.json()["message"]
