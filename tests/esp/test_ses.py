"""The Amazon SES (API v2) adapter: the SigV4 signer against AWS's published examples, and the
adapter against a real HTTP server on loopback that verifies each request's signature and
checks it against the documented SendEmail contract, answering as SES does."""

from __future__ import annotations

import base64
import email
import email.policy
import re
from collections.abc import Iterator
from datetime import UTC, datetime
from email.message import EmailMessage
from typing import Any

import pytest

from crm_notify import clock
from crm_notify.errors import ConfigurationError, EspPermanentError, EspTransientError
from crm_notify.esp import _sigv4
from crm_notify.esp.http import parse_esp_url
from crm_notify.esp.ses import SesAdapter
from crm_notify.render import RenderedMessage, build_message
from tests.esp._api_server import Answer, ApiServer, RecordedRequest

ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
REGION = "eu-west-1"
UNSUBSCRIBE = "<https://shop.example.com/u/tok>"
PERMANENT, TRANSIENT = EspPermanentError, EspTransientError
#: What follows the error type in SES's ``x-amzn-ErrorType`` header.
ERROR_NAMESPACE = "http://internal.amazon.com/coral/com.amazon.sesv2/"

# -- the signer against AWS's examples ------------------------------------------------------

#: The example credentials of AWS's documentation and Signature Version 4 test suite.
AWS_EXAMPLE = _sigv4.Credentials("AKIDEXAMPLE", "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")


def test_sigv4_matches_the_documented_iam_list_users_example() -> None:
    # Given the example request of AWS's "Create a canonical request" and "Calculate the
    # signature" pages (GET https://iam.amazonaws.com/?Action=ListUsers&Version=2010-05-08,
    # 2015-08-30T12:36:00Z, us-east-1):
    # https://docs.aws.amazon.com/general/latest/gr/sigv4-create-canonical-request.html
    headers = {
        "Host": "iam.amazonaws.com",
        "Content-Type": "application/x-www-form-urlencoded; charset=utf-8",
        "X-Amz-Date": "20150830T123600Z",
    }
    query = "Action=ListUsers&Version=2010-05-08"
    canonical, signed = _sigv4.canonical_request("GET", "/", query, headers, _sigv4.sha256_hex(b""))

    # Then each documented intermediate value and the signature come out
    assert signed == "content-type;host;x-amz-date"
    assert _sigv4.sha256_hex(canonical.encode()) == (
        "f536975d06c0309214f805bb90ccff089219ecd68b2577efef23edd43b7e1a59"
    )
    key = _sigv4.signing_key(AWS_EXAMPLE.secret_access_key, "20150830", "us-east-1", "iam")
    assert key.hex() == "c4afb1cc5771d871763a393e44b703571b55cc28424d1a5e86da6ed3c154a4b9"
    assert _sigv4.authorization(
        credentials=AWS_EXAMPLE,
        region="us-east-1",
        service="iam",
        method="GET",
        raw_path="/",
        raw_query=query,
        headers=headers,
        payload=b"",
        request_time="20150830T123600Z",
    ) == (
        "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/iam/aws4_request, "
        "SignedHeaders=content-type;host;x-amz-date, "
        "Signature=5d672d79c15b13162d9279b0855cfba6789a8edb4c82c400e06b5924a6f2b5d7"
    )


#: Cases of AWS's Signature Version 4 test suite (2011-09-09T23:36:00Z, us-east-1, service
#: "host"), as shipped in aws/aws-cli tests/unit/auth/aws4_testsuite/<name>.req / .sreq:
#: (name, method, raw query, extra headers, body, expected signature).
SUITE = [
    ("post-x-www-form-urlencoded", "POST", "",
     {"Content-Type": "application/x-www-form-urlencoded"}, b"foo=bar",
     "5a15b22cf462f047318703b92e6f4f38884e4a7ab7b1d6426ca46a8bd1c26cbc"),
    ("post-header-key-sort", "POST", "", {"ZOO": "zoobar"}, b"",
     "b7a95a52518abbca0964a999a880429ab734f35ebbf1235bd79a5de87756dc4a"),
    ("get-vanilla-query-order-value", "GET", "foo=b&foo=a", {}, b"",
     "feb926e49e382bec75c9d7dcb2a1b6dc8aa50ca43c25d2bc51143768c0875acc"),
    ("get-vanilla-ut8-query", "GET", "%E1%88%B4=bar", {}, b"",
     "6fb359e9a05394cc7074e0feb42573a2601abc0c869a953e8c5c12e4e01f1a8c"),
]  # fmt: skip


@pytest.mark.parametrize(("name", "method", "query", "extra", "body", "expected"), SUITE)
def test_sigv4_matches_the_aws_test_suite(
    name: str, method: str, query: str, extra: dict[str, str], body: bytes, expected: str
) -> None:
    headers = {"Date": "Mon, 09 Sep 2011 23:36:00 GMT", "Host": "host.foo.com", **extra}
    value = _sigv4.authorization(
        credentials=AWS_EXAMPLE,
        region="us-east-1",
        service="host",
        method=method,
        raw_path="/",
        raw_query=query,
        headers=headers,
        payload=body,
        request_time="20110909T233600Z",
    )
    assert value.endswith(f"Signature={expected}"), name


def test_sigv4_canonical_request_and_string_to_sign_match_the_suite_files() -> None:
    # post-header-key-sort.creq and .sts of the test suite, line for line
    canonical, _ = _sigv4.canonical_request(
        "POST",
        "/",
        "",
        {"Host": "host.foo.com", "Date": "Mon, 09 Sep 2011 23:36:00 GMT", "ZOO": "zoobar"},
        _sigv4.sha256_hex(b""),
    )
    assert canonical == (
        "POST\n/\n\ndate:Mon, 09 Sep 2011 23:36:00 GMT\nhost:host.foo.com\nzoo:zoobar\n\n"
        "date;host;zoo\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
    )
    scope = _sigv4.credential_scope("20110909", "us-east-1", "host")
    assert _sigv4.string_to_sign("20110909T233600Z", scope, canonical) == (
        "AWS4-HMAC-SHA256\n20110909T233600Z\n20110909/us-east-1/host/aws4_request\n"
        "34e1bddeb99e76ee01d63b5e28656111e210529efeec6cdfd46a48e4c734545d"
    )


# -- the adapter against a stand-in for SES ---------------------------------------------------

_AUTHORIZATION = re.compile(
    r"AWS4-HMAC-SHA256 Credential=(?P<key>[^/]+)/(?P<date>\d{8})/(?P<region>[^/]+)/"
    r"(?P<service>[^/]+)/aws4_request, SignedHeaders=(?P<signed>[a-z0-9;-]+), "
    r"Signature=(?P<signature>[0-9a-f]{64})"
)


def _aws_error(status: int, error_type: str, message: str) -> Answer:
    return Answer(
        status,
        json={"message": message},
        headers={"x-amzn-ErrorType": f"{error_type}:{ERROR_NAMESPACE}"},
    )


def _ses_contract(request: RecordedRequest) -> Answer | None:
    """What SES answers before sending: it verifies the signature, then the request."""
    match = _AUTHORIZATION.fullmatch(request.headers.get("authorization", ""))
    if match is None:
        return _aws_error(403, "MissingAuthenticationTokenException", "Missing token")
    if match["key"] != ACCESS_KEY:
        return _aws_error(403, "UnrecognizedClientException", "The security token is invalid.")
    signed = match["signed"].split(";")
    if not {"host", "x-amz-date"} <= set(signed) or match["service"] != "ses":
        return _aws_error(403, "IncompleteSignatureException", "Signature is incomplete")
    request_time = request.headers["x-amz-date"]
    expected = _sigv4.authorization(
        credentials=_sigv4.Credentials(ACCESS_KEY, SECRET),
        region=REGION,
        service="ses",
        method=request.method,
        raw_path=request.path,
        raw_query="",
        headers={name: request.headers[name] for name in signed},
        payload=request.body,
        request_time=request_time,
    )
    if request.headers["authorization"] != expected or match["region"] != REGION:
        return _aws_error(403, "SignatureDoesNotMatch", "The signature does not match")
    if (request.method, request.path) != ("POST", "/v2/email/outbound-emails"):
        return _aws_error(404, "NotFoundException", "Not found")
    body = request.json
    try:
        raw = base64.b64decode(body["Content"]["Raw"]["Data"], validate=True)
    except (KeyError, TypeError, ValueError):
        return _aws_error(400, "BadRequestException", "Content is required")
    if not raw.startswith(b"From:") and b"\r\nFrom:" not in raw:
        return _aws_error(400, "BadRequestException", "Missing From header")
    return None


@pytest.fixture
def api() -> Iterator[ApiServer]:
    with ApiServer(
        check=_ses_contract,
        default=Answer(200, json={"MessageId": "0102018c-ses-message-id-000000"}),
    ) as server:
        yield server


def _message(rule: str = "order_shipped") -> EmailMessage:
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
        to_name="Zoë Doe",
        message_id="<n-42@example.com>",
        extra_headers={
            "List-Unsubscribe": UNSUBSCRIBE,
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
            "X-CRM-Notify-Id": "42",
            "X-CRM-Notify-Rule": rule,
        },
    )


def _adapter(api: ApiServer, **options: Any) -> SesAdapter:
    settings: dict[str, Any] = {
        "access_key_id": ACCESS_KEY,
        "secret_access_key": SECRET,
        "region": REGION,
        "base_url": api.url,
    }
    settings.update(options)
    return SesAdapter(**settings)


def test_sends_a_signed_raw_message_and_returns_the_message_id(api: ApiServer) -> None:
    # Given an adapter from an ESP URL (the secret's "/" URL-encoded) aimed at the stand-in
    url = f"ses://{ACCESS_KEY}:{SECRET.replace('/', '%2F')}@{api.netloc}?region={REGION}&insecure=1"
    adapter = SesAdapter.from_esp_url(parse_esp_url(url))
    message = _message()

    # When a rendered message is sent
    result = adapter.send(message)

    # Then SES verified the signature and its MessageId comes back
    assert (result.esp, result.provider_message_id) == ("ses", "0102018c-ses-message-id-000000")
    seen = api.last
    assert seen.headers["content-type"] == "application/json"
    sent_at = datetime.strptime(seen.headers["x-amz-date"], "%Y%m%dT%H%M%SZ").replace(tzinfo=UTC)
    assert abs((sent_at - clock.now()).total_seconds()) < 300
    # And the body is SendEmail with the raw MIME message, keeping every header of ours
    body = seen.json
    assert body["FromEmailAddress"] == "shop@example.com"
    assert body["Destination"] == {"ToAddresses": ["zoe@example.org"]}
    raw = base64.b64decode(body["Content"]["Raw"]["Data"])
    assert raw == message.as_bytes()
    parsed = email.message_from_bytes(raw, policy=email.policy.default)
    assert parsed["Message-ID"] == "<n-42@example.com>"
    assert parsed["List-Unsubscribe"] == UNSUBSCRIBE
    assert parsed["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"
    assert parsed["Subject"] == "Zamówienie wysłane 🚀"
    assert body["EmailTags"] == [
        {"Name": "crm_notify_id", "Value": "42"},
        {"Name": "crm_notify_rule", "Value": "order_shipped"},
    ]
    assert "ConfigurationSetName" not in body
    adapter.close()


def test_the_signature_uses_the_clock_seam(api: ApiServer, monkeypatch: pytest.MonkeyPatch) -> None:
    # Given a fixed "now"
    monkeypatch.setattr(clock, "now", lambda: datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC))
    # When a message is sent / Then the request time and scope are that moment's
    _adapter(api).send(_message())
    assert api.last.headers["x-amz-date"] == "20260102T030405Z"
    assert f"/20260102/{REGION}/ses/aws4_request" in api.last.headers["authorization"]


def test_stored_text_tags_and_configuration_set(api: ApiServer) -> None:
    # Given a rule name with characters SES does not allow in tags, and a configuration set
    adapter = _adapter(api, configuration_set="crm-events")
    # When the stored message is sent
    adapter.send_text(_message(rule="order shipped (PL)").as_string())
    # Then the tag value is cleaned and the configuration set named
    body = api.last.json
    assert body["EmailTags"][1] == {"Name": "crm_notify_rule", "Value": "order_shipped__PL_"}
    assert body["ConfigurationSetName"] == "crm-events"


def test_a_wrong_secret_fails_the_signature_for_good(api: ApiServer) -> None:
    adapter = _adapter(api, secret_access_key="not-the-secret")
    with pytest.raises(EspPermanentError, match="signature") as excinfo:
        adapter.send(_message())
    assert excinfo.value.status_code == 403


THROTTLED = {"x-amzn-ErrorType": "TooManyRequestsException", "Retry-After": "9"}


@pytest.mark.parametrize(
    ("answer", "error", "retry_after"),
    [
        (_aws_error(400, "MessageRejected", "Email address is not verified."), PERMANENT, None),
        (_aws_error(400, "MailFromDomainNotVerifiedException", "not verified"), PERMANENT, None),
        (_aws_error(400, "AccountSuspendedException", "suspended"), PERMANENT, None),
        (_aws_error(400, "BadRequestException", "Invalid input"), PERMANENT, None),
        (_aws_error(400, "ThrottlingException", "Maximum sending rate exceeded."), TRANSIENT, None),
        (Answer(429, json={"message": "Too many"}, headers=THROTTLED), TRANSIENT, 9.0),
        (_aws_error(500, "InternalFailure", "Internal failure"), TRANSIENT, None),
        (_aws_error(503, "ServiceUnavailable", "Service unavailable"), TRANSIENT, None),
    ],
)
def test_error_answers_are_classified(
    api: ApiServer, answer: Answer, error: type[Exception], retry_after: float | None
) -> None:
    # Given SES answers a correctly signed request with an error
    api.respond(answer.status, json=answer.json, headers=answer.headers)

    # When a message is sent / Then it is retried only when retrying can help
    with pytest.raises(error) as excinfo:
        _adapter(api).send(_message())
    assert getattr(excinfo.value, "status_code", None) == answer.status
    if isinstance(excinfo.value, EspTransientError):
        assert excinfo.value.retry_after_s == retry_after


def test_a_timeout_is_transient(api: ApiServer) -> None:
    api.respond(200, json={"MessageId": "late"}, delay_s=3)
    with pytest.raises(EspTransientError, match="timeout"):
        _adapter(api, timeout_s=0.3).send(_message())


def test_esp_url_needs_both_credentials_and_a_region() -> None:
    adapter = SesAdapter.from_esp_url(parse_esp_url("ses://AK:S%2Bk@?region=eu-west-1"))
    assert adapter.base_url == "https://email.eu-west-1.amazonaws.com"
    assert adapter._credentials == _sigv4.Credentials("AK", "S+k")
    adapter.close()
    for url in ("ses://AK@?region=eu-west-1", "ses://AK:SK@", "ses://AK:SK@?region=eu/../x"):
        with pytest.raises(ConfigurationError, match="CRM_NOTIFY_ESP_URL"):
            SesAdapter.from_esp_url(parse_esp_url(url))
