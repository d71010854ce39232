"""The Postmark adapter against a real HTTP server on loopback that checks Postmark's Email
API contract (``POST /email``) and answers as Postmark does, ``ErrorCode`` included."""

from __future__ import annotations

import dataclasses
import email.policy
from collections.abc import Iterator
from email.message import EmailMessage

import pytest

from crm_notify.errors import ConfigurationError, EspPermanentError, EspTransientError
from crm_notify.esp import adapter_from_url
from crm_notify.esp.http import parse_esp_url
from crm_notify.esp.postmark import PostmarkAdapter
from crm_notify.render import RenderedMessage, build_message
from tests.esp._api_server import Answer, ApiServer, RecordedRequest

TOKEN = "server-token-test"
INACTIVE = (
    "You tried to send to recipient(s) that have been marked as inactive. Found inactive "
    "addresses: zoe@example.org. Inactive recipients are ones that have generated a hard "
    "bounce, a spam complaint, or a manual suppression."
)


def ok(message_id: str = "b7bc2f4a-e38e-4336-af7d-e6c392c2f817") -> Answer:
    return Answer(
        200,
        json={
            "To": "zoe@example.org",
            "SubmittedAt": "2024-01-01T12:00:00.0000000Z",
            "MessageID": message_id,
            "ErrorCode": 0,
            "Message": "OK",
        },
    )


def postmark_contract(request: RecordedRequest) -> Answer | None:
    """Answer 401/422 as Postmark does when the request breaks the documented contract."""
    if request.headers.get("x-postmark-server-token") != TOKEN:
        return Answer(
            401,
            json={"ErrorCode": 10, "Message": "The Server Token you provided was invalid."},
        )
    assert (request.method, request.path) == ("POST", "/email")
    assert request.headers["content-type"] == "application/json"
    assert request.headers["accept"] == "application/json"
    body = request.json
    for field in ("From", "To", "Subject"):
        if not body.get(field):
            return Answer(422, json={"ErrorCode": 300, "Message": f"Invalid '{field}'"})
    if not (body.get("HtmlBody") or body.get("TextBody")):
        return Answer(422, json={"ErrorCode": 300, "Message": "Provide either body"})
    headers = body.get("Headers", [])
    if not all(set(h) == {"Name", "Value"} for h in headers):
        return Answer(422, json={"ErrorCode": 300, "Message": "Invalid Headers"})
    if any(not isinstance(v, str) or len(v) > 80 for v in body.get("Metadata", {}).values()):
        return Answer(422, json={"ErrorCode": 300, "Message": "Invalid metadata content"})
    return None


@pytest.fixture
def api() -> Iterator[ApiServer]:
    with ApiServer(default=ok()) as server:
        server.check = postmark_contract
        yield server


def adapter(api: ApiServer, **options: str) -> PostmarkAdapter:
    query = "&".join(["insecure=1", *(f"{k}={v}" for k, v in options.items())])
    built = adapter_from_url(f"postmark://{TOKEN}@{api.netloc}?{query}")
    assert isinstance(built, PostmarkAdapter)
    return built


def message(*, to_name: str = "Zoë Smith") -> EmailMessage:
    rendered = RenderedMessage(
        template="order_shipped",
        language="pl",
        subject="Zażółć — shipped",
        html="<p>Cześć</p>",
        text="Cześć",
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


def test_accepted_message_is_sent_as_documented_and_returns_the_message_id(
    api: ApiServer,
) -> None:
    # Given Postmark accepting the message
    api.respond_with(ok("0a129aee-e1cd-480d-b08d-4f48548ff48d"))
    # When it is sent
    result = adapter(api).send(message())
    # Then Postmark's MessageID comes back, and the request follows the documented contract
    assert (result.esp, result.provider_message_id) == (
        "postmark",
        "0a129aee-e1cd-480d-b08d-4f48548ff48d",
    )
    body = api.last.json
    assert body["From"] == "The Shop <shop@example.com>"
    assert body["To"] == "=?utf-8?q?Zo=C3=AB_Smith?= <zoe@example.org>"
    assert body["Subject"] == "Zażółć — shipped"
    assert body["TextBody"] == "Cześć\n"
    assert body["HtmlBody"] == "<p>Cześć</p>\n"
    assert body["MessageStream"] == "outbound"
    assert body["Tag"] == "order_shipped"
    assert body["Metadata"] == {"crm_notify_id": "42", "crm_notify_rule": "order_shipped"}
    assert body["Headers"] == [
        {"Name": "Message-ID", "Value": "<n42@example.com>"},
        {"Name": "X-CRM-Notify-Id", "Value": "42"},
        {"Name": "X-CRM-Notify-Rule", "Value": "order_shipped"},
        {"Name": "List-Unsubscribe", "Value": "<https://shop.example.com/u/abc>"},
        {"Name": "List-Unsubscribe-Post", "Value": "List-Unsubscribe=One-Click"},
    ]


def test_stored_text_is_sent_as_the_message_it_holds_on_the_configured_stream(
    api: ApiServer,
) -> None:
    sender = adapter(api, stream="notifications")
    sender.send(message(to_name="Smith, Zoe"))
    sender.send_text(message(to_name="Smith, Zoe").as_string(policy=email.policy.SMTP))
    first, second = (r.json for r in api.requests)
    assert first == second
    assert first["To"] == '"Smith, Zoe" <zoe@example.org>'
    assert first["MessageStream"] == "notifications"


def test_an_inactive_recipient_is_a_permanent_failure(api: ApiServer) -> None:
    # Given Postmark refusing a recipient that bounced hard before (422, ErrorCode 406)
    api.respond(422, json={"ErrorCode": 406, "Message": INACTIVE})
    # When it is sent, Then the failure is permanent and says why
    with pytest.raises(EspPermanentError, match="inactive") as caught:
        adapter(api).send(message())
    assert caught.value.status_code == 422


def test_an_invalid_request_is_permanent(api: ApiServer) -> None:
    api.respond(422, json={"ErrorCode": 300, "Message": "Invalid 'From' address"})
    with pytest.raises(EspPermanentError, match="ErrorCode 300"):
        adapter(api).send(message())


@pytest.mark.parametrize("code", [100, 405, 429])
def test_error_codes_worth_retrying_are_transient_even_in_a_422(api: ApiServer, code: int) -> None:
    api.respond(422, json={"ErrorCode": code, "Message": "later"})
    with pytest.raises(EspTransientError, match=f"ErrorCode {code}"):
        adapter(api).send(message())


def test_a_wrong_token_is_refused_with_401_as_a_permanent_failure(api: ApiServer) -> None:
    wrong = PostmarkAdapter(server_token="wrong", base_url=api.url)
    with pytest.raises(EspPermanentError, match="Server Token") as caught:
        wrong.send(message())
    assert caught.value.status_code == 401


def test_a_bad_request_is_permanent(api: ApiServer) -> None:
    api.respond(400, body="Bad Request")
    with pytest.raises(EspPermanentError) as caught:
        adapter(api).send(message())
    assert caught.value.status_code == 400


def test_429_is_transient_and_honours_retry_after(api: ApiServer) -> None:
    api.respond(
        429, json={"ErrorCode": 429, "Message": "Rate limit exceeded"}, headers={"Retry-After": "9"}
    )
    with pytest.raises(EspTransientError) as caught:
        adapter(api).send(message())
    assert (caught.value.status_code, caught.value.retry_after_s) == (429, 9.0)


@pytest.mark.parametrize("status", [500, 503])
def test_server_errors_are_transient(api: ApiServer, status: int) -> None:
    api.respond(status, json={"ErrorCode": 0, "Message": "Internal server error"})
    with pytest.raises(EspTransientError) as caught:
        adapter(api).send(message())
    assert caught.value.status_code == status


def test_a_timeout_is_transient(api: ApiServer) -> None:
    api.respond_with(dataclasses.replace(ok(), delay_s=3))
    with pytest.raises(EspTransientError, match="timeout"):
        adapter(api, timeout="0.3").send(message())


def test_esp_url_options() -> None:
    with pytest.raises(ConfigurationError, match="CRM_NOTIFY_ESP_URL"):
        PostmarkAdapter.from_esp_url(parse_esp_url("postmark://@"))
    default = PostmarkAdapter.from_esp_url(parse_esp_url("postmark://T@"))
    assert (default.base_url, default.message_stream) == ("https://api.postmarkapp.com", "outbound")
