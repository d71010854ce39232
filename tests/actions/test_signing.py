"""Standard Webhooks signatures, checked against the official ``standardwebhooks`` package."""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from datetime import UTC, datetime

import pytest
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from crm_notify.actions.signing import (
    SigningSecret,
    new_message_id,
    new_secret,
    signature_headers,
)


def test_signature_verifies_with_the_reference_library() -> None:
    # Given a secret as receivers get it and a body as we send it
    secret = new_secret()
    body = '{"text":"Zamówienie A1 wysłane","total":30.5}'.encode()
    headers = signature_headers(
        message_id="msg_abc",
        timestamp=int(time.time()),
        body=body,
        secret=SigningSecret.parse(secret),
    )
    # Then the official library accepts it, and returns the payload
    assert Webhook(secret).verify(body, headers) == {"text": "Zamówienie A1 wysłane", "total": 30.5}
    # And a changed body, id or another secret is refused
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body + b" ", headers)
    with pytest.raises(WebhookVerificationError):
        Webhook(secret).verify(body, {**headers, "webhook-id": "msg_other"})
    with pytest.raises(WebhookVerificationError):
        Webhook(new_secret()).verify(body, headers)


def test_signature_is_the_documented_hmac() -> None:
    # Given a known key and the spec's example id and timestamp
    key = bytes(range(32))
    text = "whsec_" + base64.b64encode(key).decode()
    secret = SigningSecret.parse(text)
    # Then the signature is v1, then base64 HMAC-SHA256 of "{id}.{timestamp}.{body}"
    expected = hmac.new(key, b"msg_2KWP.1674087231.{}", hashlib.sha256).digest()
    signature = secret.sign("msg_2KWP", 1674087231, b"{}")
    assert signature == "v1," + base64.b64encode(expected).decode()
    # And the reference library computes the same
    moment = datetime.fromtimestamp(1674087231, UTC)
    assert Webhook(text).sign("msg_2KWP", moment, "{}") == signature


def test_unsigned_requests_still_carry_id_and_timestamp() -> None:
    assert signature_headers(message_id="msg_1", timestamp=5, body=b"", secret=None) == {
        "webhook-id": "msg_1",
        "webhook-timestamp": "5",
    }


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ("whsec_not base64!", "whsec_ followed by base64"),
        ("whsec_" + base64.b64encode(b"x" * 23).decode(), "this one has 23"),
        ("whsec_" + base64.b64encode(b"x" * 65).decode(), "this one has 65"),
    ],
)
def test_bad_secrets_are_refused_without_showing_them(text: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as caught:
        SigningSecret.parse(text)
    assert text.removeprefix("whsec_") not in str(caught.value)


def test_secrets_and_ids() -> None:
    secret = SigningSecret.parse(new_secret())
    assert len(secret.key) == 32 and "hidden" in repr(secret)
    unprefixed = SigningSecret.parse(base64.b64encode(b"k" * 24).decode())
    assert unprefixed.key == b"k" * 24
    message_id = new_message_id()
    assert message_id.startswith("msg_") and "." not in message_id
    assert new_message_id() != message_id
