"""Postmark's webhooks through the real app: one record per call behind HTTP Basic
credentials, every record type and bounce type, effects and replays."""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy.engine import Engine

from crm_notify.config import Settings
from crm_notify.errors import ConfigurationError
from crm_notify.esp import adapter_from_url
from crm_notify.webhooks.postmark import PostmarkWebhook
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

#: The credentials put in the webhook URL in Postmark.
CREDENTIALS = "postmark:s3cret-Passw0rd"
MESSAGE_ID = "883953f4-6105-42a2-a16a-77a8eac79483"
#: Postmark's time format: seven fractional digits, an offset or Z.
AT = "2026-03-02T12:00:00.1234567Z"


def basic(credentials: str = CREDENTIALS) -> dict[str, str]:
    token = base64.b64encode(credentials.encode()).decode()
    return {"Content-Type": "application/json", "Authorization": f"Basic {token}"}


def call(record: dict[str, Any], credentials: str = CREDENTIALS) -> tuple[bytes, dict[str, str]]:
    """The call as Postmark makes it."""
    return json.dumps(record).encode(), basic(credentials)


def common(
    recipient_field: str, recipient: str, message_id: str, notification_id: int | None
) -> dict[str, Any]:
    """The fields every record has."""
    fields = {
        "MessageStream": "outbound",
        "MessageID": message_id,
        "ServerID": 23,
        "Tag": "order_shipped",
        "Metadata": (
            {"crm_notify_id": str(notification_id), "crm_notify_rule": "order_shipped"}
            if notification_id is not None
            else {}
        ),
        recipient_field: recipient,
    }
    return fields


def bounce(
    bounce_type: str,
    type_code: int,
    *,
    recipient: str = "alice@example.com",
    message_id: str = MESSAGE_ID,
    notification_id: int | None = None,
    record_type: str = "Bounce",
    inactive: bool = False,
) -> dict[str, Any]:
    """A ``Bounce`` (or ``SpamComplaint``) record as documented."""
    return {
        "RecordType": record_type,
        "ID": int(uuid.uuid4().int % 4323372036854775807),
        "Type": bounce_type,
        "TypeCode": type_code,
        "Name": bounce_type,
        "Description": f"{bounce_type} description",
        "Details": "smtp;550 5.1.1 The email account that you tried to reach does not exist",
        "From": "shop@example.com",
        "BouncedAt": AT,
        "DumpAvailable": True,
        "Inactive": inactive,
        "CanActivate": True,
        "Subject": "Shipped",
        **common("Email", recipient, message_id, notification_id),
    }


def record(
    record_type: str,
    *,
    recipient: str = "alice@example.com",
    message_id: str = MESSAGE_ID,
    notification_id: int | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """A ``Delivery``, ``Open``, ``Click`` or ``SubscriptionChange`` record as documented."""
    time_field = {
        "Delivery": "DeliveredAt",
        "Open": "ReceivedAt",
        "Click": "ReceivedAt",
        "SubscriptionChange": "ChangedAt",
    }[record_type]
    return {
        "RecordType": record_type,
        time_field: AT,
        **common("Recipient", recipient, message_id, notification_id),
        **fields,
    }


def unsubscribed(**fields: Any) -> dict[str, Any]:
    return record(
        "SubscriptionChange",
        Origin="Recipient",
        SuppressSending=True,
        SuppressionReason="ManualSuppression",
        **fields,
    )


class TestPostmarkContract(WebhookContract):
    provider = "postmark"

    def settings(self) -> dict[str, object]:
        return {"postmark_webhook_auth": CREDENTIALS}

    def stored_message_id(self, n: int) -> str:
        return str(uuid.uuid4())

    def event(
        self, kind: str, *, recipient: str, message_id: str, notification_id: int | None
    ) -> Any:
        where: dict[str, Any] = {
            "recipient": recipient,
            "message_id": message_id,
            "notification_id": notification_id,
        }
        if kind == "delivered":
            return record("Delivery", Details="Test delivery webhook details", **where)
        if kind == "hard_bounce":
            return bounce("HardBounce", 1, inactive=True, **where)
        if kind == "complaint":
            return bounce("SpamComplaint", 100001, record_type="SpamComplaint", **where)
        if kind == "unsubscribe":
            return unsubscribed(**where)
        return bounce("AutoResponder", 64, **where)

    def request(self, events: list[Any]) -> tuple[bytes, dict[str, str]]:
        [one] = events
        return call(one)

    def unauthenticated(self, events: list[Any]) -> tuple[bytes, dict[str, str]]:
        [one] = events
        return json.dumps(one).encode(), {"Content-Type": "application/json"}

    def forged(self, events: list[Any]) -> tuple[bytes, dict[str, str]]:
        [one] = events
        return call(one, credentials="postmark:guessed")


@pytest.fixture
def server(webhook_server: Callable[..., WebhookServer]) -> WebhookServer:
    return webhook_server(postmark_webhook_auth=CREDENTIALS)


def test_every_record_and_bounce_type_is_mapped(server: WebhookServer, engine: Engine) -> None:
    # Given a sent notification
    sent = add_notification(
        engine, to_address="alice@example.com", esp="postmark", esp_message_id=MESSAGE_ID
    )
    records = [
        record("Delivery", Details="smtp;250 2.0.0 OK"),
        record("Open", FirstOpen=True, Platform="WebMail", ReadSeconds=5),
        record("Click", ClickLocation="HTML", OriginalLink="https://shop.example.com/o/1"),
        bounce("Transient", 2),
        bounce("DnsError", 256),
        bounce("SoftBounce", 4096),
        bounce("SpamNotification", 512),
        bounce("Blocked", 100006),
        bounce("ManuallyDeactivated", 100002),
        bounce("AutoResponder", 64),
        bounce("BadEmailAddress", 100000, inactive=True),
        bounce("SpamComplaint", 100001, record_type="SpamComplaint"),
        unsubscribed(),
        record("SubscriptionChange", Origin="Admin", SuppressSending=False, SuppressionReason=None),
    ]
    # When Postmark posts each (one record per call)
    for one in records:
        answer = server.post("postmark", *call(one))
        assert answer.status_code == 200, answer.text
        assert answer.json() == {"received": 1, "stored": 1, "duplicates": 0, "unmatched": 0}
    # Then each is mapped and linked to the notification
    rows = stored_events(engine)
    assert [(r.provider_event_type, r.event_type, r.bounce_kind) for r in rows] == [
        ("Delivery", "delivered", None),
        ("Open", "opened", None),
        ("Click", "clicked", None),
        ("Bounce/Transient", "deferred", None),
        ("Bounce/DnsError", "deferred", None),
        ("Bounce/SoftBounce", "bounced", "soft"),
        ("Bounce/SpamNotification", "bounced", "soft"),
        ("Bounce/Blocked", "bounced", "soft"),
        ("Bounce/ManuallyDeactivated", "rejected", None),
        ("Bounce/AutoResponder", "unknown", None),
        ("Bounce/BadEmailAddress", "bounced", "hard"),
        ("SpamComplaint", "complained", None),
        ("SubscriptionChange/ManualSuppression", "unsubscribed", None),
        ("SubscriptionChange/reactivated", "unknown", None),
    ]
    assert {r.notification_id for r in rows} == {sent.id}
    assert rows[2].url == "https://shop.example.com/o/1"
    assert rows[0].occurred_at == datetime(2026, 3, 2, 12, 0, 0, 123456, tzinfo=UTC)
    assert rows[5].description is not None and rows[5].description.startswith("SoftBounce")
    assert rows[12].description == "ManualSuppression (Recipient)"
    # and the hard bounce and the complaint suppress (one entry for the address), the
    # unsubscribe withdraws consent
    assert [entry.email for entry in suppressions(engine)] == ["alice@example.com"]
    assert [r.granted for r in consent_records(engine)] == [False]


@pytest.mark.parametrize(
    ("reason", "event_type", "suppressed"),
    [("HardBounce", "bounced", "hard_bounce"), ("SpamComplaint", "complained", "complaint")],
)
def test_a_suppressing_subscription_change_suppresses(
    server: WebhookServer, engine: Engine, reason: str, event_type: str, suppressed: str
) -> None:
    one = record(
        "SubscriptionChange", Origin="Recipient", SuppressSending=True, SuppressionReason=reason
    )
    assert server.post("postmark", *call(one)).status_code == 200
    assert stored_events(engine)[0].event_type == event_type
    assert [entry.reason for entry in suppressions(engine)] == [suppressed]
    assert consent_records(engine) == []


@pytest.mark.parametrize("origin", ["Customer", "Admin", None])
def test_a_manual_suppression_not_by_the_recipient_withdraws_no_consent(
    server: WebhookServer, engine: Engine, origin: str | None
) -> None:
    # Given a notification, and its address suppressed by the sender (UI or API) or by
    # Postmark's staff, not by the recipient
    sent = add_notification(
        engine, to_address="alice@example.com", esp="postmark", esp_message_id=MESSAGE_ID
    )
    one = {**unsubscribed(), "Origin": origin}
    if origin is None:
        del one["Origin"]
    # When Postmark reports the subscription change
    assert server.post("postmark", *call(one)).status_code == 200
    # Then it is stored as unknown, linked, and the recipient's consent stands
    [row] = stored_events(engine)
    assert (row.event_type, row.provider_event_type, row.notification_id) == (
        "unknown",
        "SubscriptionChange/ManualSuppression",
        sent.id,
    )
    assert consent_records(engine) == [] and suppressions(engine) == []


def test_a_suppression_for_an_unknown_reason_is_unknown(
    server: WebhookServer, engine: Engine
) -> None:
    one = {**unsubscribed(), "SuppressionReason": "SomethingNew"}
    assert server.post("postmark", *call(one)).status_code == 200
    assert stored_events(engine)[0].event_type == "unknown"
    assert consent_records(engine) == [] and suppressions(engine) == []


def test_a_bounce_with_only_its_type_code_is_mapped(server: WebhookServer, engine: Engine) -> None:
    one = bounce("HardBounce", 1)
    del one["Type"]
    assert server.post("postmark", *call(one)).status_code == 200
    row = stored_events(engine)[0]
    assert (row.provider_event_type, row.bounce_kind) == ("Bounce/HardBounce", "hard")


def test_what_the_adapter_sends_links_the_events(server: WebhookServer, engine: Engine) -> None:
    # Given a notification sent through the Postmark adapter
    sent = add_notification(
        engine, to_address="zoe@example.org", esp="postmark", esp_message_id=None
    )
    answer = Answer(
        200,
        json={
            "To": "zoe@example.org",
            "SubmittedAt": "2026-03-02T12:00:00.0000000Z",
            "MessageID": MESSAGE_ID,
            "ErrorCode": 0,
            "Message": "OK",
        },
    )
    with ApiServer(default=answer) as api:
        result = adapter_from_url(f"postmark://TOKEN@{api.netloc}?insecure=1").send(
            outgoing_message(sent)
        )
        metadata = api.last.json["Metadata"]
    store_message_id(engine, sent, result.provider_message_id)
    # When Postmark reports on it by its MessageID, and with our Metadata only
    by_message = record("Delivery", recipient="zoe@example.org")
    by_id = record("Open", recipient="zoe@example.org", message_id=str(uuid.uuid4()))
    by_id["Metadata"] = metadata
    for one in (by_message, by_id):
        assert server.post("postmark", *call(one)).json()["unmatched"] == 0
    # Then both find the notification
    assert [r.notification_id for r in stored_events(engine)] == [sent.id, sent.id]


def test_a_record_without_id_dedupes_by_its_content(server: WebhookServer, engine: Engine) -> None:
    body, headers = call(record("Open", FirstOpen=True))
    assert server.post("postmark", body, headers).json()["stored"] == 1
    assert server.post("postmark", body, headers).json()["duplicates"] == 1
    # while a later open of the same message is a new event
    later = record("Open", FirstOpen=False)
    later["ReceivedAt"] = "2026-03-02T13:00:00Z"
    assert server.post("postmark", *call(later)).json()["stored"] == 1


@pytest.mark.parametrize(
    ("authorization", "status"),
    [
        ("Bearer " + base64.b64encode(CREDENTIALS.encode()).decode(), 401),
        ("Basic", 401),
        ("Basic not-base64!!", 403),
        ("Basic " + base64.b64encode(b"postmark:").decode(), 403),
    ],
)
def test_credentials_other_than_the_configured_ones_are_refused(
    server: WebhookServer, engine: Engine, authorization: str, status: int
) -> None:
    body = json.dumps(bounce("HardBounce", 1)).encode()
    answer = server.post("postmark", body, {"Authorization": authorization})
    assert answer.status_code == status
    assert stored_events(engine) == [] and suppressions(engine) == []


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"[]", "JSON object"),
        (b"not json", "not JSON"),
        (b'{"MessageID": "x"}', "RecordType"),
        (b'{"FromFull": {"Email": "a@example.com"}, "Subject": "Hi"}', "inbound"),
    ],
)
def test_a_body_not_in_postmarks_format_is_400(
    server: WebhookServer, engine: Engine, body: bytes, message: str
) -> None:
    answer = server.post("postmark", body, basic())
    assert answer.status_code == 400
    assert message in answer.json()["message"]
    assert stored_events(engine) == []


def test_not_configured_is_404_naming_the_variable(
    webhook_server: Callable[..., WebhookServer],
) -> None:
    answer = webhook_server().post("postmark", *call(record("Delivery")))
    assert answer.status_code == 404
    assert "CRM_NOTIFY_POSTMARK_WEBHOOK_AUTH" in answer.json()["message"]


@pytest.mark.parametrize("value", ["no-colon", ":password", "user:"])
def test_credentials_must_be_user_and_password(
    make_settings: Callable[..., Settings], value: str
) -> None:
    with pytest.raises(ConfigurationError, match="CRM_NOTIFY_POSTMARK_WEBHOOK_AUTH"):
        PostmarkWebhook.from_settings(make_settings(postmark_webhook_auth=value))
