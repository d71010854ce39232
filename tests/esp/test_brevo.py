"""The Brevo adapter against a real HTTP server on loopback that checks Brevo's transactional
email contract (``POST /v3/smtp/email``) and answers as Brevo does."""

from __future__ import annotations

import email.policy
import json
import uuid
from collections.abc import Iterator
from email.message import EmailMessage

import pytest

from crm_notify.errors import ConfigurationError, EspPermanentError, EspTransientError
from crm_notify.esp import adapter_from_url
from crm_notify.esp.brevo import BrevoAdapter, idempotency_key
from crm_notify.esp.http import parse_esp_url
from crm_notify.render import RenderedMessage, build_message
from tests.esp._api_server import Answer, ApiServer, RecordedRequest

KEY = "xkeysib-test"
#: Standard headers Brevo does not take in ``headers`` (lower case).
STANDARD = {"from", "to", "subject", "date", "message-id", "content-type", "mime-version"}


def brevo_contract(request: RecordedRequest) -> Answer | None:
    """Answer 401/400 as Brevo does when the request breaks the documented contract."""
    if request.headers.get("api-key") != KEY:
        return Answer(401, json={"code": "unauthorized", "message": "Key not found"})
    assert (request.method, request.path) == ("POST", "/v3/smtp/email")
    assert request.headers["content-type"] == "application/json"
    body = request.json
    if not body.get("sender", {}).get("email"):
        return Answer(400, json={"code": "missing_parameter", "message": "sender is missing"})
    if not body.get("to") or not all(r.get("email") for r in body["to"]):
        return Answer(400, json={"code": "missing_parameter", "message": "to is missing"})
    if not body.get("subject"):
        return Answer(400, json={"code": "missing_parameter", "message": "subject is missing"})
    if not (body.get("htmlContent") or body.get("textContent")):
        return Answer(400, json={"code": "missing_parameter", "message": "content is missing"})
    headers = body.get("headers", {})
    if any(name.lower() in STANDARD for name in headers):
        return Answer(400, json={"code": "invalid_parameter", "message": "standard header"})
    if any(not isinstance(value, str) for value in headers.values()):
        return Answer(400, json={"code": "invalid_parameter", "message": "header not a string"})
    try:
        uuid.UUID(headers.get("idempotencyKey", ""))
    except ValueError:
        return Answer(400, json={"code": "invalid_parameter", "message": "idempotencyKey"})
    return None


@pytest.fixture
def api() -> Iterator[ApiServer]:
    with ApiServer(default=Answer(201, json={"messageId": "<default@smtp-relay>"})) as server:
        server.check = brevo_contract
        yield server


def adapter(api: ApiServer, **options: str) -> BrevoAdapter:
    query = "&".join(["insecure=1", *(f"{k}={v}" for k, v in options.items())])
    built = adapter_from_url(f"brevo://{KEY}@{api.netloc}?{query}")
    assert isinstance(built, BrevoAdapter)
    return built


def message(
    *, html: str | None = "<p>Cześć</p>", message_id: str = "<n42@example.com>"
) -> EmailMessage:
    rendered = RenderedMessage(
        template="order_shipped",
        language="pl",
        subject="Zażółć — shipped",
        html=html,
        text="Cześć",
    )
    return build_message(
        rendered,
        from_address="shop@example.com",
        from_name="The Shop",
        to_address="zoe@example.org",
        to_name="Zoë Smith",
        message_id=message_id,
        extra_headers={
            "X-CRM-Notify-Id": "42",
            "X-CRM-Notify-Rule": "order_shipped",
            "List-Unsubscribe": "<https://shop.example.com/u/abc>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        },
    )


def test_accepted_message_is_sent_as_documented_and_returns_the_message_id(
    api: ApiServer,
) -> None:
    # Given Brevo accepting the message
    api.respond(201, json={"messageId": "<202401011200.123@smtp-relay.mailin.fr>"})
    # When it is sent
    result = adapter(api).send(message())
    # Then Brevo's messageId comes back, and the request follows the documented contract
    assert (result.esp, result.provider_message_id) == (
        "brevo",
        "<202401011200.123@smtp-relay.mailin.fr>",
    )
    body = api.last.json
    assert body["sender"] == {"email": "shop@example.com", "name": "The Shop"}
    assert body["to"] == [{"email": "zoe@example.org", "name": "Zoë Smith"}]
    assert body["subject"] == "Zażółć — shipped"
    assert body["htmlContent"] == "<p>Cześć</p>\n"
    assert body["textContent"] == "Cześć\n"
    assert body["tags"] == ["order_shipped"]
    headers = body["headers"]
    assert headers["List-Unsubscribe"] == "<https://shop.example.com/u/abc>"
    assert headers["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert headers["X-CRM-Notify-Id"] == "42"
    assert json.loads(headers["X-Mailin-custom"]) == {
        "crm_notify_id": "42",
        "crm_notify_rule": "order_shipped",
    }
    assert headers["idempotencyKey"] == idempotency_key(message())
    assert "Message-ID" not in headers
    assert api.last.headers["accept"] == "application/json"


def test_the_idempotency_key_is_stable_per_message_and_differs_between_messages(
    api: ApiServer,
) -> None:
    # Given the same message sent twice (a retry), from stored text, and another message
    sender = adapter(api)
    sender.send(message())
    sender.send_text(message().as_string(policy=email.policy.SMTP))
    sender.send(message(message_id="<n43@example.com>"))
    # Then the retry carries the same key (and the same request), the other message another
    first, retry, other = (r.json for r in api.requests)
    assert first == retry
    assert first["headers"]["idempotencyKey"] != other["headers"]["idempotencyKey"]


def test_a_repeated_idempotency_key_means_the_message_was_accepted_before(
    api: ApiServer,
) -> None:
    # Given Brevo refusing a retry whose first attempt it had accepted
    api.respond(400, json={"code": "duplicate_parameter", "message": "idempotencyKey already used"})
    # When it is sent, Then it is reported accepted (without an id), never failed
    result = adapter(api).send(message())
    assert (result.esp, result.provider_message_id) == ("brevo", None)


def test_a_text_only_message_sends_only_text_content(api: ApiServer) -> None:
    adapter(api).send(message(html=None))
    assert "htmlContent" not in api.last.json
    assert api.last.json["textContent"] == "Cześć\n"


def test_a_bad_request_is_permanent(api: ApiServer) -> None:
    api.respond(400, json={"code": "invalid_parameter", "message": "sender not valid"})
    with pytest.raises(EspPermanentError, match="sender not valid") as caught:
        adapter(api).send(message())
    assert caught.value.status_code == 400


def test_a_wrong_key_is_refused_with_401_as_a_permanent_failure(api: ApiServer) -> None:
    wrong = BrevoAdapter(api_key="xkeysib-wrong", base_url=api.url)
    with pytest.raises(EspPermanentError, match="Key not found") as caught:
        wrong.send(message())
    assert caught.value.status_code == 401


def test_429_is_transient_and_honours_retry_after(api: ApiServer) -> None:
    api.respond(429, json={"message": "Too many requests"}, headers={"Retry-After": "4"})
    with pytest.raises(EspTransientError) as caught:
        adapter(api).send(message())
    assert (caught.value.status_code, caught.value.retry_after_s) == (429, 4.0)


def test_429_without_retry_after_waits_x_sib_ratelimit_reset(api: ApiServer) -> None:
    api.respond(
        429,
        json={"message": "Too many requests"},
        headers={"x-sib-ratelimit-limit": "1000", "x-sib-ratelimit-reset": "12"},
    )
    with pytest.raises(EspTransientError) as caught:
        adapter(api).send(message())
    assert caught.value.retry_after_s == 12.0


def test_server_errors_are_transient(api: ApiServer) -> None:
    api.respond(500, json={"code": "internal_error", "message": "try later"})
    with pytest.raises(EspTransientError) as caught:
        adapter(api).send(message())
    assert caught.value.status_code == 500


def test_a_timeout_is_transient(api: ApiServer) -> None:
    api.respond(201, json={"messageId": "<late@x>"}, delay_s=3)
    with pytest.raises(EspTransientError, match="timeout"):
        adapter(api, timeout="0.3").send(message())


def test_esp_url_options() -> None:
    with pytest.raises(ConfigurationError, match="CRM_NOTIFY_ESP_URL"):
        BrevoAdapter.from_esp_url(parse_esp_url("brevo://@"))
    default = BrevoAdapter.from_esp_url(parse_esp_url("brevo://K@"))
    assert default.base_url == "https://api.brevo.com"
    proxied = BrevoAdapter.from_esp_url(parse_esp_url("brevo://K@proxy.example:8443"))
    assert proxied.base_url == "https://proxy.example:8443"
