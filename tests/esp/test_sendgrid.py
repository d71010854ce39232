"""The SendGrid adapter against a real HTTP server on loopback that checks SendGrid's v3 Mail
Send contract and answers as SendGrid does."""

from __future__ import annotations

import email.policy
import time
from collections.abc import Iterator
from email.message import EmailMessage

import pytest

from crm_notify.errors import ConfigurationError, EspPermanentError, EspTransientError
from crm_notify.esp import adapter_from_url
from crm_notify.esp.http import parse_esp_url
from crm_notify.esp.sendgrid import SendGridAdapter
from crm_notify.render import RenderedMessage, build_message
from tests.esp._api_server import Answer, ApiServer, RecordedRequest

KEY = "SG.test-key"
#: Headers SendGrid refuses in ``headers`` (lower case).
RESERVED = {
    "x-sg-id",
    "x-sg-eid",
    "received",
    "dkim-signature",
    "content-type",
    "content-transfer-encoding",
    "to",
    "from",
    "subject",
    "reply-to",
    "cc",
    "bcc",
}


def sendgrid_contract(request: RecordedRequest) -> Answer | None:
    """Answer 401/400 as SendGrid does when the request breaks the documented contract."""
    if request.headers.get("authorization") != f"Bearer {KEY}":
        return Answer(401, json={"errors": [{"field": None, "message": "unauthorized"}]})
    assert (request.method, request.path) == ("POST", "/v3/mail/send")
    assert request.headers["content-type"] == "application/json"
    body = request.json
    problems = []
    if not body.get("personalizations") or not body["personalizations"][0].get("to"):
        problems.append("personalizations")
    if not body.get("from", {}).get("email"):
        problems.append("from.email")
    if not body.get("subject"):
        problems.append("subject")
    types = [c["type"] for c in body.get("content", [])]
    if not types or (types[0] != "text/plain" and "text/plain" in types):
        problems.append("content")
    if any(name.lower() in RESERVED for name in body.get("headers", {})):
        problems.append("headers")
    if any(not isinstance(v, str) for v in body.get("custom_args", {}).values()):
        problems.append("custom_args")
    if len(body.get("categories", [])) > 10:
        problems.append("categories")
    if problems:
        errors = [{"field": p, "message": "invalid", "help": None} for p in problems]
        return Answer(400, json={"errors": errors})
    return None


@pytest.fixture
def api() -> Iterator[ApiServer]:
    with ApiServer(default=Answer(202, headers={"X-Message-Id": "sg-default"})) as server:
        server.check = sendgrid_contract
        yield server


def adapter(api: ApiServer, **options: str) -> SendGridAdapter:
    query = "&".join(["insecure=1", *(f"{k}={v}" for k, v in options.items())])
    built = adapter_from_url(f"sendgrid://{KEY}@{api.netloc}?{query}")
    assert isinstance(built, SendGridAdapter)
    return built


def message(*, to_name: str | None = "Zoë Smith", text: str | None = "Cześć") -> EmailMessage:
    rendered = RenderedMessage(
        template="order_shipped",
        language="pl",
        subject="Zażółć — shipped",
        html="<p>Cześć</p>",
        text=text,
    )
    return build_message(
        rendered,
        from_address="shop@example.com",
        from_name="The Shop",
        to_address="zoe@example.org",
        to_name=to_name,
        message_id="<n42@example.com>",
        extra_headers={
            "X-CRM-Notify-Id": "42",
            "X-CRM-Notify-Rule": "order_shipped",
            "List-Unsubscribe": "<https://shop.example.com/u/abc>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        },
    )


def test_accepted_message_is_sent_as_documented_and_returns_the_x_message_id(
    api: ApiServer,
) -> None:
    # Given SendGrid accepting the message
    api.respond(202, headers={"X-Message-Id": "sg-abc123"})
    # When it is sent
    result = adapter(api).send(message())
    # Then SendGrid's id comes back, and the request follows the Mail Send contract
    assert (result.esp, result.provider_message_id) == ("sendgrid", "sg-abc123")
    body = api.last.json
    assert body["personalizations"] == [{"to": [{"email": "zoe@example.org", "name": "Zoë Smith"}]}]
    assert body["from"] == {"email": "shop@example.com", "name": "The Shop"}
    assert body["subject"] == "Zażółć — shipped"
    assert body["content"] == [
        {"type": "text/plain", "value": "Cześć\n"},
        {"type": "text/html", "value": "<p>Cześć</p>\n"},
    ]
    assert body["headers"] == {
        "Message-ID": "<n42@example.com>",
        "X-CRM-Notify-Id": "42",
        "X-CRM-Notify-Rule": "order_shipped",
        "List-Unsubscribe": "<https://shop.example.com/u/abc>",
        "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
    }
    assert body["custom_args"] == {"crm_notify_id": "42", "crm_notify_rule": "order_shipped"}
    assert body["categories"] == ["order_shipped"]
    assert api.last.headers["accept"] == "application/json"


def test_stored_text_is_sent_as_the_message_it_holds(api: ApiServer) -> None:
    # Given a message as the outbox stores it (SMTP line endings)
    sent = adapter(api)
    sent.send(message())
    stored = message().as_string(policy=email.policy.SMTP)
    # When the stored text is sent
    sent.send_text(stored)
    # Then SendGrid receives the same request
    first, second = api.requests
    assert first.json == second.json


def test_a_name_with_a_comma_is_quoted_and_a_text_only_message_has_one_part(
    api: ApiServer,
) -> None:
    # Given a recipient name with a comma and no HTML body
    adapter(api).send(message(to_name="Smith, Zoe"))
    adapter(api).send(
        build_message(
            RenderedMessage(template="t", language="en", subject="Hi", html=None, text="Only text"),
            from_address="shop@example.com",
            to_address="zoe@example.org",
        )
    )
    # Then the name reaches SendGrid quoted, and text/plain is the only content
    first, second = api.requests
    assert first.json["personalizations"][0]["to"][0]["name"] == '"Smith, Zoe"'
    assert second.json["content"] == [{"type": "text/plain", "value": "Only text\n"}]
    assert "categories" not in second.json and "custom_args" not in second.json


@pytest.mark.parametrize("status", [400, 403, 413])
def test_client_errors_are_permanent(api: ApiServer, status: int) -> None:
    # Given SendGrid refusing the request
    api.respond(status, json={"errors": [{"field": "from", "message": "not verified"}]})
    # When it is sent, Then the failure is permanent and carries SendGrid's reason
    with pytest.raises(EspPermanentError, match="not verified") as caught:
        adapter(api).send(message())
    assert caught.value.status_code == status


def test_a_wrong_key_is_refused_with_401_as_a_permanent_failure(api: ApiServer) -> None:
    wrong = SendGridAdapter(api_key="SG.wrong", base_url=api.url)
    with pytest.raises(EspPermanentError) as caught:
        wrong.send(message())
    assert caught.value.status_code == 401


def test_429_is_transient_and_honours_retry_after(api: ApiServer) -> None:
    api.respond(
        429, json={"errors": [{"message": "too many requests"}]}, headers={"Retry-After": "7"}
    )
    with pytest.raises(EspTransientError) as caught:
        adapter(api).send(message())
    assert (caught.value.status_code, caught.value.retry_after_s) == (429, 7.0)


def test_429_without_retry_after_waits_until_x_ratelimit_reset(api: ApiServer) -> None:
    reset = int(time.time()) + 30
    api.respond(
        429, json={"errors": [{"message": "too many"}]}, headers={"X-RateLimit-Reset": str(reset)}
    )
    with pytest.raises(EspTransientError) as caught:
        adapter(api).send(message())
    assert caught.value.retry_after_s is not None
    assert 25 <= caught.value.retry_after_s <= 30


@pytest.mark.parametrize("status", [500, 503])
def test_server_errors_are_transient(api: ApiServer, status: int) -> None:
    api.respond(status, json={"errors": [{"message": "internal error"}]})
    with pytest.raises(EspTransientError) as caught:
        adapter(api).send(message())
    assert caught.value.status_code == status


def test_a_timeout_is_transient(api: ApiServer) -> None:
    # Given SendGrid answering after the adapter's timeout
    api.respond(202, headers={"X-Message-Id": "late"}, delay_s=3)
    # When it is sent, Then the failure is transient
    with pytest.raises(EspTransientError, match="timeout"):
        adapter(api, timeout="0.3").send(message())


def test_a_refused_connection_is_transient(api: ApiServer) -> None:
    gone = SendGridAdapter(api_key=KEY, base_url=api.url)
    api.close()
    with pytest.raises(EspTransientError, match="network error"):
        gone.send(message())


def test_esp_url_options() -> None:
    # The key is required, the host defaults to SendGrid's (EU with region=eu)
    with pytest.raises(ConfigurationError, match="CRM_NOTIFY_ESP_URL"):
        SendGridAdapter.from_esp_url(parse_esp_url("sendgrid://@"))
    assert SendGridAdapter.from_esp_url(parse_esp_url("sendgrid://K@")).base_url == (
        "https://api.sendgrid.com"
    )
    eu = SendGridAdapter.from_esp_url(parse_esp_url("sendgrid://K@?region=eu"))
    assert eu.base_url == "https://api.eu.sendgrid.com"
    with pytest.raises(ConfigurationError, match="region"):
        SendGridAdapter.from_esp_url(parse_esp_url("sendgrid://K@?region=mars"))
    with pytest.raises(ConfigurationError, match="timeout"):
        SendGridAdapter.from_esp_url(parse_esp_url("sendgrid://K@?timeout=soon"))
