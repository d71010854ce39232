"""Brevo transactional webhooks: HTTP Basic credentials or a bearer token, single and batched
bodies, every documented event type, and Brevo's message-id forms."""

from __future__ import annotations

import base64
import json
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from crm_notify.config import Settings
from crm_notify.errors import ConfigurationError
from crm_notify.webhooks.brevo import BrevoWebhook
from tests.webhooks._helpers import (
    WebhookContract,
    WebhookServer,
    add_notification,
    consent_records,
    history,
    stored_events,
    suppressions,
)

AUTH = "brevo-hook:s3cret-pass"
TOKEN = "brevo-bearer-token-0123456789"
#: 2024-05-01T10:00:00.123Z in Brevo's ts_epoch (milliseconds).
TS_EPOCH = 1714557600123


def basic(credentials: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(credentials.encode()).decode()}


def brevo_event(
    kind: str,
    *,
    email: str = "zoe@example.org",
    message_id: str = "<202405011000.12345678901@smtp-relay.mailin.fr>",
    notification_id: int | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """An event as Brevo posts it (fields from its transactional webhook reference)."""
    event: dict[str, Any] = {
        "event": kind,
        "email": email,
        "id": 1234567,  # the webhook's id, the same on every event
        "date": "2024-05-01 12:00:00",
        "ts": 1714564800,
        "message-id": message_id,
        "ts_event": 1714557600,
        "subject": "Your order shipped",
        "tags": ["order_shipped"],
        "ts_epoch": TS_EPOCH,
    }
    if notification_id is not None:
        custom = {"crm_notify_id": str(notification_id), "crm_notify_rule": "order_shipped"}
        event["X-Mailin-custom"] = json.dumps(custom, separators=(",", ":"))
    event.update(extra)
    return event


def post(server: WebhookServer, body: Any, headers: dict[str, str] | None = None) -> Any:
    sent = {"Content-Type": "application/json", **(basic(AUTH) if headers is None else headers)}
    return server.post("brevo", json.dumps(body).encode(), sent)


class TestBrevoContract(WebhookContract):
    provider = "brevo"

    def settings(self) -> dict[str, object]:
        return {"brevo_webhook_auth": AUTH}

    def stored_message_id(self, n: int) -> str:
        return f"<20240501100000.{n}{n}{n}@smtp-relay.mailin.fr>"

    def event(
        self, kind: str, *, recipient: str, message_id: str, notification_id: int | None
    ) -> Any:
        brevo_kind = {
            "delivered": "delivered",
            "hard_bounce": "hard_bounce",
            "complaint": "spam",
            "unsubscribe": "unsubscribed",
        }.get(kind, "list_addition")
        extra = {"reason": "550 5.1.1 no such user"} if kind == "hard_bounce" else {}
        return brevo_event(
            brevo_kind,
            email=recipient,
            message_id=message_id,
            notification_id=notification_id,
            **extra,
        )

    def request(self, events: list[Any]) -> tuple[bytes, dict[str, str]]:
        [event] = events
        return json.dumps(event).encode(), {"Content-Type": "application/json", **basic(AUTH)}

    def unauthenticated(self, events: list[Any]) -> tuple[bytes, dict[str, str]]:
        body, _headers = self.request(events)
        return body, {"Content-Type": "application/json"}

    def forged(self, events: list[Any]) -> tuple[bytes, dict[str, str]]:
        body, _headers = self.request(events)
        return body, {"Content-Type": "application/json", **basic("brevo-hook:guess")}


def test_every_event_type_in_one_batch(
    webhook_server: Callable[..., WebhookServer], engine: Engine
) -> None:
    # Given a webhook created with batched=true: the body is an array of events
    server = webhook_server(brevo_webhook_auth=AUTH)
    link = "https://shop.example.com/orders/7?utm_source=brevo"
    batch = [
        brevo_event("request", message_id="<m1@relay>"),
        brevo_event("delivered", message_id="<m2@relay>"),
        brevo_event("deferred", message_id="<m3@relay>", reason="421 try later"),
        brevo_event("soft_bounce", message_id="<m4@relay>", reason="mailbox full"),
        brevo_event("hard_bounce", message_id="<m5@relay>", email="gone@example.org"),
        brevo_event("invalid_email", message_id="<m6@relay>", email="bad@example.org"),
        brevo_event("blocked", message_id="<m7@relay>", reason="blocked : due to blacklist user"),
        brevo_event("error", message_id="<m8@relay>"),
        brevo_event("spam", message_id="<m9@relay>", email="angry@example.org"),
        brevo_event("unique_opened", message_id="<m10@relay>"),
        brevo_event("opened", message_id="<m11@relay>"),
        brevo_event("proxy_open", message_id="<m12@relay>"),
        brevo_event("unique_proxy_open", message_id="<m13@relay>"),
        brevo_event("click", message_id="<m14@relay>", link=link),
        brevo_event("unsubscribed", message_id="<m15@relay>"),
        brevo_event("list_addition", message_id="<m16@relay>"),
    ]
    # When Brevo posts the batch
    answer = post(server, batch)
    # Then each event is stored, mapped onto one vocabulary
    assert answer.status_code == 200, answer.text
    assert answer.json() == {"received": 16, "stored": 16, "duplicates": 0, "unmatched": 16}
    rows = stored_events(engine)
    assert [(r.provider_event_type, r.event_type, r.bounce_kind) for r in rows] == [
        ("request", "sent", None),
        ("delivered", "delivered", None),
        ("deferred", "deferred", None),
        ("soft_bounce", "bounced", "soft"),
        ("hard_bounce", "bounced", "hard"),
        ("invalid_email", "bounced", "hard"),
        ("blocked", "rejected", None),
        ("error", "rejected", None),
        ("spam", "complained", None),
        ("unique_opened", "opened", None),
        ("opened", "opened", None),
        ("proxy_open", "opened", None),
        ("unique_proxy_open", "opened", None),
        ("click", "clicked", None),
        ("unsubscribed", "unsubscribed", None),
        ("list_addition", "unknown", None),
    ]
    assert rows[13].url == link
    assert rows[2].description == "421 try later"
    assert rows[11].description == "opened through a privacy proxy"
    assert rows[0].occurred_at == datetime(2024, 5, 1, 10, 0, 0, 123000, tzinfo=UTC)
    # The hard bounce, the invalid address and the complaint suppress; nothing else does
    assert sorted(s.reason for s in suppressions(engine)) == [
        "complaint",
        "hard_bounce",
        "hard_bounce",
    ]


def test_bearer_token_is_accepted_when_configured(
    webhook_server: Callable[..., WebhookServer], engine: Engine
) -> None:
    # Given the webhook was created with auth {"type": "bearer", "token": ...}
    server = webhook_server(brevo_webhook_token=TOKEN)
    event = brevo_event("delivered")
    # Then the token is accepted, a wrong one refused, Basic credentials asked for nothing
    assert post(server, event, {"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    wrong = post(server, event, {"Authorization": "Bearer not-the-token"})
    assert (wrong.status_code, wrong.json()["message"]) == (
        403,
        "brevo webhook: wrong bearer token",
    )
    assert post(server, event, basic(AUTH)).status_code == 401
    assert post(server, event, {}).status_code == 401
    assert len(stored_events(engine)) == 1


def test_either_configured_credential_is_accepted(
    webhook_server: Callable[..., WebhookServer], engine: Engine
) -> None:
    server = webhook_server(brevo_webhook_auth=AUTH, brevo_webhook_token=TOKEN)
    first = brevo_event("delivered", message_id="<a@relay>")
    second = brevo_event("delivered", message_id="<b@relay>")
    assert post(server, first, basic(AUTH)).status_code == 200
    assert post(server, second, {"Authorization": f"Bearer {TOKEN}"}).status_code == 200
    assert post(server, first, {"Authorization": "Bearer x"}).status_code == 403
    missing = post(server, first, {})
    assert missing.status_code == 401
    assert "HTTP Basic credentials or a bearer token" in missing.json()["message"]
    assert len(stored_events(engine)) == 2


def test_message_id_without_brackets_matches_the_stored_form(
    webhook_server: Callable[..., WebhookServer], engine: Engine
) -> None:
    # Given a notification whose Brevo messageId was stored as the API returned it
    server = webhook_server(brevo_webhook_auth=AUTH)
    sent = add_notification(
        engine,
        to_address="zoe@example.org",
        esp="brevo",
        esp_message_id="<201798300811.5787683@relay.domain.com>",
    )
    # When an event carries the id without angle brackets
    event = brevo_event("delivered", message_id="201798300811.5787683@relay.domain.com")
    # Then it is still linked
    assert post(server, event).json()["unmatched"] == 0
    assert stored_events(engine)[0].provider_message_id == sent.esp_message_id
    assert [c.status for c in history(engine, sent.id)] == ["delivered"]


def test_unsubscribe_of_transactional_mail_withdraws_every_other_purpose(
    webhook_server: Callable[..., WebhookServer], engine: Engine
) -> None:
    # Given transactional mail whose id Brevo never returned (an idempotent retry), linked
    # through the X-Mailin-custom header our adapter set
    server = webhook_server(brevo_webhook_auth=AUTH)
    sent = add_notification(
        engine,
        to_address="zoe@example.org",
        esp="brevo",
        esp_message_id=None,
        purpose="transactional",
    )
    event = brevo_event("unsubscribed", message_id="<x@relay>", notification_id=sent.id)
    # When the recipient unsubscribes through Brevo
    assert post(server, event).json()["unmatched"] == 0
    # Then consent is withdrawn for marketing (transactional mail needs none)
    assert [(r.purpose, r.granted) for r in consent_records(engine)] == [("marketing", False)]


def test_other_senders_custom_header_is_ignored(
    webhook_server: Callable[..., WebhookServer], engine: Engine
) -> None:
    server = webhook_server(brevo_webhook_auth=AUTH)
    event = {**brevo_event("delivered"), "X-Mailin-custom": "campaign=spring"}
    answer = post(server, event)
    assert answer.status_code == 200 and answer.json()["unmatched"] == 1


def test_bad_bodies_are_400_and_name_the_problem(
    webhook_server: Callable[..., WebhookServer], engine: Engine
) -> None:
    server = webhook_server(brevo_webhook_auth=AUTH)
    headers = {"Content-Type": "application/json", **basic(AUTH)}
    assert server.post("brevo", b"{oops", headers).status_code == 400
    scalar = post(server, "bob@example.com")
    assert (scalar.status_code, scalar.json()["message"]) == (
        400,
        "brevo webhook: the body must be a JSON object or an array of them",
    )
    assert "bob@example.com" not in scalar.text  # errors never quote the body
    assert stored_events(engine) == []


def test_a_malformed_item_does_not_lose_the_batch(
    webhook_server: Callable[..., WebhookServer], engine: Engine
) -> None:
    # Given a batch with a hard bounce and items that are no event objects
    server = webhook_server(brevo_webhook_auth=AUTH)
    sent = add_notification(
        engine,
        to_address="zoe@example.org",
        esp="brevo",
        esp_message_id="<202405011000.12345678901@smtp-relay.mailin.fr>",
    )
    no_type = {"email": "zoe@example.org", "ts_epoch": TS_EPOCH}
    batch: list[Any] = [brevo_event("hard_bounce", reason="unknown user"), "nope", no_type, 3]
    # When Brevo posts it
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
    assert [r.payload for r in rows[1:]] == [{"item": "nope"}, no_type, {"item": 3}]
    assert [entry.reason for entry in suppressions(engine)] == ["hard_bounce"]
    # And a single (not batched) object without "event" is kept the same way
    assert post(server, {"email": "x@example.org"}).json()["stored"] == 1
    assert stored_events(engine)[-1].provider_event_type == "malformed"


def test_an_empty_batch_is_fine(
    webhook_server: Callable[..., WebhookServer], engine: Engine
) -> None:
    server = webhook_server(brevo_webhook_auth=AUTH)
    assert post(server, []).json() == {"received": 0, "stored": 0, "duplicates": 0, "unmatched": 0}


def test_basic_credentials_must_be_user_and_password(
    make_settings: Callable[..., Settings],
) -> None:
    with pytest.raises(ConfigurationError, match="CRM_NOTIFY_BREVO_WEBHOOK_AUTH"):
        BrevoWebhook.from_settings(make_settings(brevo_webhook_auth="no-colon"))
    assert BrevoWebhook.from_settings(make_settings()) is None
