"""The Mailchimp Transactional (Mandrill) adapter against a real HTTP server on loopback that
checks requests against the documented ``messages/send`` contract and answers as Mandrill
does (errors as HTTP 500 with a JSON ``name``, per-recipient statuses in a 200)."""

from __future__ import annotations

from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any

import pytest

from crm_notify.errors import ConfigurationError, EspPermanentError, EspTransientError
from crm_notify.esp.http import parse_esp_url
from crm_notify.esp.mandrill import MandrillAdapter
from crm_notify.render import RenderedMessage, build_message
from tests.esp._api_server import Answer, ApiServer, RecordedRequest

KEY = "md-test-key"
UNSUBSCRIBE = "<https://shop.example.com/u/tok>, <mailto:unsub@shop.example.com>"


def _message(**headers: str) -> EmailMessage:
    rendered = RenderedMessage(
        template="order_shipped",
        language="pl",
        subject="Zamówienie wysłane 🚀",
        html="<p>Cześć Zoë</p>",
        text="Cześć Zoë",
    )
    return build_message(
        rendered,
        from_address="shop@example.com",
        from_name="Sklep Ünö",
        to_address="zoe@example.org",
        to_name='Zoë "Q", Doe',
        message_id="<n-42@example.com>",
        extra_headers={
            "List-Unsubscribe": UNSUBSCRIBE,
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            "X-CRM-Notify-Id": "42",
            "X-CRM-Notify-Rule": "order_shipped",
            **headers,
        },
    )


def _error(name: str, message: str, code: int = -1) -> Answer:
    return Answer(500, json={"status": "error", "code": code, "name": name, "message": message})


def _mandrill_contract(request: RecordedRequest) -> Answer | None:
    """What Mandrill answers before sending: errors for a request off its contract."""
    if (request.method, request.path) != ("POST", "/api/1.0/messages/send.json"):
        return Answer(404, body="Not Found")
    if not request.headers.get("content-type", "").startswith("application/json"):
        return _error("ValidationError", "You must specify a key value", code=-2)
    body = request.json
    if body.get("key") != KEY:
        return _error("Invalid_Key", "Invalid API key", code=-1)
    message = body.get("message")
    if not isinstance(message, dict) or not message.get("to") or not message.get("from_email"):
        return _error("ValidationError", "Validation error: {'message':{'to':'required'}}", -2)
    return None


@pytest.fixture
def api() -> Iterator[ApiServer]:
    with ApiServer(
        check=_mandrill_contract,
        default=Answer(
            200, json=[{"email": "zoe@example.org", "status": "sent", "_id": "md-abc123"}]
        ),
    ) as server:
        yield server


def _adapter(api: ApiServer, **options: Any) -> MandrillAdapter:
    return MandrillAdapter(api_key=KEY, base_url=api.url, **options)


def test_sends_the_documented_request_and_returns_the_recipients_id(api: ApiServer) -> None:
    # Given an adapter built from an ESP URL pointing at the stand-in
    adapter = MandrillAdapter.from_esp_url(
        parse_esp_url(f"mandrill://{KEY}@{api.netloc}?insecure=1")
    )

    # When a rendered message is sent
    result = adapter.send(_message(**{"Reply-To": "help@example.com"}))

    # Then Mandrill's _id comes back as the provider message id
    assert (result.esp, result.provider_message_id) == ("mandrill", "md-abc123")
    # And the request follows messages/send: key in the body, message fields by name
    body = api.last.json
    assert body["key"] == KEY
    message = body["message"]
    assert message["from_email"] == "shop@example.com"
    assert message["from_name"] == "Sklep Ünö"
    assert message["to"] == [{"email": "zoe@example.org", "name": 'Zoë "Q", Doe', "type": "to"}]
    assert message["subject"] == "Zamówienie wysłane 🚀"
    assert message["text"].strip() == "Cześć Zoë"
    assert message["html"].strip() == "<p>Cześć Zoë</p>"
    # our headers ride along; the structural ones are fields, not headers
    assert message["headers"]["List-Unsubscribe"] == UNSUBSCRIBE
    assert message["headers"]["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert message["headers"]["Message-ID"] == "<n-42@example.com>"
    assert message["headers"]["Reply-To"] == "help@example.com"
    assert message["headers"]["X-CRM-Notify-Id"] == "42"
    assert not {"From", "To", "Subject", "Content-Type"} & set(message["headers"])
    # tracking: metadata links webhook events to the notification, the tag to the rule
    assert message["metadata"] == {"crm_notify_id": "42", "crm_notify_rule": "order_shipped"}
    assert message["tags"] == ["order_shipped"]
    adapter.close()


def test_a_stored_message_is_sent_the_same_way(api: ApiServer) -> None:
    # Given a message stored as text (as the outbox keeps it)
    text = _message().as_string()

    # When it is sent from its text
    result = _adapter(api).send_text(text)

    # Then the same fields go out
    assert result.provider_message_id == "md-abc123"
    assert api.last.json["message"]["metadata"]["crm_notify_id"] == "42"
    assert api.last.json["message"]["to"][0]["email"] == "zoe@example.org"


@pytest.mark.parametrize("status", ["queued", "scheduled"])
def test_queued_and_scheduled_recipients_are_accepted(api: ApiServer, status: str) -> None:
    queued = {"email": "zoe@example.org", "status": status, "queued_reason": "backlog"}
    api.respond(200, json=[{**queued, "_id": "md-q1"}])
    assert _adapter(api).send(_message()).provider_message_id == "md-q1"


@pytest.mark.parametrize(
    ("status", "reason"), [("rejected", "hard-bounce"), ("rejected", "unsub"), ("invalid", None)]
)
def test_a_rejected_recipient_in_a_200_is_a_permanent_failure(
    api: ApiServer, status: str, reason: str | None
) -> None:
    # Given Mandrill accepts the call but rejects the only recipient
    result: dict[str, Any] = {"email": "zoe@example.org", "status": status, "_id": "md-r1"}
    if reason:
        result["reject_reason"] = reason
    api.respond(200, json=[result])

    # When the message is sent / Then it fails for good, naming the reason
    with pytest.raises(EspPermanentError, match=f"zoe@example.org: {status}") as excinfo:
        _adapter(api).send(_message())
    if reason:
        assert reason in str(excinfo.value)


def test_a_wrong_key_is_invalid_key_with_http_500_and_permanent(api: ApiServer) -> None:
    # Given an adapter with a key Mandrill does not know
    adapter = MandrillAdapter(api_key="wrong", base_url=api.url)

    # When it sends / Then Mandrill's HTTP 500 "Invalid_Key" is not retried
    with pytest.raises(EspPermanentError, match="Invalid_Key") as excinfo:
        adapter.send(_message())
    assert excinfo.value.status_code == 500


@pytest.mark.parametrize(
    ("answer", "error", "retry_after"),
    [
        (_error("ValidationError", "Validation error", -2), EspPermanentError, None),
        (_error("PaymentRequired", "Requires payment", 4), EspPermanentError, None),
        (_error("GeneralError", "Unexpected error", -1), EspTransientError, None),
        (_error("ServiceUnavailable", "Down for maintenance", -99), EspTransientError, None),
        (Answer(500, body="<html>Internal Server Error</html>"), EspTransientError, None),
        (Answer(502, body="Bad Gateway"), EspTransientError, None),
        (Answer(429, headers={"Retry-After": "30"}), EspTransientError, 30.0),
        (Answer(400, body="Bad Request"), EspPermanentError, None),
        (Answer(401, body="Unauthorized"), EspPermanentError, None),
    ],
)
def test_error_answers_are_classified(
    api: ApiServer, answer: Answer, error: type[Exception], retry_after: float | None
) -> None:
    # Given Mandrill answers with an error
    api.respond(answer.status, json=answer.json, headers=answer.headers, body=answer.body)

    # When a message is sent / Then it is retried only when retrying can help
    with pytest.raises(error) as excinfo:
        _adapter(api).send(_message())
    assert getattr(excinfo.value, "status_code", None) == answer.status
    if isinstance(excinfo.value, EspTransientError):
        assert excinfo.value.retry_after_s == retry_after


def test_a_timeout_is_transient(api: ApiServer) -> None:
    # Given Mandrill takes longer to answer than the adapter waits
    api.respond(200, json=[{"email": "zoe@example.org", "status": "sent", "_id": "x"}], delay_s=3)

    # When a message is sent / Then it is a transient failure
    with pytest.raises(EspTransientError, match="timeout"):
        _adapter(api, timeout_s=0.3).send(_message())


def test_esp_url_needs_a_key_and_defaults_to_mandrills_host() -> None:
    with pytest.raises(ConfigurationError, match="CRM_NOTIFY_ESP_URL"):
        MandrillAdapter.from_esp_url(parse_esp_url("mandrill://"))
    adapter = MandrillAdapter.from_esp_url(parse_esp_url("mandrill://KEY@?timeout=5"))
    assert adapter.base_url == "https://mandrillapp.com"
    assert adapter._client.timeout.read == 5.0
    adapter.close()
