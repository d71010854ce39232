"""An Amazon SNS stand-in for the SES webhook tests: a signing key, its self-signed
certificate served from a real loopback HTTP server, and envelopes signed as SNS signs them
(https://docs.aws.amazon.com/sns/latest/dg/sns-verify-signature-of-message.html).
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from tests.esp._api_server import Answer, ApiServer, RecordedRequest

#: The topic the tests configure as accepted.
TOPIC = "arn:aws:sns:eu-west-1:123456789012:ses-events"
#: Path of the certificate on the stand-in (SNS's look like this).
CERT_PATH = "/SimpleNotificationService-0123456789abcdef.pem"


@dataclass(frozen=True)
class SigningKey:
    """An RSA key and its self-signed certificate (PEM)."""

    key: rsa.RSAPrivateKey
    pem: bytes


@lru_cache(maxsize=2)
def signing_key(name: str = "sns") -> SigningKey:
    """A 2048-bit key with a certificate valid 2000-2100 (made once per name)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{name}.amazonaws.test")])
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(datetime(2000, 1, 1, tzinfo=UTC))
        .not_valid_after(datetime(2100, 1, 1, tzinfo=UTC))
        .sign(key, hashes.SHA256())
    )
    return SigningKey(key, certificate.public_bytes(serialization.Encoding.PEM))


class SnsStandIn:
    """The loopback server serving the signing certificate and answering subscription
    confirmations (``GET /?Action=ConfirmSubscription...``), recording every request."""

    def __init__(self, api: ApiServer) -> None:
        self.api = api
        self.confirm_status = 200

    @property
    def cert_url(self) -> str:
        return f"{self.api.url}{CERT_PATH}"

    @property
    def host(self) -> str:
        """``127.0.0.1:PORT`` (the value of ``sns_certificate_hosts``)."""
        return self.api.netloc

    def subscribe_url(self, token: str) -> str:
        return f"{self.api.url}/?Action=ConfirmSubscription&TopicArn={TOPIC}&Token={token}"

    def certificate_fetches(self) -> list[RecordedRequest]:
        return [r for r in self.api.requests if r.path == CERT_PATH]

    def confirmations(self) -> list[RecordedRequest]:
        return [r for r in self.api.requests if r.query.get("Action") == ["ConfirmSubscription"]]

    def _answer(self, request: RecordedRequest) -> Answer:
        if request.method == "GET" and request.path == CERT_PATH:
            return Answer(200, body=signing_key().pem, headers={"Content-Type": "text/plain"})
        if request.method == "GET" and request.query.get("Action") == ["ConfirmSubscription"]:
            return Answer(self.confirm_status, body="<ConfirmSubscriptionResponse/>")
        return Answer(404, body="not found")


@contextmanager
def sns_stand_in() -> Iterator[SnsStandIn]:
    """Start the stand-in; stopped on exit."""
    holder: list[SnsStandIn] = []
    with ApiServer(check=lambda request: holder[0]._answer(request)) as api:
        holder.append(SnsStandIn(api))
        yield holder[0]


def string_to_sign(envelope: dict[str, Any]) -> bytes:
    """Written from the AWS documentation, independently of the code under test."""
    if envelope["Type"] == "Notification":
        names = ["Message", "MessageId", "Subject", "Timestamp", "TopicArn", "Type"]
    else:
        names = ["Message", "MessageId", "SubscribeURL", "Timestamp", "Token", "TopicArn", "Type"]
    return "".join(f"{n}\n{envelope[n]}\n" for n in names if n in envelope).encode()


def sign(envelope: dict[str, Any], *, key: SigningKey | None = None) -> dict[str, Any]:
    """``envelope`` with its ``Signature`` (SHA-1 for version 1, SHA-256 for version 2)."""
    algorithm = hashes.SHA1() if envelope["SignatureVersion"] == "1" else hashes.SHA256()
    signature = (key or signing_key()).key.sign(
        string_to_sign(envelope), padding.PKCS1v15(), algorithm
    )
    return {**envelope, "Signature": base64.b64encode(signature).decode()}


def timestamp(moment: datetime | None = None) -> str:
    """SNS's ``Timestamp`` format: ``2024-05-01T12:00:00.123Z``."""
    moment = moment or datetime.now(UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def notification(
    ses_event: dict[str, Any] | str,
    *,
    cert_url: str,
    topic: str = TOPIC,
    version: str = "2",
    when: datetime | None = None,
    message_id: str | None = None,
    key: SigningKey | None = None,
) -> dict[str, Any]:
    """A signed SNS ``Notification`` whose ``Message`` is ``ses_event`` as a JSON string."""
    message = ses_event if isinstance(ses_event, str) else json.dumps(ses_event)
    return sign(
        {
            "Type": "Notification",
            "MessageId": message_id or str(uuid.uuid4()),
            "TopicArn": topic,
            "Subject": "Amazon SES Email Event Notification",
            "Message": message,
            "Timestamp": timestamp(when),
            "SignatureVersion": version,
            "SigningCertURL": cert_url,
            "UnsubscribeURL": "https://sns.eu-west-1.amazonaws.com/?Action=Unsubscribe",
        },
        key=key,
    )


def confirmation(
    *, cert_url: str, subscribe_url: str, topic: str = TOPIC, token: str = "tok-1"
) -> dict[str, Any]:
    """A signed SNS ``SubscriptionConfirmation``."""
    return sign(
        {
            "Type": "SubscriptionConfirmation",
            "MessageId": str(uuid.uuid4()),
            "Token": token,
            "TopicArn": topic,
            "Message": f"You have chosen to subscribe to the topic {topic}.",
            "SubscribeURL": subscribe_url,
            "Timestamp": timestamp(),
            "SignatureVersion": "1",
            "SigningCertURL": cert_url,
        }
    )


def body_and_headers(envelope: dict[str, Any]) -> tuple[bytes, dict[str, str]]:
    """The HTTP call SNS makes: JSON as text/plain, with its x-amz-sns-* headers."""
    headers = {
        "Content-Type": "text/plain; charset=UTF-8",
        "x-amz-sns-message-type": envelope["Type"],
        "x-amz-sns-message-id": envelope["MessageId"],
        "x-amz-sns-topic-arn": envelope["TopicArn"],
    }
    return json.dumps(envelope).encode(), headers
