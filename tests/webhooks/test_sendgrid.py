"""SendGrid's signed Event Webhook through the real app: batches of documented events, ECDSA
signatures made with a key generated here, the timestamp tolerance, effects and replays."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from freezegun import freeze_time
from sqlalchemy.engine import Engine

from crm_notify.config import Settings
from crm_notify.errors import ConfigurationError
from crm_notify.esp import adapter_from_url
from crm_notify.webhooks.sendgrid import (
    SIGNATURE_HEADER,
    TIMESTAMP_HEADER,
    SendGridWebhook,
    provider_message_id,
)
from tests.esp._api_server import Answer, ApiServer
from tests.webhooks._helpers import (
    WebhookContract,
    WebhookServer,
    add_notification,
    consent_records,
    history,
    outgoing_message,
    store_message_id,
    stored_events,
    suppressions,
)

#: The key pair SendGrid would hold (private) and show in its console (public).
PRIVATE_KEY = ec.generate_private_key(ec.SECP256R1())
#: The verification key as SendGrid's console shows it: base64 DER SubjectPublicKeyInfo.
PUBLIC_KEY = base64.b64encode(
    PRIVATE_KEY.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
).decode()
#: What SendGrid appends to the X-Message-Id in ``sg_message_id``.
FILTER_SUFFIX = ".filterdrecv-5645d9c87f-78xgx-1-5ECC5A42-1F.0"
T0 = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def signed(
    events: list[dict[str, Any]],
    *,
    key: ec.EllipticCurvePrivateKey = PRIVATE_KEY,
    timestamp: int | None = None,
) -> tuple[bytes, dict[str, str]]:
    """The call as SendGrid makes it: JSON array, signature over timestamp + body."""
    body = json.dumps(events).encode()
    stamp = str(int(time.time()) if timestamp is None else timestamp)
    signature = key.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    return body, {
        "Content-Type": "application/json",
        SIGNATURE_HEADER: base64.b64encode(signature).decode(),
        TIMESTAMP_HEADER: stamp,
    }


def sendgrid_event(
    name: str,
    *,
    recipient: str = "alice@example.com",
    message_id: str = "W1hMf3pUTgS6_VV7eXGtvg",
    notification_id: int | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """One event in SendGrid's documented shape (custom args as top-level keys)."""
    event = {
        "email": recipient,
        "timestamp": int(T0.timestamp()),
        "smtp-id": f"<{message_id}@ismtpd0001p1lon1.sendgrid.net>",
        "event": name,
        "category": ["order_shipped"],
        "sg_event_id": uuid.uuid4().hex,
        "sg_message_id": f"{message_id}{FILTER_SUFFIX}",
        **fields,
    }
    if notification_id is not None:
        event.update(crm_notify_id=str(notification_id), crm_notify_rule="order_shipped")
    return event


class TestSendGridContract(WebhookContract):
    provider = "sendgrid"

    def settings(self) -> dict[str, object]:
        return {"sendgrid_webhook_public_key": PUBLIC_KEY}

    def stored_message_id(self, n: int) -> str:
        return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")

    def event(
        self, kind: str, *, recipient: str, message_id: str, notification_id: int | None
    ) -> Any:
        fields: dict[str, dict[str, Any]] = {
            "delivered": {"event": "delivered", "response": "250 2.0.0 OK"},
            "hard_bounce": {
                "event": "bounce",
                "type": "bounce",
                "status": "5.1.1",
                "reason": "550 5.1.1 The email account that you tried to reach does not exist",
                "bounce_classification": "Invalid Address",
            },
            "complaint": {"event": "spamreport"},
            "unsubscribe": {"event": "unsubscribe"},
            "unknown": {"event": "group_resubscribe", "asm_group_id": 10},
        }
        extra: dict[str, Any] = dict(fields[kind])
        return sendgrid_event(
            extra.pop("event"),
            recipient=recipient,
            message_id=message_id,
            notification_id=notification_id,
            **extra,
        )

    def request(self, events: list[Any]) -> tuple[bytes, dict[str, str]]:
        return signed(events)

    def unauthenticated(self, events: list[Any]) -> tuple[bytes, dict[str, str]]:
        return json.dumps(events).encode(), {"Content-Type": "application/json"}

    def forged(self, events: list[Any]) -> tuple[bytes, dict[str, str]]:
        return signed(events, key=ec.generate_private_key(ec.SECP256R1()))


@pytest.fixture
def server(webhook_server: Callable[..., WebhookServer]) -> WebhookServer:
    return webhook_server(sendgrid_webhook_public_key=PUBLIC_KEY)


def test_a_batch_of_every_documented_event_is_mapped(server: WebhookServer, engine: Engine) -> None:
    # Given a sent notification and SendGrid's batch of every event type about it
    sent = add_notification(
        engine, to_address="alice@example.com", esp="sendgrid", esp_message_id="W1hMf3pUTgS6"
    )
    events = [
        sendgrid_event("processed", message_id="W1hMf3pUTgS6"),
        sendgrid_event("deferred", message_id="W1hMf3pUTgS6", response="400 try again later"),
        sendgrid_event("delivered", message_id="W1hMf3pUTgS6", response="250 OK"),
        sendgrid_event("open", message_id="W1hMf3pUTgS6", sg_machine_open=False),
        sendgrid_event("click", message_id="W1hMf3pUTgS6", url="https://shop.example.com/o/1"),
        sendgrid_event(
            "bounce",
            message_id="W1hMf3pUTgS6",
            type="blocked",
            reason="550 5.7.1 blocked by policy",
            bounce_classification="Reputation",
        ),
        sendgrid_event(
            "bounce",
            message_id="W1hMf3pUTgS6",
            type="bounce",
            reason="550 5.1.1 no such user",
            bounce_classification="Invalid Address",
        ),
        sendgrid_event("dropped", message_id="W1hMf3pUTgS6", reason="Bounced Address"),
        sendgrid_event("spamreport", message_id="W1hMf3pUTgS6"),
        sendgrid_event("unsubscribe", message_id="W1hMf3pUTgS6"),
        sendgrid_event("group_unsubscribe", message_id="W1hMf3pUTgS6", asm_group_id=10),
        sendgrid_event("group_resubscribe", message_id="W1hMf3pUTgS6", asm_group_id=10),
    ]
    # When SendGrid posts the batch
    answer = server.post("sendgrid", *signed(events))
    # Then every event is stored in order, mapped, and linked to the notification
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"received": 12, "stored": 12, "duplicates": 0, "unmatched": 0}
    rows = stored_events(engine)
    assert [(r.provider_event_type, r.event_type, r.bounce_kind) for r in rows] == [
        ("processed", "queued", None),
        ("deferred", "deferred", None),
        ("delivered", "delivered", None),
        ("open", "opened", None),
        ("click", "clicked", None),
        ("bounce/blocked", "bounced", "soft"),
        ("bounce/bounce", "bounced", "hard"),
        ("dropped", "rejected", None),
        ("spamreport", "complained", None),
        ("unsubscribe", "unsubscribed", None),
        ("group_unsubscribe", "unsubscribed", None),
        ("group_resubscribe", "unknown", None),
    ]
    assert {r.notification_id for r in rows} == {sent.id}
    assert {r.provider_message_id for r in rows} == {"W1hMf3pUTgS6"}
    assert rows[4].url == "https://shop.example.com/o/1"
    assert rows[6].description == "type bounce: Invalid Address: 550 5.1.1 no such user"
    assert rows[2].occurred_at == T0
    assert len(history(engine, sent.id)) == 12
    # and the hard bounce and the complaint suppress the address (one entry, updated)
    assert [entry.email for entry in suppressions(engine)] == ["alice@example.com"]
    assert {r.granted for r in consent_records(engine)} == {False}


def test_a_blocked_bounce_does_not_suppress(server: WebhookServer, engine: Engine) -> None:
    add_notification(engine, to_address="bob@example.com", esp="sendgrid", esp_message_id="m1")
    event = sendgrid_event("bounce", recipient="bob@example.com", message_id="m1", type="blocked")
    assert server.post("sendgrid", *signed([event])).status_code == 200
    assert stored_events(engine)[0].bounce_kind == "soft"
    assert suppressions(engine) == []


@pytest.mark.parametrize("bounce_type", [None, "", "soft", "deferral"])
def test_a_bounce_without_a_known_type_is_soft(
    server: WebhookServer, engine: Engine, bounce_type: str | None
) -> None:
    # Given a bounce with no type, or one SendGrid does not document (only "bounce" is hard)
    add_notification(engine, to_address="bob@example.com", esp="sendgrid", esp_message_id="m2")
    fields: dict[str, Any] = {"reason": "452 4.2.2 mailbox full"}
    if bounce_type is not None:
        fields["type"] = bounce_type
    event = sendgrid_event("bounce", recipient="bob@example.com", message_id="m2", **fields)
    # When it comes
    assert server.post("sendgrid", *signed([event])).status_code == 200
    # Then it is a soft bounce, the type kept in the description, and nothing is suppressed
    [row] = stored_events(engine)
    assert (row.event_type, row.bounce_kind) == ("bounced", "soft")
    label = f"type {bounce_type}" if bounce_type else "no type"
    assert row.description == f"{label}: 452 4.2.2 mailbox full"
    assert row.provider_event_type == f"bounce/{bounce_type or 'untyped'}"
    assert suppressions(engine) == []


def test_a_malformed_item_does_not_lose_the_batch(server: WebhookServer, engine: Engine) -> None:
    # Given a batch with a hard bounce and items that are no event objects
    sent = add_notification(
        engine, to_address="alice@example.com", esp="sendgrid", esp_message_id="m3"
    )
    bounce = sendgrid_event("bounce", message_id="m3", type="bounce", reason="550 no such user")
    no_event = {"email": "x@example.com", "timestamp": int(T0.timestamp())}
    batch: list[Any] = [bounce, no_event, "garbage", 42, None, {"event": 7}]
    # When SendGrid posts it
    answer = server.post("sendgrid", *signed(batch))
    # Then the bounce takes effect and each malformed item is stored as unknown
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"received": 6, "stored": 6, "duplicates": 0, "unmatched": 5}
    rows = stored_events(engine)
    assert [(r.event_type, r.provider_event_type) for r in rows] == [
        ("bounced", "bounce/bounce"),
        *[("unknown", "malformed")] * 5,
    ]
    assert rows[0].notification_id == sent.id
    assert [r.payload for r in rows[1:]] == [
        no_event,
        {"item": "garbage"},
        {"item": 42},
        {"item": None},
        {"event": 7},
    ]
    assert [entry.reason for entry in suppressions(engine)] == ["hard_bounce"]
    # And the same batch again is all duplicates
    again = server.post("sendgrid", *signed(batch)).json()
    assert (again["stored"], again["duplicates"]) == (0, 6)


def test_what_the_adapter_sends_links_the_events(server: WebhookServer, engine: Engine) -> None:
    # Given a notification sent through the SendGrid adapter (SendGrid answering X-Message-Id)
    sent = add_notification(
        engine, to_address="zoe@example.org", esp="sendgrid", esp_message_id=None
    )
    with ApiServer(default=Answer(202, headers={"X-Message-Id": "14c5d75ce93.dfd.64b469"})) as api:
        result = adapter_from_url(f"sendgrid://SG.key@{api.netloc}?insecure=1").send(
            outgoing_message(sent)
        )
        custom_args = api.last.json["custom_args"]
    assert result.provider_message_id == "14c5d75ce93.dfd.64b469"
    store_message_id(engine, sent, result.provider_message_id)
    # When SendGrid reports on it: sg_message_id extends the X-Message-Id, custom args echoed
    by_id = sendgrid_event("delivered", recipient="zoe@example.org", message_id="other")
    by_id.update(custom_args)
    by_message = sendgrid_event(
        "open", recipient="zoe@example.org", message_id=result.provider_message_id
    )
    by_message["sg_message_id"] = "14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0"
    answer = server.post("sendgrid", *signed([by_id, by_message]))
    # Then both find the notification: by our id, and by the message id the adapter stored
    assert answer.json()["unmatched"] == 0
    assert [row.notification_id for row in stored_events(engine)] == [sent.id, sent.id]


@pytest.mark.parametrize(
    ("sg_message_id", "expected"),
    [
        (
            "W1hMf3pUTgS6_VV7eXGtvg.filterdrecv-5645d9c87f-78xgx-1-5ECC5A42-1F.0",
            "W1hMf3pUTgS6_VV7eXGtvg",
        ),
        ("cJzCzytgTeiyRns9uybNaQ.filter0071p3iad2-27823-5C320D7B-2A.0", "cJzCzytgTeiyRns9uybNaQ"),
        ("14c5d75ce93.dfd.64b469.filter0001.16648.5515E0B88.0", "14c5d75ce93.dfd.64b469"),
        ("XBg2anf2TqCy6WXKQFhieQ.recvd-5f54b5d587-ncg6d-1-5F0DD5F8-4.0", "XBg2anf2TqCy6WXKQFhieQ"),
        ("plainid.0", "plainid"),
        ("", None),
        (None, None),
    ],
)
def test_provider_message_id_is_the_x_message_id(
    sg_message_id: str | None, expected: str | None
) -> None:
    assert provider_message_id(sg_message_id) == expected


def test_an_event_of_an_unknown_message_is_stored_unmatched(
    server: WebhookServer, engine: Engine
) -> None:
    answer = server.post("sendgrid", *signed([sendgrid_event("delivered", message_id="nobody")]))
    assert answer.json() == {"received": 1, "stored": 1, "duplicates": 0, "unmatched": 1}
    assert stored_events(engine)[0].notification_id is None


def test_events_without_sg_event_id_dedupe_by_their_content(
    server: WebhookServer, engine: Engine
) -> None:
    # Given an old-style dropped event without sg_event_id
    event = sendgrid_event("dropped", reason="Invalid")
    del event["sg_event_id"]
    body, headers = signed([event])
    # When it is posted twice, then it is stored once
    assert server.post("sendgrid", body, headers).json()["stored"] == 1
    assert server.post("sendgrid", *signed([event])).json()["duplicates"] == 1
    assert len(stored_events(engine)) == 1


def test_a_body_changed_after_signing_is_refused(server: WebhookServer, engine: Engine) -> None:
    body, headers = signed([sendgrid_event("delivered")])
    tampered = body.replace(b"delivered", b"bounce\x20\x20\x20")
    answer = server.post("sendgrid", tampered, headers)
    assert answer.status_code == 403
    assert "wrong signature" in answer.json()["message"]
    assert stored_events(engine) == []


def test_a_signature_that_is_not_base64_is_refused(server: WebhookServer, engine: Engine) -> None:
    body, headers = signed([sendgrid_event("delivered")])
    headers[SIGNATURE_HEADER] = "not base64!"
    assert server.post("sendgrid", body, headers).status_code == 403
    assert stored_events(engine) == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"{}", "JSON array"),
        (b"not json", "not JSON"),
        (b'"bob@example.com"', "JSON array"),
    ],
)
def test_a_body_not_in_sendgrids_format_is_400(
    server: WebhookServer, engine: Engine, body: bytes, message: str
) -> None:
    stamp = str(int(time.time()))
    signature = PRIVATE_KEY.sign(stamp.encode() + body, ec.ECDSA(hashes.SHA256()))
    headers = {SIGNATURE_HEADER: base64.b64encode(signature).decode(), TIMESTAMP_HEADER: stamp}
    answer = server.post("sendgrid", body, headers)
    assert answer.status_code == 400
    assert message in answer.json()["message"]
    assert "bob@example.com" not in answer.text
    assert stored_events(engine) == []


def test_the_signed_timestamp_must_be_recent(
    webhook_server: Callable[..., WebhookServer], engine: Engine
) -> None:
    server = webhook_server(sendgrid_webhook_public_key=PUBLIC_KEY, webhook_tolerance_s=300)
    with freeze_time(T0, real_asyncio=True):
        # Given calls signed 301 s before now, and 299 s before now
        stale = signed([sendgrid_event("delivered")], timestamp=int(T0.timestamp()) - 301)
        fresh = signed([sendgrid_event("delivered")], timestamp=int(T0.timestamp()) - 299)
        future = signed([sendgrid_event("delivered")], timestamp=int(T0.timestamp()) + 301)
        # Then the stale and the future one are refused, the fresh one taken
        refused = server.post("sendgrid", *stale)
        assert refused.status_code == 403
        assert "WEBHOOK_TOLERANCE_S=0" in refused.json()["message"]
        assert server.post("sendgrid", *future).status_code == 403
        assert server.post("sendgrid", *fresh).status_code == 200
    assert len(stored_events(engine)) == 1


def test_tolerance_0_accepts_captured_events(
    webhook_server: Callable[..., WebhookServer], engine: Engine
) -> None:
    # Given the age check turned off, a call captured a year ago is replayed
    server = webhook_server(sendgrid_webhook_public_key=PUBLIC_KEY, webhook_tolerance_s=0)
    old = int((T0 - timedelta(days=365)).timestamp())
    with freeze_time(T0, real_asyncio=True):
        answer = server.post("sendgrid", *signed([sendgrid_event("delivered")], timestamp=old))
    assert answer.status_code == 200
    assert len(stored_events(engine)) == 1


def test_not_configured_is_404_naming_the_variable(
    webhook_server: Callable[..., WebhookServer],
) -> None:
    answer = webhook_server().post("sendgrid", *signed([sendgrid_event("delivered")]))
    assert answer.status_code == 404
    assert "CRM_NOTIFY_SENDGRID_WEBHOOK_PUBLIC_KEY" in answer.json()["message"]


def test_a_pem_key_is_accepted(make_settings: Callable[..., Settings]) -> None:
    pem = (
        PRIVATE_KEY.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    webhook = SendGridWebhook.from_settings(make_settings(sendgrid_webhook_public_key=pem))
    assert webhook is not None
    assert webhook.public_key.public_numbers() == PRIVATE_KEY.public_key().public_numbers()


@pytest.mark.parametrize(
    "key",
    [
        "not-a-key",
        base64.b64encode(b"garbage bytes").decode(),
        base64.b64encode(
            rsa.generate_private_key(public_exponent=65537, key_size=2048)
            .public_key()
            .public_bytes(
                serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
            )
        ).decode(),
    ],
)
def test_a_bad_key_fails_at_start_naming_the_variable(
    make_settings: Callable[..., Settings], key: str
) -> None:
    with pytest.raises(ConfigurationError, match="CRM_NOTIFY_SENDGRID_WEBHOOK_PUBLIC_KEY"):
        SendGridWebhook.from_settings(make_settings(sendgrid_webhook_public_key=key))
