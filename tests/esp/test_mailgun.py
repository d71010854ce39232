"""The Mailgun adapter against a real HTTP server on loopback that checks requests against the
documented ``POST /v3/{domain}/messages`` contract (basic auth ``api:KEY``, form fields) and
answers as Mailgun does."""

from __future__ import annotations

import base64
from collections.abc import Iterator
from email.message import EmailMessage
from typing import Any

import pytest

from crm_notify.errors import ConfigurationError, EspPermanentError, EspTransientError
from crm_notify.esp.http import parse_esp_url
from crm_notify.esp.mailgun import MailgunAdapter
from crm_notify.render import RenderedMessage, build_message
from tests.esp._api_server import Answer, ApiServer, RecordedRequest

KEY = "key-3ax6xnjp29jd6fds4gc373sgvjxteol0"
DOMAIN = "mg.example.com"
UNSUBSCRIBE = "<https://shop.example.com/u/tok>"
PERMANENT, TRANSIENT = EspPermanentError, EspTransientError


def _message() -> EmailMessage:
    rendered = RenderedMessage(
        template="order_shipped",
        language="pl",
        subject="Zamówienie wysłane 🚀",
        html="<p>Cześć Zoë</p>",
        text="Cześć Zoë",
    )
    return build_message(
        rendered,
        from_address="shop@mg.example.com",
        from_name="Sklep Ünö",
        to_address="zoe@example.org",
        to_name='Zoë "Q", Doe',
        message_id="<n-42@mg.example.com>",
        extra_headers={
            "List-Unsubscribe": UNSUBSCRIBE,
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            "X-CRM-Notify-Id": "42",
            "X-CRM-Notify-Rule": "order_shipped",
        },
    )


def _mailgun_contract(request: RecordedRequest) -> Answer | None:
    """What Mailgun answers before sending: errors for a request off its contract."""
    if request.method != "POST" or request.path != f"/v3/{DOMAIN}/messages":
        return Answer(404, json={"message": "Domain not found: " + request.path})
    expected = "Basic " + base64.b64encode(f"api:{KEY}".encode()).decode()
    if request.headers.get("authorization") != expected:
        return Answer(401, body="Forbidden")
    if not request.headers.get("content-type", "").startswith(
        ("application/x-www-form-urlencoded", "multipart/form-data")
    ):
        return Answer(400, json={"message": "'from' parameter is missing"})
    form = request.form
    for name in ("from", "to", "subject"):
        if not form.get(name):
            return Answer(400, json={"message": f"'{name}' parameter is missing"})
    if not (form.get("text") or form.get("html")):
        return Answer(400, json={"message": "Need at least one of 'text' or 'html' parameters"})
    return None


@pytest.fixture
def api() -> Iterator[ApiServer]:
    with ApiServer(
        check=_mailgun_contract,
        default=Answer(
            200, json={"id": "<20260101.1.42@mg.example.com>", "message": "Queued. Thank you."}
        ),
    ) as server:
        yield server


def _adapter(api: ApiServer, **options: Any) -> MailgunAdapter:
    return MailgunAdapter(api_key=KEY, domain=DOMAIN, base_url=api.url, **options)


def test_sends_the_documented_form_and_returns_mailguns_id(api: ApiServer) -> None:
    # Given an adapter built from an ESP URL pointing at the stand-in
    url = f"mailgun://api:{KEY}@{api.netloc}/{DOMAIN}?insecure=1"
    adapter = MailgunAdapter.from_esp_url(parse_esp_url(url))

    # When a rendered message is sent
    result = adapter.send(_message())

    # Then Mailgun's id (as webhooks report it, without brackets) comes back
    assert (result.esp, result.provider_message_id) == ("mailgun", "20260101.1.42@mg.example.com")
    # And the form follows the messages API: parts as fields, headers as h:, data as v:
    form = api.last.form
    assert form["from"] == ["Sklep Ünö <shop@mg.example.com>"]
    assert form["to"] == ['"Zoë \\"Q\\", Doe" <zoe@example.org>']
    assert form["subject"] == ["Zamówienie wysłane 🚀"]
    assert form["text"][0].strip() == "Cześć Zoë"
    assert form["html"][0].strip() == "<p>Cześć Zoë</p>"
    assert form["h:List-Unsubscribe"] == [UNSUBSCRIBE]
    assert form["h:List-Unsubscribe-Post"] == ["List-Unsubscribe=One-Click"]
    assert form["h:Message-ID"] == ["<n-42@mg.example.com>"]
    assert form["h:X-CRM-Notify-Id"] == ["42"]
    assert form["v:crm_notify_id"] == ["42"]
    assert form["v:crm_notify_rule"] == ["order_shipped"]
    assert form["o:tag"] == ["order_shipped"]
    assert not any(name in form for name in ("h:From", "h:To", "h:Subject", "h:Content-Type"))
    adapter.close()


def test_a_stored_message_is_sent_the_same_way(api: ApiServer) -> None:
    result = _adapter(api).send_text(_message().as_string())
    assert result.provider_message_id == "20260101.1.42@mg.example.com"
    assert api.last.form["v:crm_notify_id"] == ["42"]


def test_a_wrong_key_is_refused_for_good(api: ApiServer) -> None:
    # Given an adapter with a key Mailgun does not know
    adapter = MailgunAdapter(api_key="key-wrong", domain=DOMAIN, base_url=api.url)
    # When it sends / Then Mailgun's 401 is permanent
    with pytest.raises(EspPermanentError, match="Forbidden") as excinfo:
        adapter.send(_message())
    assert excinfo.value.status_code == 401


def test_an_unknown_domain_is_refused_for_good(api: ApiServer) -> None:
    adapter = MailgunAdapter(api_key=KEY, domain="other.example.com", base_url=api.url)
    with pytest.raises(EspPermanentError, match="Domain not found") as excinfo:
        adapter.send(_message())
    assert excinfo.value.status_code == 404


@pytest.mark.parametrize(
    ("answer", "error", "retry_after"),
    [
        (Answer(400, json={"message": "to parameter is not a valid address"}), PERMANENT, None),
        (Answer(403, json={"message": "Domain is not allowed"}), PERMANENT, None),
        (Answer(429, json={"message": "Too many"}, headers={"Retry-After": "12"}), TRANSIENT, 12.0),
        (Answer(500, body="Internal Server Error"), TRANSIENT, None),
        (Answer(503, body="Service Unavailable"), TRANSIENT, None),
    ],
)
def test_error_answers_are_classified(
    api: ApiServer, answer: Answer, error: type[Exception], retry_after: float | None
) -> None:
    # Given Mailgun answers with an error
    api.respond(answer.status, json=answer.json, headers=answer.headers, body=answer.body)

    # When a message is sent / Then it is retried only when retrying can help
    with pytest.raises(error) as excinfo:
        _adapter(api).send(_message())
    assert getattr(excinfo.value, "status_code", None) == answer.status
    if isinstance(excinfo.value, EspTransientError):
        assert excinfo.value.retry_after_s == retry_after


def test_the_magnificent_api_page_means_a_wrong_endpoint(api: ApiServer) -> None:
    # Given Mailgun's catch-all success page for an endpoint it does not have
    api.respond(200, body="Mailgun Magnificent API")
    # When a message is sent / Then it is a permanent failure naming the cause
    with pytest.raises(EspPermanentError, match="domain and region"):
        _adapter(api).send(_message())


def test_a_timeout_is_transient(api: ApiServer) -> None:
    api.respond(200, json={"id": "<late@mg>", "message": "Queued. Thank you."}, delay_s=3)
    with pytest.raises(EspTransientError, match="timeout"):
        _adapter(api, timeout_s=0.3).send(_message())


def test_esp_url_takes_key_domain_and_region() -> None:
    # Given the documented URL forms
    eu = MailgunAdapter.from_esp_url(parse_esp_url(f"mailgun://api:{KEY}@/{DOMAIN}?region=eu"))
    us = MailgunAdapter.from_esp_url(parse_esp_url(f"mailgun://{KEY}@/{DOMAIN}"))
    # Then the region picks the API host, and the key is the password (or the lone user part)
    assert (eu.base_url, eu.domain, eu._api_key) == ("https://api.eu.mailgun.net", DOMAIN, KEY)
    assert (us.base_url, us._api_key) == ("https://api.mailgun.net", KEY)
    eu.close()
    us.close()
    # And a missing key, domain or an unknown region is a configuration error
    for url in (
        "mailgun:///mg.example.com",
        f"mailgun://api:{KEY}@",
        f"mailgun://k@/{DOMAIN}?region=ap",
    ):
        with pytest.raises(ConfigurationError, match="CRM_NOTIFY_ESP_URL"):
            MailgunAdapter.from_esp_url(parse_esp_url(url))
